"""Fusion in the training loop (the Intra-Fusion paper's section 6): split the data, train in parallel, fuse and prune.

Three pipelines, each a function built from :func:`~intrafusion_viz.train`, :func:`~intrafusion_viz.prune`
and :func:`~intrafusion_viz.fuse`:

* :func:`baseline_pipeline`: train one model on all the data, prune (Intra-Fusion), fine-tune.
* :func:`fuse_then_prune` (FaP): train two models, one per half of the data, fuse them (OTFusion,
  activation cost on a couple of hundred samples), fine-tune, prune, fine-tune.
* :func:`prune_then_fuse` (PaF): train two models on the halves, prune each and fine-tune each,
  fuse, fine-tune.

Every stage appends a row to a tidy table: ``pipeline, stage, step, stage_epochs, epochs,
samples_seen, train_time_s, train_time_sum_s, train_cpu_s, train_cpu_sum_s, wall_time_s, stage_start_s,
stage_time_s, stage_model_times_s, accuracy, accuracy_models, params, sparsity, seed, model, parallel``.
``stage_start_s`` / ``stage_time_s``: where the stage lies on the pipeline's wall-clock axis (parallel halves
counted once, fuse and prune included); ``stage_model_times_s``: each model's own seconds in that stage
("1.20 / 1.31" for the two halves).  ``train_time_s`` counts the two halves' training once (they run
in parallel); ``train_time_sum_s`` adds them up.  With ``parallel="max"`` the halves are trained one
after the other here and the parallel time is the longer of the two; with ``parallel="processes"``
they really run at once in two processes and the parallel time is the measured wall clock.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["split_data", "train_models", "baseline_pipeline", "fuse_then_prune", "prune_then_fuse",
           "compare_pipelines", "PipelineRun", "TrainTimes", "PIPELINES", "PARALLEL_MODES"]

PIPELINES = ("baseline", "paf", "fap", "fap-vanilla")
PARALLEL_MODES = ("max", "processes")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class PipelineRun:
    """What a pipeline produced.

    Attributes
    ----------
    records : list of dict
        One row per stage (see the module docstring); :meth:`frame` makes a DataFrame.
    model : nn.Module
        The final (pruned, fine-tuned) model.
    fusion : FuseResult or None
        The fusion step's result (its ``.groups`` hold the plans), for the fusing pipelines.
    halves : list of nn.Module
        The two models trained on the halves (before any pruning), for the fusing pipelines.
    """

    records: List[dict]
    model: nn.Module
    fusion: Any = None
    halves: List[nn.Module] = field(default_factory=list)

    def frame(self):
        """The records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.records)


def split_data(data: Tuple[torch.Tensor, torch.Tensor], parts: int = 2,
               seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Split a tensor pair ``(x: (N, ...), y: (N,))`` into ``parts`` disjoint random pieces of (nearly) equal size.

    Examples
    --------
    >>> x, y = torch.randn(10, 3), torch.arange(10)
    >>> [len(p[1]) for p in split_data((x, y), 2)]
    [5, 5]
    """
    x, y = data
    if not (torch.is_tensor(x) and torch.is_tensor(y)) or len(x) != len(y):
        raise ValueError("data must be a pair of tensors (x, y) with the same first dimension")
    if not isinstance(parts, int) or parts < 1 or parts > len(y):
        raise ValueError(f"parts must be an int in 1..{len(y)}, got {parts!r}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order.chunk(parts)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class TrainTimes(NamedTuple):
    """Wall-clock and CPU seconds of training several models "in parallel"."""

    parallel_s: float  # the halves counted once
    sum_s: float  # added up
    times_s: List[float]  # each model's own
    cpu_parallel_s: float  # CPU time (this process or the worker) of the longest run
    cpu_sum_s: float


def _train_timed(model: nn.Module, data, epochs: int, seed: int, train_kwargs: dict) -> Tuple[float, float]:
    """Train in place; (wall-clock s, CPU s of this process)."""
    from ..evaluation._train import train

    start, cpu = time.perf_counter(), time.process_time()
    if epochs > 0:
        train(model, data, epochs=epochs, seed=seed, progress=False, **train_kwargs)
    model.eval()
    return time.perf_counter() - start, time.process_time() - cpu


def _warm_up(model: nn.Module, data, train_kwargs: dict) -> None:
    """One throw-away epoch on 128 samples of a copy: the first training in a process pays one-off costs
    (kernel selection, allocator, lazy imports) several times an epoch of a small model; not the pipeline's."""
    x, y = data
    _train_timed(copy.deepcopy(model), (x[:128], y[:128]), 1, 0, train_kwargs)


def _warm_up_all(build, train_data, sparsity, seed, train_kwargs, prune_kwargs, fuse_samples) -> None:
    """Train, prune and fuse throw-away models once (tracing, kernel set-up, lazy imports are paid here)."""
    from ._otfusion import fuse

    models = [_build(build, seed + 1000 + i) for i in range(2)]
    for m in models:
        _warm_up(m, train_data, train_kwargs)
        m.eval()
    example_inputs, batch_x = _setup(train_data, None, fuse_samples, seed)
    _prune(models[0], example_inputs, sparsity, batch_x, {"method": "intra-fusion", **(prune_kwargs or {})})
    fuse(models, _on(models[0], example_inputs), batch=_on(models[0], batch_x), reset_bn=_has_bn(models[0]))


def _train_worker(model: nn.Module, data, epochs: int, seed: int, train_kwargs: dict, threads: int,
                  warmup: bool = True):
    torch.set_num_threads(threads)
    if warmup:
        _warm_up(model, data, train_kwargs)
    wall, cpu = _train_timed(model, data, epochs, seed, train_kwargs)
    return model.state_dict(), wall, cpu


def train_models(models: Sequence[nn.Module], datasets: Sequence, epochs: int, *, seeds: Sequence[int],
                 train_kwargs: Optional[dict] = None, parallel: str = "max", warmup: bool = True) -> TrainTimes:
    """Train ``models[i]`` on ``datasets[i]`` in place, "in parallel".

    Parameters
    ----------
    parallel : {"max", "processes"}
        ``"max"``: train one after the other in this process; the parallel time is the longest
        single run.  ``"processes"``: train at once in one process per model (spawned; the models
        and data must pickle, so model classes must live in an importable module), each with
        ``torch.get_num_threads() // len(models)`` threads (at least 1); the parallel time is the
        measured wall clock of the whole block.
    warmup : bool
        Before timing, train a throw-away copy of the first model one epoch on 128 samples (in each
        worker process for ``"processes"``): the first training in a process is several times slower
        (one-off set-up), which would otherwise be charged to the first model.

    Returns
    -------
    TrainTimes
        ``parallel_s`` (the parallel time), ``sum_s`` (added up), ``times_s`` (each model's own wall
        clock), ``cpu_parallel_s`` and ``cpu_sum_s`` (CPU seconds of the process that trained, less
        sensitive to other load on a shared machine than wall clock).
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {', '.join(map(repr, PARALLEL_MODES))}; got {parallel!r}")
    train_kwargs = dict(train_kwargs or {})
    if parallel == "max" or len(models) == 1:
        if warmup and len(models) and epochs > 0:
            _warm_up(models[0], datasets[0], train_kwargs)
        timed = [_train_timed(m, d, epochs, s, train_kwargs) for m, d, s in zip(models, datasets, seeds)]
        times, cpus = [t for t, _ in timed], [c for _, c in timed]
        return TrainTimes(max(times), sum(times), times, max(cpus), sum(cpus))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // len(models))
    start = time.perf_counter()
    with ProcessPoolExecutor(len(models), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_worker, m, d, epochs, s, train_kwargs, threads, warmup and epochs > 0)
                   for m, d, s in zip(models, datasets, seeds)]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    for m, (state, _, _) in zip(models, results):
        m.load_state_dict(state)
        m.eval()
    times, cpus = [t for _, t, _ in results], [c for _, _, c in results]
    return TrainTimes(wall, sum(times), times, max(cpus), sum(cpus))


class _Recorder:
    """Cumulative bookkeeping of one pipeline's stages."""

    def __init__(self, pipeline: str, test_data, base: dict, n_train: int):
        self.pipeline, self.test_data, self.base = pipeline, test_data, base
        self.records: List[dict] = []
        self.epochs = 0
        self.samples = 0
        self.train_time = 0.0
        self.train_time_sum = 0.0
        self.cpu = 0.0
        self.cpu_sum = 0.0
        self.wall = 0.0
        self.n_train = n_train

    def add(self, stage: str, models: Sequence[nn.Module], *, epochs: int = 0, samples: int = 0,
            times: Optional[TrainTimes] = None, wall: float = 0.0, model_times: Optional[Sequence[float]] = None) -> dict:
        from ..evaluation._train import accuracy

        times = times or TrainTimes(0.0, 0.0, [], 0.0, 0.0)
        start = self.wall
        each = list(model_times) if model_times is not None else (list(times.times_s) if times.times_s else
                                                                   [wall + times.parallel_s])
        train_time, train_time_sum = times.parallel_s, times.sum_s
        wall = wall + times.parallel_s
        self.cpu += times.cpu_parallel_s
        self.cpu_sum += times.cpu_sum_s
        self.epochs += epochs
        self.samples += samples
        self.train_time += train_time
        self.train_time_sum += train_time_sum
        self.wall += wall
        accs = [accuracy(m, self.test_data) for m in models]
        row = dict(self.base, pipeline=self.pipeline, stage=stage, step=len(self.records), stage_epochs=epochs,
                   epochs=self.epochs, samples_seen=self.samples, train_time_s=self.train_time,
                   train_time_sum_s=self.train_time_sum, train_cpu_s=self.cpu, train_cpu_sum_s=self.cpu_sum,
                   wall_time_s=self.wall, stage_start_s=start, stage_time_s=self.wall - start,
                   stage_model_times_s=" / ".join(f"{t:.3f}" for t in each),
                   accuracy=sum(accs) / len(accs), accuracy_models=" / ".join(f"{a:.2f}" for a in accs),
                   params=_params(models[0]))
        self.records.append(row)
        return row


def _finetune_kwargs(train_kwargs: dict, finetune_kwargs: Optional[dict]) -> dict:
    """Fine-tuning settings: as given, else the training ones at a tenth of the learning rate."""
    if finetune_kwargs is not None:
        return dict(finetune_kwargs)
    out = dict(train_kwargs)
    if not isinstance(out.get("optimizer"), torch.optim.Optimizer):
        base = out.get("lr") or (1e-3 if str(out.get("optimizer", "sgd")).lower() == "adam" else 0.05)
        out["lr"] = 0.1 * base
    return out


def _one(timed: Tuple[float, float]) -> TrainTimes:
    wall, cpu = timed
    return TrainTimes(wall, wall, [wall], cpu, cpu)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in model.modules())


def _on(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``model``'s device (models train on a GPU while the data stays on the CPU)."""
    for p in model.parameters():
        return x.to(p.device)
    return x


def _prune(model: nn.Module, example_inputs, sparsity: float, batch_x, prune_kwargs: dict) -> nn.Module:
    from ..repair._data_aware import repair
    from ..pruning._prune import prune

    example_inputs, batch_x = _on(model, example_inputs), _on(model, batch_x)

    res = prune(model, example_inputs, sparsity, **prune_kwargs)
    if _has_bn(res.model) and batch_x is not None:
        # prune folds BatchNorm into the convs; give the BatchNorms back their scale and fresh
        # statistics so that fine-tuning in train mode starts from the pruned function.
        return repair(res, model, batch_x, mode="bn")
    return res.model


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="stage", disable=not progress, leave=False)


def _setup(train_data, example_inputs, fuse_samples, seed):
    x = train_data[0]
    if example_inputs is None:
        example_inputs = x[:1]
    gen = torch.Generator().manual_seed(seed)
    batch_x = x[torch.randperm(len(x), generator=gen)[:fuse_samples]]
    return example_inputs, batch_x


def baseline_pipeline(build: Callable[[], nn.Module], train_data, test_data, *, sparsity: float, epochs: int = 10,
                      finetune_epochs: int = 2, example_inputs=None, seed: int = 0,
                      train_kwargs: Optional[dict] = None, prune_kwargs: Optional[dict] = None,
                      finetune_kwargs: Optional[dict] = None, model_name: str = "", progress: bool = True,
                      batch_samples: int = 200) -> PipelineRun:
    """Train one model on all of ``train_data``, prune it with Intra-Fusion, fine-tune.

    Parameters
    ----------
    build : callable
        ``build() -> nn.Module``, a fresh untrained model (called under ``torch.manual_seed(seed)``).
    train_data, test_data : (Tensor, Tensor)
        ``(x, y)`` pairs.
    sparsity : float
        Of every group (``prune``'s ``sparsity``).
    epochs, finetune_epochs : int
        Training and fine-tuning budgets.
    train_kwargs, prune_kwargs : dict, optional
        Passed to :func:`~intrafusion_viz.train` (``lr``, ``batch_size``, ...) and
        :func:`~intrafusion_viz.prune` (``importance``, ``config``, ...; method ``"intra-fusion"``).
    finetune_kwargs : dict, optional
        :func:`~intrafusion_viz.train` arguments for fine-tuning; default ``train_kwargs`` at a
        tenth of the learning rate.
    batch_samples : int
        Samples of ``train_data`` used to re-estimate BatchNorm statistics after pruning.

    Returns
    -------
    PipelineRun
        Stages ``train``, ``prune``, ``fine-tune``.
    """
    train_kwargs, prune_kwargs = dict(train_kwargs or {}), {"method": "intra-fusion", **(prune_kwargs or {})}
    tune_kwargs = _finetune_kwargs(train_kwargs, finetune_kwargs)
    example_inputs, batch_x = _setup(train_data, example_inputs, batch_samples, seed)
    rec = _Recorder("baseline", test_data, dict(model=model_name, sparsity=sparsity, seed=seed, parallel=""),
                    len(train_data[1]))
    n = len(train_data[1])
    with _bar(3, "baseline", progress) as bar:
        model = _build(build, seed)
        t = _one(_train_timed(model, train_data, epochs, seed, train_kwargs))
        rec.add("train", [model], epochs=epochs, samples=epochs * n, times=t)
        bar.update()
        pruned, t = _timed(_prune, model, example_inputs, sparsity, batch_x, prune_kwargs)
        rec.add("prune", [pruned], wall=t)
        bar.update()
        t = _one(_train_timed(pruned, train_data, finetune_epochs, seed + 100, tune_kwargs))
        rec.add("fine-tune", [pruned], epochs=finetune_epochs, samples=finetune_epochs * n, times=t)
        bar.update()
    return PipelineRun(rec.records, pruned)


def _halves(build, train_data, epochs, seed, train_kwargs, parallel, rec: _Recorder, trained):
    """Train (or take already trained) two models on the two halves; records the stage."""
    halves = split_data(train_data, 2, seed)
    if trained is None:
        models = [_build(build, seed + i) for i in range(2)]
        times = train_models(models, halves, epochs, seeds=[seed + i for i in range(2)],
                             train_kwargs=train_kwargs, parallel=parallel)
    else:
        models, times = [copy.deepcopy(m) for m in trained[0]], trained[1]
    samples = epochs * max(len(h[1]) for h in halves)
    rec.add("train halves", models, epochs=epochs, samples=samples, times=times)
    return halves, models


def fuse_then_prune(build: Callable[[], nn.Module], train_data, test_data, *, sparsity: float, epochs: int = 10,
                    fused_finetune_epochs: int = 1, finetune_epochs: int = 1, example_inputs=None,
                    fuse_method: str = "ot", fuse_samples: int = 200, fuse_kwargs: Optional[dict] = None,
                    seed: int = 0, train_kwargs: Optional[dict] = None, prune_kwargs: Optional[dict] = None,
                    finetune_kwargs: Optional[dict] = None, parallel: str = "max", model_name: str = "",
                    progress: bool = True,
                    trained_halves=None) -> PipelineRun:
    """FaP: train two models on the halves (in parallel), fuse, fine-tune, prune (Intra-Fusion), fine-tune.

    Parameters are as in :func:`baseline_pipeline`, plus:

    epochs : int
        Epochs of each half's model over its half.
    fused_finetune_epochs, finetune_epochs : int
        Fine-tuning of the fused model, then of the pruned one (on all the data).
    fuse_method : {"ot", "vanilla"}
        :func:`~intrafusion_viz.fuse`'s method (``"vanilla"``: average without aligning, the baseline).
    fuse_samples : int
        Training inputs for the activation cost and for re-estimating BatchNorm statistics.
    fuse_kwargs : dict, optional
        More arguments for :func:`~intrafusion_viz.fuse` (``config``, ``cost``, ...).
    parallel : {"max", "processes"}
        How the halves' parallel training time is obtained (see :func:`train_models`).
    trained_halves : (models, TrainTimes), optional
        Reuse two models already trained on ``split_data(train_data, 2, seed)`` (copied, not changed).

    Returns
    -------
    PipelineRun
        Stages ``train halves``, ``fuse``, ``fine-tune fused``, ``prune``, ``fine-tune``.
    """
    from ._otfusion import fuse

    name = "fap" if fuse_method == "ot" else f"fap-{fuse_method}"
    train_kwargs, prune_kwargs = dict(train_kwargs or {}), {"method": "intra-fusion", **(prune_kwargs or {})}
    tune_kwargs = _finetune_kwargs(train_kwargs, finetune_kwargs)
    example_inputs, batch_x = _setup(train_data, example_inputs, fuse_samples, seed)
    rec = _Recorder(name, test_data, dict(model=model_name, sparsity=sparsity, seed=seed, parallel=parallel),
                    len(train_data[1]))
    n = len(train_data[1])
    with _bar(5, name, progress) as bar:
        _, models = _halves(build, train_data, epochs, seed, train_kwargs, parallel, rec, trained_halves)
        bar.update()
        fusion, t = _timed(fuse, models, _on(models[0], example_inputs), method=fuse_method,
                           batch=_on(models[0], batch_x), reset_bn=_has_bn(models[0]), **(fuse_kwargs or {}))
        fused = fusion.model
        rec.add("fuse", [fused], wall=t)
        bar.update()
        t = _one(_train_timed(fused, train_data, fused_finetune_epochs, seed + 100, tune_kwargs))
        rec.add("fine-tune fused", [fused], epochs=fused_finetune_epochs, samples=fused_finetune_epochs * n,
                times=t)
        bar.update()
        pruned, t = _timed(_prune, fused, example_inputs, sparsity, batch_x, prune_kwargs)
        rec.add("prune", [pruned], wall=t)
        bar.update()
        t = _one(_train_timed(pruned, train_data, finetune_epochs, seed + 200, tune_kwargs))
        rec.add("fine-tune", [pruned], epochs=finetune_epochs, samples=finetune_epochs * n, times=t)
        bar.update()
    return PipelineRun(rec.records, pruned, fusion, models)


def prune_then_fuse(build: Callable[[], nn.Module], train_data, test_data, *, sparsity: float, epochs: int = 10,
                    pruned_finetune_epochs: int = 1, finetune_epochs: int = 1, example_inputs=None,
                    fuse_samples: int = 200, fuse_kwargs: Optional[dict] = None, seed: int = 0,
                    train_kwargs: Optional[dict] = None, prune_kwargs: Optional[dict] = None,
                    finetune_kwargs: Optional[dict] = None, parallel: str = "max", model_name: str = "",
                    progress: bool = True,
                    trained_halves=None) -> PipelineRun:
    """PaF: train two models on the halves, prune each (Intra-Fusion) and fine-tune each on its half, fuse, fine-tune.

    Parameters are as in :func:`fuse_then_prune`; ``pruned_finetune_epochs`` is the fine-tuning of
    each pruned half-model on its own half (in parallel, counted like the first stage).

    Returns
    -------
    PipelineRun
        Stages ``train halves``, ``prune each``, ``fine-tune each``, ``fuse``, ``fine-tune``.
    """
    from ._otfusion import fuse

    train_kwargs, prune_kwargs = dict(train_kwargs or {}), {"method": "intra-fusion", **(prune_kwargs or {})}
    tune_kwargs = _finetune_kwargs(train_kwargs, finetune_kwargs)
    example_inputs, batch_x = _setup(train_data, example_inputs, fuse_samples, seed)
    rec = _Recorder("paf", test_data, dict(model=model_name, sparsity=sparsity, seed=seed, parallel=parallel),
                    len(train_data[1]))
    n = len(train_data[1])
    with _bar(5, "paf", progress) as bar:
        halves, models = _halves(build, train_data, epochs, seed, train_kwargs, parallel, rec, trained_halves)
        bar.update()
        times = []
        pruned = []
        for m, h in zip(models, halves):
            one, t = _timed(_prune, m, example_inputs, sparsity, h[0][:fuse_samples], prune_kwargs)
            pruned.append(one)
            times.append(t)
        rec.add("prune each", pruned, wall=max(times), model_times=times)
        bar.update()
        times = train_models(pruned, halves, pruned_finetune_epochs, seeds=[seed + 100, seed + 101],
                             train_kwargs=tune_kwargs, parallel=parallel)
        rec.add("fine-tune each", pruned, epochs=pruned_finetune_epochs,
                samples=pruned_finetune_epochs * max(len(h[1]) for h in halves), times=times)
        bar.update()
        fusion, t = _timed(fuse, pruned, _on(pruned[0], example_inputs), batch=_on(pruned[0], batch_x),
                           reset_bn=_has_bn(pruned[0]), **(fuse_kwargs or {}))
        fused = fusion.model
        rec.add("fuse", [fused], wall=t)
        bar.update()
        t = _one(_train_timed(fused, train_data, finetune_epochs, seed + 200, tune_kwargs))
        rec.add("fine-tune", [fused], epochs=finetune_epochs, samples=finetune_epochs * n, times=t)
        bar.update()
    return PipelineRun(rec.records, fused, fusion, models)


def compare_pipelines(build: Callable[[], nn.Module], train_data, test_data, *, sparsity: float,
                      pipelines: Sequence[str] = PIPELINES, epochs: int = 10, half_epochs: Optional[int] = None,
                      finetune_epochs: int = 2, seed: int = 0, parallel: str = "max", model_name: str = "",
                      train_kwargs: Optional[dict] = None, prune_kwargs: Optional[dict] = None,
                      finetune_kwargs: Optional[dict] = None, fuse_samples: int = 200, warmup: bool = True,
                      trained_halves=None, progress: bool = True) -> Tuple[Any, Dict[str, PipelineRun]]:
    """Run baseline, PaF, FaP and FaP with unaligned averaging on the same data, the halves trained once.

    Budgets: the baseline trains ``epochs`` on all data and fine-tunes ``finetune_epochs``; each
    half-model trains ``half_epochs`` (default ``epochs``) on its half; FaP and PaF split
    ``finetune_epochs`` over their two fine-tuning stages (``finetune_epochs // 2`` then the rest),
    so no fusing pipeline fine-tunes more than the baseline (PaF's first fine-tuning runs on the halves).

    trained_halves : (models, TrainTimes), optional
        Two models already trained ``half_epochs`` epochs on ``split_data(train_data, 2, seed)`` (as
        :func:`train_models` returns the times); used instead of training them again.
    warmup : bool
        Train a throw-away model for one epoch on 128 samples first (and before the halves, see
        :func:`train_models`): the first training in a process is several times slower (one-off
        set-up) and would be charged to the first pipeline.

    Returns
    -------
    records : pandas.DataFrame
        All pipelines' stage rows (see the module docstring).
    runs : dict
        Pipeline name -> :class:`PipelineRun`.
    """
    import pandas as pd

    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ValueError(f"unknown pipelines {unknown}; choose from {', '.join(PIPELINES)}")
    half_epochs = epochs if half_epochs is None else half_epochs
    first, second = finetune_epochs // 2, finetune_epochs - finetune_epochs // 2
    common = dict(sparsity=sparsity, seed=seed, train_kwargs=train_kwargs, prune_kwargs=prune_kwargs,
                  finetune_kwargs=finetune_kwargs,
                  model_name=model_name, progress=False)
    runs: Dict[str, PipelineRun] = {}
    trained = trained_halves
    if warmup:  # the first training, prune and fuse in a process pay one-off costs: not the pipeline's
        _warm_up_all(build, train_data, sparsity, seed, dict(train_kwargs or {}), prune_kwargs, fuse_samples)
    from tqdm.auto import tqdm

    for name in tqdm(list(pipelines), desc="pipelines", disable=not progress, leave=False):
        if name == "baseline":
            runs[name] = baseline_pipeline(build, train_data, test_data, epochs=epochs,
                                           finetune_epochs=finetune_epochs, **common)
            continue
        if trained is None:
            models = [_build(build, seed + i) for i in range(2)]
            times = train_models(models, split_data(train_data, 2, seed), half_epochs,
                                 seeds=[seed, seed + 1], train_kwargs=train_kwargs, parallel=parallel)
            trained = (models, times)
        kw = dict(common, epochs=half_epochs, parallel=parallel, fuse_samples=fuse_samples, trained_halves=trained)
        if name == "paf":
            runs[name] = prune_then_fuse(build, train_data, test_data, pruned_finetune_epochs=first,
                                         finetune_epochs=second, **kw)
        else:
            runs[name] = fuse_then_prune(build, train_data, test_data, fuse_method="vanilla" if name == "fap-vanilla"
                                         else "ot", fused_finetune_epochs=first, finetune_epochs=second, **kw)
    records = pd.DataFrame([r for run in runs.values() for r in run.records])
    return records, runs
