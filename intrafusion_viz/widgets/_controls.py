"""The explore dashboard's parts that are not the dashboard: input checks, MAC counts, the evaluation batch,
control layout and the read-out table (``_explore.py`` holds the dashboard itself)."""
from __future__ import annotations

from typing import Optional

import torch

from ..groups._trace import resolve_group_keys
from ..plan._importance import IMPORTANCES

SPARSITY_RANGE = (0.0, 0.95)  # the slider's range: at 1.0 nothing would be left
LABEL_WIDTH = "120px"
CONTROL_WIDTH = "360px"


def check_importance(importance) -> str:
    """The importance name, or a clear error: dashboards list names (``ifv.IMPORTANCES``) only."""
    if not isinstance(importance, str) or importance.lower() not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(map(repr, IMPORTANCES))} in a dashboard; "
                         f"got {importance!r} (for a custom importance callable call ifv.prune directly)")
    return importance.lower()


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """A sparsity inside the slider's range, or a clear error (the slider would clamp it silently)."""
    lo, hi = SPARSITY_RANGE
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not lo <= float(sparsity) <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}] (the dashboard's slider range); "
                         f"got {sparsity!r}")
    return float(sparsity)


def pick_groups(all_groups, keys):
    """The groups named by ``keys`` (indices, root names or ``"G1"`` labels), in model order."""
    wanted = set(resolve_group_keys(all_groups, keys))
    chosen = [g for g in all_groups if g.index in wanted]
    if not chosen:
        raise ValueError("no prunable groups to explore; pass groups=None for all of them")
    return chosen


def num_classes_of(logits) -> int:
    return int(logits.shape[-1]) if logits.dim() > 1 else 1


def weight_positions(model, example_inputs) -> dict:
    """Per conv/linear layer, how many output positions each weight is applied at (one sample).

    Pruning channels does not change spatial sizes, so ``sum(weight.numel() * positions)`` is the
    multiply-accumulate count of the conv and linear layers of any model pruned from this one.
    """
    from torch import nn

    from ._prefix import _eval_mode

    positions, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            def hook(mod, inputs, output, name=name):
                channels = output.shape[-1] if isinstance(mod, nn.Linear) else output.shape[1]
                positions[name] = output[:1].numel() // max(channels, 1)
            handles.append(module.register_forward_hook(hook))
    x = example_inputs[:1] if torch.is_tensor(example_inputs) else example_inputs
    try:
        with _eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return positions


def conv_linear_macs(model, positions: dict) -> int:
    """Multiply-accumulates of the conv and linear layers for one sample (see :func:`weight_positions`)."""
    modules = dict(model.named_modules())
    return int(sum(modules[name].weight.numel() * count for name, count in positions.items() if name in modules))


def fixed_eval_batch(data, max_samples: Optional[int] = 512):
    """A fixed (x, y) tensor pair from ``data`` (tensor pair or iterable of batches), at most ``max_samples``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        x, y = data
    else:
        xs, ys, count = [], [], 0
        for xb, yb in data:
            xs.append(xb)
            ys.append(yb)
            count += len(yb)
            if max_samples is not None and count >= max_samples:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


def figure_row(W, widgets):
    """Figures side by side when there is room, stacked (wrapped) when the output area is narrower."""
    return W.Box([W.Box([w], layout=W.Layout(flex="0 1 auto", max_width="100%", overflow="auto"))
                  for w in widgets], layout=W.Layout(display="flex", flex_flow="row wrap", width="100%",
                                                     grid_gap="8px"))


def labelled(W, text: str, control, width: str = LABEL_WIDTH):
    """A control with its label on the same line, right-aligned like ipywidgets' own descriptions."""
    label = W.HTML(f"<div style='text-align:right;padding-right:8px'>{text}</div>",
                   layout=W.Layout(width=width, min_width=width))
    return W.HBox([label, control], layout=W.Layout(width=CONTROL_WIDTH, align_items="center"))


def readout_html(r: dict, methods) -> str:
    """Accuracies with their differences to the original (coloured), chance level and parameter counts.

    An accuracy of ``None`` is pending ("…"), a method in ``r["excluded"]`` is off; with
    ``eval_samples < eval_total`` every accuracy is on the first ``eval_samples`` images, and the
    read-out says so (and that the whole batch follows while ``refining``).
    """
    def delta(value, ref):
        d = value - ref
        color = "#1a7f37" if d > 0.005 else ("#b42318" if d < -0.005 else "#555")
        return f"<span style='color:{color}'>{d:+.2f}</span>"

    excluded = r.get("excluded", ())

    def missing(m):
        return ("<span style='color:#888' title='tick \"include Model Folding\" to compute it'>off</span>"
                if m in excluded else "<span style='color:#888' title='computing'>&hellip;</span>")

    cell = "padding:2px 14px;text-align:right"
    head = "".join(f"<th style='{cell}'>{m}</th>" for m in ("original", *methods))
    accs = "".join([f"<td style='{cell}'><b>{r['original']:.2f}%</b></td>"] + [
        f"<td style='{cell}'><b>{r[m]:.2f}%</b> ({delta(r[m], r['original'])})</td>" if r[m] is not None
        else f"<td style='{cell}'>{missing(m)}</td>" for m in methods])
    params = "".join([f"<td style='{cell}'>{r['params_before']:,}</td>"] + [
        f"<td style='{cell}'>{r[f'params_{m}']:,} ({r[f'params_{m}'] / r['params_before']:.0%})</td>"
        if r[f"params_{m}"] is not None else f"<td style='{cell}'>{missing(m)}</td>" for m in methods])
    macs = "".join([f"<td style='{cell}'>{r['macs_before'] / 1e6:,.2f} M</td>"] + [
        f"<td style='{cell}'>{r[f'macs_{m}'] / 1e6:,.2f} M ({r[f'macs_{m}'] / max(r['macs_before'], 1):.0%})</td>"
        if r[f"macs_{m}"] is not None else f"<td style='{cell}'>{missing(m)}</td>" for m in methods])
    gap = ""
    if "default" in methods and "intra-fusion" in methods and None not in (r["intra-fusion"], r["default"]):
        gap = (f"intra-fusion &minus; default: {delta(r['intra-fusion'], r['default'])} points &middot; ")
    at_chance = [m for m in methods if r[m] is not None and r[m] <= r["chance"] + 1.0]
    warn = (f" &middot; <span style='color:#b42318'>at chance level: {', '.join(at_chance)}</span>"
            if at_chance else "")
    total = r.get("eval_total", r["eval_samples"])
    if r["eval_samples"] < total:
        on = (f"<b style='color:#9a6700'>accuracy on {r['eval_samples']} of {total} images"
              f"{' (refining&hellip;)' if r.get('refining') else ''}</b>")
    else:
        on = f"accuracy on {total} images" + (" (finishing&hellip;)" if r.get("refining") else "")
    return (f"<table style='border-collapse:collapse'><tr><th></th>{head}</tr>"
            f"<tr><td>accuracy</td>{accs}</tr><tr><td>parameters</td>{params}</tr>"
            f"<tr><td title='multiply-accumulates of conv and linear layers, one sample'>MACs</td>{macs}</tr></table>"
            f"<div style='color:#444'>{gap}sparsity {r['sparsity']:.2f}: keeps {r['k']} of {r['n']} neurons &middot; chance level "
            f"{r['chance']:.1f}% &middot; {on}{warn}</div>")




def group_map_records(groups, records) -> dict:
    """What :func:`intrafusion_viz.figures.group_map` needs to show the groups pruned in a dashboard:
    ``{"pruned": [...], "skipped": []}`` from ``{group index: GroupResult}``."""
    pruned = [dict(index=g.index, n=g.n, k=g.k, method=g.method, has_cost=g.cost is not None)
              for g in records.values()]
    return dict(pruned=pruned, skipped=[], method=next(iter(records.values())).method if records else "")


def check_arguments(method, importance, sparsity, config, embedding, progressive, first_budget_s, include_fold):
    """The explore dashboard's arguments checked: ``(importance, sparsity, config)`` or our clear error."""
    from ..plan._config import OTConfig
    from ..pruning._prune import METHODS

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    importance = check_importance(importance)
    sparsity = check_sparsity(sparsity)
    if embedding not in ("pca", "mds"):
        raise ValueError(f"embedding must be 'pca' or 'mds', got {embedding!r}")
    if progressive not in ("auto", True, False):
        raise ValueError(f"progressive must be 'auto', True or False, got {progressive!r}")
    if isinstance(first_budget_s, bool) or not isinstance(first_budget_s, (int, float)) or first_budget_s <= 0:
        raise ValueError(f"first_budget_s must be a positive number of seconds, got {first_budget_s!r}")
    if include_fold is not None and not isinstance(include_fold, bool):
        raise TypeError(f"include_fold must be True, False or None (auto), got {include_fold!r}")
    config = config or OTConfig()
    if not isinstance(config, OTConfig):
        raise TypeError(f"config must be an ifv.OTConfig, got {type(config).__name__}")
    return importance, sparsity, config
