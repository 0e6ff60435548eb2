"""Run independent cells on any ``concurrent.futures.Executor`` or a Dask cluster, results in cell order.

This is not a scheduler: the executor (or Dask) places the work.  :func:`map_cells` only

- ships the inputs every cell shares (model weights, evaluation data) **once per worker**: Dask scatters
  them to every worker (``broadcast=True``); a process pool gets them from one pickle file that each
  worker process reads once and keeps in a cache keyed by the file's content hash; threads share them;
- submits one small task per cell and collects results as they finish, behind a ``tqdm.auto`` bar;
- keeps a failed cell as an outcome with its exception, so the other cells still finish.
"""
from __future__ import annotations

import collections
import hashlib
import os
import pickle
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["CellOutcome", "map_cells", "dask_client"]

# Per-process cache of shipped inputs: content hash -> object.  A worker keeps the last few sweeps'
# inputs, so a cell never re-reads the model and the trace cache (keyed by the model object) holds.
_SHARED: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_SHARED_KEEP = 2
_SHARED_LOCK = threading.Lock()


@dataclass
class CellOutcome:
    """What one cell gave: ``value`` or the ``error`` it raised (``None`` when it succeeded)."""

    cell: Any
    value: Any = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def dask_client(executor):
    """The ``dask.distributed.Client`` behind ``executor`` (a Client or its ``get_executor()``), else None."""
    module = type(executor).__module__ or ""
    if not module.startswith("distributed"):
        return None
    from distributed import Client
    from distributed.cfexecutor import ClientExecutor

    if isinstance(executor, Client):
        return executor
    if isinstance(executor, ClientExecutor):
        return executor._client
    return None


def _set_threads(parent_pid: int, threads: Optional[int]) -> None:
    # Only in a worker process: the caller's own torch settings are not ours to change.
    if threads is not None and os.getpid() != parent_pid:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class _Opaque:
    """Wrapper that Dask serialises with plain pickle as one object.  (Dask's own serialisers for
    containers and torch modules rebuild a module whose hook dicts are plain dicts, which
    Torch-Pruning's tracer cannot hook.)"""

    def __init__(self, obj):
        self.obj = obj


def _call_shared(task, shared, cell, parent_pid, threads):
    """Worker side (Dask or threads): ``shared`` is already the object."""
    _set_threads(parent_pid, threads)
    return task(shared.obj if isinstance(shared, _Opaque) else shared, cell)


def _load_shared(path: str, digest: str):
    with _SHARED_LOCK:
        if digest in _SHARED:
            _SHARED.move_to_end(digest)
            return _SHARED[digest]
    with open(path, "rb") as f:
        shared = pickle.load(f)
    with _SHARED_LOCK:
        _SHARED[digest] = shared
        while len(_SHARED) > _SHARED_KEEP:
            _SHARED.popitem(last=False)
    return shared


def _call_from_file(task, path, digest, cell, parent_pid, threads):
    """Worker side (process pools): read the shared inputs once per process, then run the cell."""
    _set_threads(parent_pid, threads)
    return task(_load_shared(path, digest), cell)


def map_cells(task: Callable[[Any, Any], Any], shared: Any, cells: Sequence[Any], executor=None, *,
              progress: bool = True, desc: str = "cells", on_done: Optional[Callable[[int, CellOutcome], None]] = None,
              worker_threads: Optional[int] = 1) -> List[CellOutcome]:
    """``[task(shared, cell) for cell in cells]`` on ``executor``, failures kept as outcomes.

    Parameters
    ----------
    task : callable
        ``task(shared, cell) -> value``; a module-level function (workers import it by name).
    shared : object
        Inputs common to every cell (model, data, ...): sent once per worker, never once per cell.
    cells : sequence
        Small picklable descriptions of the cells.
    executor : None, concurrent.futures.Executor or dask.distributed.Client
        ``None`` runs the cells here, one after the other.  A ``ThreadPoolExecutor`` shares ``shared``
        in memory.  Any other executor (``ProcessPoolExecutor``, loky, mpi4py's ``MPIPoolExecutor``)
        gets ``shared`` through a pickle file in ``tempfile.gettempdir()`` (set ``TMPDIR`` to a shared
        folder when workers run on other machines), read once per worker process.  A Dask ``Client``
        (or ``client.get_executor()``) scatters ``shared`` to every worker once.
    progress : bool
        ``tqdm.auto`` bar over finished cells (in the order they finish).
    desc : str
        Label of the bar.
    on_done : callable, optional
        ``on_done(index, outcome)`` in this process as each cell finishes (e.g. to append to a results
        file so an interrupted run resumes).
    worker_threads : int or None
        ``torch.set_num_threads`` in worker processes (default 1: as many workers as cores, and the
        same arithmetic as a one-thread run here).  ``None`` leaves workers alone.  The calling
        process's setting is never changed.

    Returns
    -------
    list of CellOutcome
        In the order of ``cells``, whatever order they finished in.
    """
    from tqdm.auto import tqdm

    cells = list(cells)
    outcomes: List[Optional[CellOutcome]] = [None] * len(cells)
    bar = tqdm(total=len(cells), desc=desc, disable=not progress, leave=False)

    def finish(index, value=None, error=None):
        outcome = CellOutcome(cells[index], value, error)
        outcomes[index] = outcome
        bar.update(1)
        if error is not None:
            bar.set_postfix(failed=sum(o is not None and not o.ok for o in outcomes))
        if on_done is not None:
            on_done(index, outcome)

    try:
        if executor is None:
            for index, cell in enumerate(cells):
                try:
                    value = task(shared, cell)
                except Exception as exc:  # noqa: BLE001 - a failed cell is reported, the others go on
                    finish(index, error=exc)
                else:
                    finish(index, value)
        elif dask_client(executor) is not None:
            _map_dask(dask_client(executor), task, shared, cells, finish, worker_threads)
        else:
            _map_executor(executor, task, shared, cells, finish, worker_threads)
    finally:
        bar.close()
    return outcomes  # type: ignore[return-value]


def _map_executor(executor, task, shared, cells, finish, threads):
    from concurrent.futures import ThreadPoolExecutor, as_completed

    pid = os.getpid()
    folder = None
    try:
        if isinstance(executor, ThreadPoolExecutor):
            futures = {executor.submit(_call_shared, task, shared, cell, pid, threads): i
                       for i, cell in enumerate(cells)}
        else:
            folder = tempfile.mkdtemp(prefix="intrafusion_viz_")
            path = os.path.join(folder, "shared.pkl")
            with open(path, "wb") as f:
                pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "blake2b").hexdigest() if hasattr(hashlib, "file_digest") \
                    else hashlib.blake2b(f.read()).hexdigest()
            futures = {executor.submit(_call_from_file, task, path, digest, cell, pid, threads): i
                       for i, cell in enumerate(cells)}
        try:
            for future in as_completed(futures):
                try:
                    value = future.result()
                except Exception as exc:  # noqa: BLE001 - includes a broken pool: reported per cell
                    finish(futures[future], error=exc)
                else:
                    finish(futures[future], value)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _map_dask(client, task, shared, cells, finish, threads):
    from distributed import as_completed

    pid = os.getpid()
    # One copy per worker; workers that join later (adaptive scaling) fetch it from a peer.
    [shared_future] = client.scatter([_Opaque(shared)], broadcast=True, hash=False)
    futures = {client.submit(_call_shared, task, shared_future, cell, pid, threads, pure=False): i
               for i, cell in enumerate(cells)}
    try:
        for future in as_completed(list(futures)):
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - a failed or lost cell is reported, the others go on
                finish(futures[future], error=exc)
            else:
                finish(futures[future], value)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        client.cancel([shared_future])
