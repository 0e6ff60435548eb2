"""Model size before and after pruning: parameters, MACs and measured CPU latency."""
from __future__ import annotations

import copy
import statistics
import time

import torch

from .._state import as_tuple as _as_tuple


@torch.no_grad()
def cpu_latency_ms(model, example_inputs, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (ms) of one forward pass on CPU, on a CPU copy of ``model`` in eval mode."""
    work = copy.deepcopy(model).cpu().eval()
    inputs = tuple(t.cpu() for t in _as_tuple(example_inputs))
    for _ in range(warmup):
        work(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work(*inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def model_size(model, example_inputs, repeats: int = 20) -> dict:
    """Parameters, MACs and median CPU latency of ``model`` on ``example_inputs``.

    Returns
    -------
    dict
        ``params`` (int), ``macs`` (int, Torch-Pruning's ``count_ops_and_params``), ``latency_ms`` (float).
    """
    import torch_pruning as tp

    work = copy.deepcopy(model).cpu().eval()
    inputs = tuple(t.cpu() for t in _as_tuple(example_inputs))
    macs, params = tp.utils.count_ops_and_params(work, inputs[0] if len(inputs) == 1 else inputs)
    return dict(params=int(params), macs=int(macs), latency_ms=cpu_latency_ms(work, inputs, repeats))


def size_comparison(original_model, pruned_model, example_inputs, repeats: int = 20, sizes=None,
                    title=None, model_name=None):
    """Bars of parameters, MACs and CPU latency before and after pruning.

    Parameters
    ----------
    original_model, pruned_model : nn.Module
    example_inputs : Tensor or tuple of Tensor
        A batch shaped like the model's inputs (latency is measured on this batch, on CPU).
    repeats : int
        Forward passes per latency measurement (the median is reported).
    sizes : (dict, dict), optional
        Precomputed :func:`model_size` results (before, after); skips measuring.
    title, model_name : str, optional
        Default title: "Model size before and after pruning · <model_name>".

    Returns
    -------
    plotly.graph_objects.Figure
        Three subplots, each with two ``Bar`` traces' worth of bars (one ``Bar`` per model).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    before, after = sizes if sizes is not None else (model_size(original_model, example_inputs, repeats),
                                                     model_size(pruned_model, example_inputs, repeats))
    metrics = [("params", "parameters"), ("macs", "MACs"), ("latency_ms", "CPU latency (ms)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[
        f"{title}: {after[key] / before[key]:.0%} of original" if before[key] else title for key, title in metrics])
    for name, values, color in (("original", before, "#444444"), ("pruned", after, "#636EFA")):
        for col, (key, label) in enumerate(metrics, start=1):
            fig.add_trace(go.Bar(x=[name], y=[values[key]], name=name, marker_color=color, showlegend=col == 1,
                                 legendgroup=name, hovertemplate=f"{name}<br>{label} %{{y:,.4g}}<extra></extra>"),
                          row=1, col=col)
            fig.update_yaxes(title_text=label, row=1, col=col)
    model_name = model_name or type(original_model).__name__
    default = f"Model size before and after pruning · {model_name}"
    fig.update_layout(title=title or default, height=380, barmode="group", margin=dict(t=90, l=60, r=20, b=40))
    return fig
