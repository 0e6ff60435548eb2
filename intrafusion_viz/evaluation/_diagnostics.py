"""Per-layer drift of a merged network from the original: where does a whole-model merge go wrong?

For every group's producing layers (read after their BatchNorm when one follows), in forward order,
and for the logits, compare the pruned network's channels with what they stand for in the original:
a merged channel ``j`` stands for the plan-weighted average of its sources (``w = plan / column
sum``), a channel of an unpruned group for itself.

Example
-------
>>> import torch, intrafusion_viz as ifv  # doctest: +SKIP
>>> res = ifv.prune(model, x[:1], 0.3)  # doctest: +SKIP
>>> rows = ifv.layer_drift(model, res, x)  # doctest: +SKIP
>>> from intrafusion_viz.figures._diagnostics import drift_figure  # doctest: +SKIP
>>> drift_figure({"no repair": rows}, model_name="VGG11-BN", method="intra-fusion", sparsity=0.3)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn

__all__ = ["layer_drift"]


@torch.no_grad()
def layer_drift(original: nn.Module, result, x: torch.Tensor, *, model: Optional[nn.Module] = None,
                max_samples: int = 256) -> List[Dict]:
    """Drift of every producing layer's output (and the logits) of a pruned model from the original.

    Parameters
    ----------
    original : nn.Module
        The unpruned model (read only).
    result : PruneResult
        What :func:`intrafusion_viz.prune` returned (its plans say what each channel stands for).
    x : Tensor
        Inputs (labels not needed), on the models' device.
    model : nn.Module, optional
        The network to measure, e.g. a repaired copy of ``result.model``; default ``result.model``.
    max_samples : int
        Use at most this many inputs.

    Returns
    -------
    list of dict
        In forward order: ``layer`` (module read), ``group`` (index), ``pruned`` (bool), ``n``, ``k``,
        ``rel_error`` (``||P - T|| / ||T||`` over the kept channels, all samples and positions),
        ``std_ratio`` (median over channels of ``std(P_c) / std(T_c)``), ``mean_shift`` (median of
        ``|mean(P_c) - mean(T_c)| / std(T_c)``) and ``corr`` (mean Pearson correlation of ``P_c``
        with ``T_c``); the last row is ``layer="logits"`` with ``agreement`` (top-1 agreement in %).
    """
    from ..repair._activations import _observed_module, _producers, _pruned_positions, _recording, _run
    from ..merge._surgery import _slots
    from ..groups._trace import find_groups

    pruned_model = model if model is not None else result.model
    x = x[:max_samples]
    records = {g.index: g for g in result.groups}
    cases = []
    for g in find_groups(original, x[:1]):
        rec = records.get(g.index)
        for m in _producers(g.members):
            observed = _observed_module(g.members, m.name)
            slots = _slots(m, g.size)[:, 0]
            if rec is not None and rec.k < rec.n:
                weights = rec.plan.double() / rec.plan.double().sum(0, keepdim=True).clamp_min(1e-300)
                positions = _pruned_positions(slots, rec.kept)
            else:
                weights = torch.eye(g.size, dtype=torch.float64)
                positions = slots
            cases.append((observed, g.index, rec is not None and rec.k < rec.n, slots, weights, positions))
    names = sorted({c[0] for c in cases})
    with _recording(original, names) as out_a:
        _run(original, x)
    with _recording(pruned_model, names) as out_b:
        _run(pruned_model, x)
    modes = [(m, m.training) for m in (original, pruned_model)]
    try:
        original.eval(), pruned_model.eval()
        logits_a, logits_b = original(x).double(), pruned_model(x).double()
    finally:
        for m, mode in modes:
            m.train(mode)
    order = {name: i for i, name in enumerate(out_b)}
    rows = []
    for observed, index, pruned, slots, weights, positions in sorted(cases, key=lambda c: order.get(c[0], 1e9)):
        a = out_a[observed].double().movedim(1, 0)
        a = a[slots].reshape(len(slots), -1)  # (n, B * positions)
        target = weights.T @ a  # (k, ...)
        got = out_b[observed].double().movedim(1, 0)[positions].reshape(len(positions), -1)
        rows.append(_metrics(got, target) | dict(layer=observed, group=index, pruned=pruned,
                                                 n=len(slots), k=len(positions)))
    row = _metrics(logits_b.T, logits_a.T)
    row.update(layer="logits", group=-1, pruned=False, n=logits_a.shape[1], k=logits_a.shape[1],
               agreement=100.0 * float((logits_a.argmax(1) == logits_b.argmax(1)).double().mean()))
    rows.append(row)
    return rows


def _metrics(got: torch.Tensor, target: torch.Tensor) -> Dict:
    """got, target: (channels, samples)."""
    err = float((got - target).norm() / target.norm().clamp_min(1e-12))
    sd_t, sd_g = target.std(1), got.std(1)
    live = sd_t > 1e-8
    ratio = float((sd_g[live] / sd_t[live]).median()) if live.any() else float("nan")
    shift = float(((got.mean(1) - target.mean(1)).abs()[live] / sd_t[live]).median()) if live.any() else float("nan")
    gc, tc = got - got.mean(1, keepdim=True), target - target.mean(1, keepdim=True)
    corr = (gc * tc).sum(1) / (gc.norm(dim=1) * tc.norm(dim=1)).clamp_min(1e-12)
    return dict(rel_error=err, std_ratio=ratio, mean_shift=shift, corr=float(corr[live].mean()) if live.any() else float("nan"))
