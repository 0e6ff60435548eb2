"""Accuracy sweeps over groups x sparsities x methods, as tidy tables for the figures.

Rows follow the project's tidy format: ``group`` (-1 for the whole model), ``group_name``,
``paper_group``, ``sparsity``, ``method``, ``importance``, ``accuracy`` (percent).
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Iterable, Optional, Sequence

from ._groups import find_groups
from ._prune import prune
from ._transport import OTConfig

__all__ = ["layer_sweep", "sparsity_sweep", "SWEEP_METHODS"]

SWEEP_METHODS = ("default", "intra-fusion", "intra-fusion (paper)")
_MODEL_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _engine_method(method: str, config: OTConfig):
    """(prune method, config) behind a sweep method name."""
    if method == "intra-fusion (paper)":
        return "intra-fusion", dataclasses.replace(config, fusion="paper")
    if method in ("default", "intra-fusion", "fold"):
        return method, config
    raise ValueError(f"method must be one of {SWEEP_METHODS + ('fold',)}; got {method!r}")


def _fingerprint(model) -> tuple:
    # In-place updates (optimizer steps, load_state_dict) bump a tensor's version, so a cached
    # accuracy is never reused for changed weights.
    return tuple((id(t), t._version) for t in list(model.parameters()) + list(model.buffers()))


def _cache_for(model, data, cache):
    if cache is False:
        return {}, ()
    if cache is None:
        cache = _MODEL_CACHES.setdefault(model, {})
    return cache, (_fingerprint(model), id(data))


def _evaluate(model, data) -> float:
    from ._train import accuracy

    return accuracy(model, data)


def _run(model, data, example_inputs, jobs, importance, config, cache, progress, desc, batch, on_step=None):
    import pandas as pd
    from tqdm.auto import tqdm

    config = config if config is not None else OTConfig()
    store, context = _cache_for(model, data, cache)
    imp_name = importance if isinstance(importance, str) else getattr(importance, "__name__", "custom")
    rows = []
    key = ("original", context)
    if key not in store:
        store[key] = _evaluate(model, data)
    rows.append(dict(group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                     importance=imp_name, accuracy=store[key]))
    jobs = list(jobs)
    for step, (group, sparsity, method) in enumerate(tqdm(jobs, desc=desc, disable=not progress, leave=False)):
        if on_step is not None:
            on_step(step, len(jobs))
        engine_method, engine_config = _engine_method(method, config)
        key = (group.index if group is not None else -1, float(sparsity), method, imp_name, engine_config, context)
        if key not in store:
            if sparsity == 0:
                store[key] = rows[0]["accuracy"]
            else:
                spec = {group.index: sparsity} if group is not None else sparsity
                res = prune(model, example_inputs, spec, method=engine_method, importance=importance,
                            config=engine_config, batch=batch)
                store[key] = _evaluate(res.model, data)
        rows.append(dict(group=-1 if group is None else group.index,
                         group_name="all" if group is None else group.name,
                         paper_group="" if group is None else f"G{group.paper_index}",
                         sparsity=float(sparsity), method=method, importance=imp_name, accuracy=store[key]))
    if on_step is not None:
        on_step(len(jobs), len(jobs))
    return pd.DataFrame(rows)


def _pick_groups(model, example_inputs, groups):
    found = find_groups(model, example_inputs)
    if groups is None:
        return found
    by_name = {g.name: g for g in found}
    by_paper = {f"G{g.paper_index}": g for g in found}
    out = []
    for key in groups:
        if isinstance(key, str):
            if key not in by_name and key not in by_paper:
                raise KeyError(f"no group {key!r}; groups are {list(by_name)}")
            out.append(by_name.get(key) or by_paper[key])
        else:
            out.append(found[int(key)])
    return out


def layer_sweep(model, data, example_inputs, groups: Optional[Sequence] = None,
                sparsities: Iterable[float] = (0.3, 0.5, 0.7),
                methods: Iterable[str] = ("default", "intra-fusion"), importance="l1",
                config: Optional[OTConfig] = None, cache=None, progress: bool = True, batch=None,
                on_step=None):
    """Prune one group at a time and measure the accuracy: the per-layer accuracy drop.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : (x, y) tensors or iterable of (x, y)
        Evaluation set.
    example_inputs : Tensor
        A batch shaped like the inputs (for tracing groups).
    groups : list of int or str, optional
        Group indices, names or paper labels (``"G1"``); default all.
    sparsities : iterable of float
    methods : iterable of {"default", "intra-fusion", "intra-fusion (paper)"}
        ``"intra-fusion (paper)"`` is Intra-Fusion with the paper's fusion normalisation.
    importance : str or callable
    config : OTConfig, optional
    cache : dict, None or False
        Results by (group, sparsity, method, importance, config, weights, data).  ``None``: a cache
        kept per model (weakly; in-place weight changes invalidate it); a dict: yours; ``False``: none.
    progress : bool
        tqdm progress bar.
    batch : (x, y), optional
        For ``importance="taylor"``.
    on_step : callable, optional
        ``on_step(done, total)`` before each job and once at the end (dashboards drive a progress bar).

    Returns
    -------
    pandas.DataFrame
        Tidy records: one ``"original"`` row plus one per group x sparsity x method.
    """
    chosen = _pick_groups(model, example_inputs, groups)
    jobs = [(g, float(s), m) for g in chosen for s in sparsities for m in methods]
    return _run(model, data, example_inputs, jobs, importance, config, cache, progress, "layer sweep", batch,
                on_step)


def sparsity_sweep(model, data, example_inputs, sparsities: Iterable[float] = (0.1, 0.3, 0.5, 0.7),
                   methods: Iterable[str] = ("default", "intra-fusion"), importance="l1",
                   config: Optional[OTConfig] = None, cache=None, progress: bool = True, batch=None):
    """Prune every group at once at each sparsity: whole-model rows (``group == -1``) for
    :func:`intrafusion_viz.figures.accuracy_vs_sparsity`.  Parameters as :func:`layer_sweep`."""
    jobs = [(None, float(s), m) for s in sparsities for m in methods]
    return _run(model, data, example_inputs, jobs, importance, config, cache, progress, "sparsity sweep", batch)
