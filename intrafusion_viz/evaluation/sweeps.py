"""Accuracy sweeps over groups x sparsities x methods, as tidy tables for the figures.

Rows follow the project's tidy format: ``group`` (-1 for the whole model), ``group_name``,
``paper_group``, ``sparsity``, ``method``, ``importance``, ``accuracy`` (percent).

Every cell (one prune plus one evaluation) is an independent task: ``executor=`` runs the cells on
any ``concurrent.futures.Executor`` or a ``dask.distributed.Client`` (a LocalCluster, dask-jobqueue
on SLURM, dask-cuda's one worker per GPU), with the same rows in the same order as the in-process run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
import weakref
from typing import Any, Callable, Iterable, List, Optional, Sequence

from ._distributed import CellOutcome, map_cells
from ..groups._trace import find_groups, resolve_group_keys
from ..pruning._prune import METHODS, prune
from ..plan._config import OTConfig

__all__ = ["layer_sweep", "sparsity_sweep", "evaluate_cells", "SweepCell", "SweepError", "sweep_methods",
           "SWEEP_METHODS"]

PAPER_FUSION = "intra-fusion (paper)"  # Intra-Fusion with the paper's fusion normalisation
_MODEL_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def sweep_methods() -> tuple:
    """The method names a sweep takes: the engine's :data:`intrafusion_viz.METHODS` plus ``"intra-fusion (paper)"``."""
    return (*METHODS, PAPER_FUSION)


SWEEP_METHODS = sweep_methods()


@dataclasses.dataclass(frozen=True)
class SweepCell:
    """One cell of a sweep: prune ``group`` (``None``: every group) to ``sparsity`` and evaluate.

    ``method`` is a sweep method (see :func:`sweep_methods`) or ``"original"`` (evaluate the
    unpruned model).  ``importance`` is a name or any picklable importance callable.
    """

    group: Optional[int]
    sparsity: float
    method: str
    importance: Any = "l1"
    config: OTConfig = OTConfig()
    seed: int = 0


class SweepError(RuntimeError):
    """Some cells of a sweep failed; the others finished.

    Attributes
    ----------
    table : pandas.DataFrame
        The whole table: failed cells have ``accuracy`` NaN and their reason in the ``error`` column.
    failures : list of (dict, BaseException)
        The failed rows and their exceptions (the first is also this error's ``__cause__``).
    """

    def __init__(self, message, table=None, failures=()):
        super().__init__(message)
        self.table = table
        self.failures = list(failures)


def _engine_method(method: str, config: OTConfig):
    """(prune method, config) behind a sweep method name."""
    if method == PAPER_FUSION:
        return "intra-fusion", dataclasses.replace(config, fusion="paper")
    if method in METHODS:
        return method, config
    raise ValueError(f"method must be one of {', '.join(map(repr, sweep_methods()))}; got {method!r}")


# -- the task a worker runs -------------------------------------------------------------------------------

_DATA_FILES: dict = {}


def _load_data(data):
    """Evaluation data; a path (``torch.save((x, y), path)``) is read once per worker process."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    import torch

    stat = os.stat(data)
    key = (os.fspath(data), stat.st_mtime_ns, stat.st_size)
    if key not in _DATA_FILES:
        _DATA_FILES.clear()
        _DATA_FILES[key] = torch.load(os.fspath(data), weights_only=True)
    return _DATA_FILES[key]


class _SweepInputs:
    """What every cell of one sweep shares; sent once per worker.  With ``device``, a worker moves a
    copy of the model there once per sweep (the caller's model never moves)."""

    def __init__(self, model, data, example_inputs, batch, device):
        self.model, self.data, self.example_inputs, self.batch, self.device = \
            model, data, example_inputs, batch, device
        self._placed = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_placed"} | {"_placed": None}

    def placed(self):
        """(model, example_inputs, batch) on ``device``, made once per process."""
        if self._placed is None:
            import copy

            import torch

            move = lambda t: t.to(self.device) if torch.is_tensor(t) else t  # noqa: E731
            if self.device is None:
                self._placed = (self.model, self.example_inputs, self.batch)
            else:
                batch = None if self.batch is None else tuple(move(t) for t in self.batch)
                self._placed = (copy.deepcopy(self.model).to(self.device), move(self.example_inputs), batch)
        return self._placed


def _evaluate_cell(shared: _SweepInputs, cell: SweepCell) -> float:
    """Accuracy (percent) of ``shared``'s model pruned as ``cell`` says.  Runs on a worker."""
    from ._train import accuracy

    model, example_inputs, batch = shared.placed()
    data = _load_data(shared.data)
    if cell.method == "original":
        return accuracy(model, data, device=shared.device)
    method, config = _engine_method(cell.method, cell.config)
    spec = cell.sparsity if cell.group is None else {cell.group: cell.sparsity}
    res = prune(model, example_inputs, spec, method=method, importance=cell.importance, config=config,
                batch=batch, seed=cell.seed)
    return accuracy(res.model, data, device=shared.device)


def evaluate_cells(model, data, example_inputs, cells: Sequence[SweepCell], *, batch=None, executor=None,
                   device=None, progress: bool = True, desc: str = "cells",
                   on_done: Optional[Callable[[int, CellOutcome], None]] = None,
                   worker_threads: Optional[int] = 1) -> List[CellOutcome]:
    """Prune and evaluate each cell, here or on ``executor``; the engine under the sweeps.

    The model, data, example inputs and Taylor batch go to each worker once; each task carries one
    :class:`SweepCell`.  A failed cell is returned as an outcome with its exception.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : (x, y) tensors, iterable of (x, y), or a path
        Evaluation set; a path to ``torch.save((x, y), path)`` is loaded on each worker instead of
        being sent (use a DataLoader with ``num_workers=0`` on Dask: its workers cannot fork).
    example_inputs : Tensor
    cells : sequence of SweepCell
    batch : (x, y), optional
        For Taylor importance.
    device : str or torch.device, optional
        Where each worker prunes and evaluates (``"cuda"``: a worker's own GPU under dask-cuda); the
        model is sent as it is and moved there on the worker.  Default: where the model is.
    executor, progress, worker_threads
        As :func:`intrafusion_viz.evaluation._distributed.map_cells`.
    desc : str
        Label of the progress bar.
    on_done : callable, optional
        ``on_done(index, outcome)`` as each cell finishes (in finishing order).

    Returns
    -------
    list of CellOutcome
        In the order of ``cells``: ``.value`` is the accuracy in percent, or ``.error`` the exception.
    """
    for cell in cells:
        if cell.method != "original":
            _engine_method(cell.method, cell.config)
    shared = _SweepInputs(model, data, example_inputs, batch, device)
    return map_cells(_evaluate_cell, shared, cells, executor, progress=progress,
                     desc=desc, on_done=on_done, worker_threads=worker_threads)


# -- the cache: keyed on content, or on objects it keeps alive --------------------------------------------

class _Held:
    """Key part for an object without a content hash: equal only to itself, kept alive by the key
    (so its ``id`` cannot be reused by another object while the entry exists)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Held) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def _tensor_digest(t) -> tuple:
    raw = t.detach().cpu().contiguous().reshape(-1).view(__import__("torch").uint8).numpy()
    return ("tensor", str(t.dtype), tuple(t.shape), hashlib.blake2b(raw.data, digest_size=16).hexdigest())


def _content_key(obj):
    import torch

    if obj is None or isinstance(obj, (str, bytes, bool, int, float)):
        return obj
    if isinstance(obj, torch.Tensor):
        return _tensor_digest(obj)
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_content_key(o) for o in obj))
    return _Held(obj)


def _data_key(data):
    if isinstance(data, (str, os.PathLike)):
        stat = os.stat(data)
        return ("file", os.path.abspath(data), stat.st_mtime_ns, stat.st_size)
    return _content_key(data)


def _model_digest(model) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict(keep_vars=False).items():
        h.update(repr((name, _tensor_digest(tensor))).encode())
    h.update(repr([m.training for m in model.modules()]).encode())
    return h.hexdigest()


def _cache_for(model, data, example_inputs, batch, importance, cache):
    if cache is False:
        return {}, ()
    model_key = _model_digest(model)
    if cache is None:
        store = _MODEL_CACHES.setdefault(model, {})
    else:
        # A dict of the caller's may serve several models: the model itself is part of the key.
        store, model_key = cache, (_Held(model), model_key)
    return store, (model_key, _data_key(data), _content_key(example_inputs), _content_key(batch),
                   _content_key(importance))


# -- sweeps ---------------------------------------------------------------------------------------------

def _run(model, data, example_inputs, targets, sparsities, methods, importance, config, cache, progress, desc,
         batch, on_step, executor, seed, errors, worker_threads, device):
    import pandas as pd

    from ..plan._importance import resolve_importance

    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn'; got {errors!r}")
    config = config if config is not None else OTConfig()
    methods = list(methods)
    for method in methods:
        _engine_method(method, config)
    resolve_importance(importance, seed)  # an unknown name is refused before any work
    store, context = _cache_for(model, data, example_inputs, batch, importance, cache)
    context = context and context + (None if device is None else str(device),)
    imp_name = importance if isinstance(importance, str) else getattr(importance, "__name__", "custom")

    original = SweepCell(None, 0.0, "original", importance, config, seed)
    rows = [dict(group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                 importance=imp_name)]
    cells, keys = [original], [("original", context)]
    for group, sparsity in targets:
        for method in methods:
            rows.append(dict(group=-1 if group is None else group.index,
                             group_name="all" if group is None else group.name,
                             paper_group="" if group is None else f"G{group.paper_index}",
                             sparsity=float(sparsity), method=method, importance=imp_name))
            # Sparsity 0 prunes nothing: the original accuracy.
            cells.append(original if sparsity == 0 else
                         SweepCell(None if group is None else group.index, float(sparsity), method, importance,
                                   config, seed))
            keys.append(keys[0] if sparsity == 0 else
                        (rows[-1]["group"], float(sparsity), method, config, seed, context))

    todo = {}
    for key, cell in zip(keys, cells):
        if key not in store and key not in todo:
            todo[key] = cell
    pending = list(todo)
    resolved = set(keys) - set(pending)

    def step():  # on_step counts the group x sparsity x method rows whose cell has finished
        if on_step is not None:
            on_step(sum(key in resolved for key in keys[1:]), len(keys) - 1)

    step()

    def done(index, outcome):
        if outcome.ok:
            store[pending[index]] = outcome.value
        resolved.add(pending[index])
        step()

    outcomes = evaluate_cells(model, data, example_inputs, [todo[k] for k in pending], batch=batch,
                              executor=executor, device=device, progress=progress, desc=desc, on_done=done,
                              worker_threads=worker_threads)
    failed = {key: o.error for key, o in zip(pending, outcomes) if not o.ok}
    failures = []
    for row, key in zip(rows, keys):
        if key in failed:
            row.update(accuracy=math.nan, error=f"{type(failed[key]).__name__}: {failed[key]}")
            failures.append((row, failed[key]))
        else:
            row["accuracy"] = store[key]
    table = pd.DataFrame(rows)
    if failures:
        lines = [f"  group {r['group']} ({r['group_name']}{', ' + r['paper_group'] if r['paper_group'] else ''}), "
                 f"sparsity {r['sparsity']:g}, {r['method']}: {r['error']}" for r, _ in failures[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        message = (f"{desc}: {len(failed)} of {len(cells)} cells failed (the others finished; their rows have "
                   f"accuracy NaN and the reason in the 'error' column):\n" + "\n".join(lines) + more)
        if errors == "raise":
            raise SweepError(message + "\nThe whole table is this error's .table; errors='warn' returns it.",
                             table, failures) from failures[0][1]
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return table


def layer_sweep(model, data, example_inputs, groups: Optional[Sequence] = None,
                sparsities: Iterable[float] = (0.3, 0.5, 0.7),
                methods: Iterable[str] = ("default", "intra-fusion"), importance="l1",
                config: Optional[OTConfig] = None, cache=None, progress: bool = True, batch=None,
                on_step=None, executor=None, seed: int = 0, errors: str = "raise",
                worker_threads: Optional[int] = 1, device=None):
    """Prune one group at a time and measure the accuracy: the per-layer accuracy drop.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : (x, y) tensors, iterable of (x, y), or a path
        Evaluation set (a path to ``torch.save((x, y), path)`` is loaded on each worker).
    example_inputs : Tensor
        A batch shaped like the inputs (for tracing groups).
    groups : int, str or list of them, optional
        Group indices, names or paper labels (``"G1"``); default all.  Rows come in index order.
    sparsities : iterable of float
    methods : iterable of str
        Names from :func:`sweep_methods`: :data:`intrafusion_viz.METHODS` and ``"intra-fusion (paper)"``
        (Intra-Fusion with the paper's fusion normalisation).
    importance : str or callable
    config : OTConfig, optional
    cache : dict, None or False
        Accuracies by cell and by the *content* of the weights, data, example inputs and Taylor batch
        (objects without a content hash, such as importance callables or DataLoaders, by identity, kept
        alive by the cache).  ``None``: a cache kept per model (weakly); a dict: yours; ``False``: none.
    progress : bool
        tqdm progress bar over finished cells.
    batch : (x, y), optional
        For ``importance="taylor"``.
    on_step : callable, optional
        ``on_step(done, total)`` at the start and as each cell finishes (dashboards drive a progress bar).
    executor : None, concurrent.futures.Executor or dask.distributed.Client
        ``None`` runs here, cell after cell.  Otherwise every cell is a task on the executor; the model,
        data and batch are sent once per worker (see :func:`evaluate_cells`).  Rows and numbers are those
        of the in-process run (with one torch thread here, as in the workers).
    seed : int
        Passed to :func:`intrafusion_viz.prune` (random importance).
    errors : {"raise", "warn"}
        A failed cell never stops the others.  When all have finished, ``"raise"`` raises
        :class:`SweepError` listing the failed cells (its ``.table`` holds every row); ``"warn"``
        warns and returns the table.  Failed rows have ``accuracy`` NaN and an ``error`` column.
    worker_threads : int or None
        torch threads in worker processes (default 1).
    device : str or torch.device, optional
        Where the cells run (e.g. ``"cuda"`` on GPU workers); default where the model is.

    Returns
    -------
    pandas.DataFrame
        Tidy records: one ``"original"`` row plus one per group x sparsity x method.
    """
    found = find_groups(model, example_inputs)
    chosen = [found[i] for i in resolve_group_keys(found, groups)]
    targets = [(g, float(s)) for g in chosen for s in sparsities]
    return _run(model, data, example_inputs, targets, sparsities, methods, importance, config, cache, progress,
                "layer sweep", batch, on_step, executor, seed, errors, worker_threads, device)


def sparsity_sweep(model, data, example_inputs, sparsities: Iterable[float] = (0.1, 0.3, 0.5, 0.7),
                   methods: Iterable[str] = ("default", "intra-fusion"), importance="l1",
                   config: Optional[OTConfig] = None, cache=None, progress: bool = True, batch=None,
                   executor=None, seed: int = 0, errors: str = "raise", worker_threads: Optional[int] = 1,
                   device=None):
    """Prune every group at once at each sparsity: whole-model rows (``group == -1``) for
    :func:`intrafusion_viz.figures.accuracy_vs_sparsity`.  Parameters as :func:`layer_sweep`."""
    targets = [(None, float(s)) for s in sparsities]
    return _run(model, data, example_inputs, targets, sparsities, methods, importance, config, cache, progress,
                "sparsity sweep", batch, None, executor, seed, errors, worker_threads, device)
