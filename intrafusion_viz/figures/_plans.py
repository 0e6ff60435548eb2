"""Transport-plan heatmap: every source neuron against the kept ones, grouped into merge clusters."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import TITLE_MARGIN, group_title, record_of, row_layout, to_numpy


def source_order(group_result) -> np.ndarray:
    """Order of the n source neurons that makes merge clusters contiguous.

    Sources are sorted by the kept position they send most mass to (dropped neurons of default
    pruning last), the kept neuron itself first in its cluster, then by mass (largest first).

    Parameters
    ----------
    group_result : GroupResult

    Returns
    -------
    numpy.ndarray of int, shape (n,)
        ``order[r]`` is the neuron drawn in row ``r``.
    """
    plan = to_numpy(group_result.plan)
    n, k = plan.shape
    has = plan.sum(1) > 0
    target = np.where(has, plan.argmax(1), k)
    mass = plan.max(1)
    is_kept = np.zeros(n, dtype=bool)
    kept = to_numpy(group_result.kept).astype(int)
    is_kept[kept[kept < n]] = True  # fusion records: targets are another model's neurons, possibly more
    # lexsort: last key is primary
    return np.lexsort((np.arange(n), -mass, ~is_kept, target))


def target_axis_title(group_result, config=None) -> str:
    """What a plan's columns are: kept neurons, or centroids labelled by their nearest kept neuron."""
    if group_result.cost is not None and config is not None and config.target == "centroid":
        return "target centroid (labelled by nearest kept neuron)"
    return "kept neuron"


# plotly.js checks every tick label against the figure's edges ("hide past div") once per label drawn,
# measuring all of them each time: 200 ms of a 512-row plan's redraw in the browser.  The margins
# leave room for the labels, so they are drawn without the check.
TICKS_MAY_OVERFLOW = "allow"


def plan_heatmap(group_result, title: Optional[str] = None, show_cluster_lines: Optional[bool] = None,
                 model_name: Optional[str] = None, importance: Optional[str] = None, config=None, *, group=None):
    """Heatmap of a transport plan: n source neurons (rows) x k kept neurons (columns).

    Rows are ordered by :func:`source_order`, so the neurons merged into one kept neuron form a
    block; hard (exact OT, default pruning) and soft (Sinkhorn) plans are drawn the same way.

    Parameters
    ----------
    group_result : GroupResult or PruneResult
        A record of :func:`intrafusion_viz.prune` (uses ``plan``, ``kept``, ``importance``), or the
        whole result with ``group=`` (index or name).
    title : str, optional
    show_cluster_lines : bool, optional
        Draw a thin line between clusters; default only when ``k <= 64`` (too many shapes slow
        the browser down).
    model_name, importance : str, optional
        Named in the default title (with the group, the method and the sparsity); the model defaults
        to its class name when a ``PruneResult`` is given.
    config : OTConfig, optional
        The settings of the prune (``PruneResult.config``): names the solver and, with
        ``target="centroid"``, labels the columns as centroids.
    group : int or str, optional
        The group to draw when ``group_result`` is a ``PruneResult``.

    Returns
    -------
    plotly.graph_objects.Figure
        A ``Heatmap`` with ``z`` of shape (n, k) equal to ``plan[source_order]``, then a ``Scatter``
        marking each kept neuron's own cell (default pruning and Intra-Fusion alike); rows are named
        by source neuron and its importance (``y``, a category axis: ``"17 (importance 0.123)"`` in
        ``source_order``, tick labels the numbers), columns by kept neuron (``x``: ``kept``).
    """
    import plotly.graph_objects as go

    group_result, default_name, default_config = record_of(group_result, group, "plan_heatmap")
    model_name, config = model_name or default_name, config or default_config
    plan = to_numpy(group_result.plan)
    n, k = plan.shape
    kept = to_numpy(group_result.kept).astype(int)
    scores = to_numpy(group_result.importance)
    order = source_order(group_result)
    z = plan[order]
    # Rows and columns are categories named by neuron: kept neurons, and source neurons in cluster order
    # with their importance ("17 (importance 0.123)"; the tick labels show the number only), so the
    # hover needs no per-cell data.  [source, kept, importance] per cell, (n, k, 3), took plotly.js
    # 70 ms to unpack for a 512x300 plan on every slider move and doubled the message.
    rows = np.array([f"{i} (importance {v:.3g})" for i, v in zip(order, scores[order])])
    zmax = float(z.max()) if z.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=kept.astype(str), y=rows,  # numpy arrays: plotly checks a list item by item
        colorscale=[[0.0, "#ffffff"], [0.02, "#e8eefc"], [1.0, "#1f3a93"]], zmin=0.0, zmax=zmax or 1.0,
        colorbar=dict(title="mass"),
        hovertemplate="source neuron %{y}<br>-> kept neuron %{x}<br>mass %{z:.3g}<extra></extra>"))
    if show_cluster_lines is None:
        show_cluster_lines = k <= 64
    if show_cluster_lines and n:
        has = plan[order].sum(1) > 0
        target = np.where(has, plan[order].argmax(1), k)
        breaks = np.nonzero(np.diff(target))[0]
        fig.update_layout(shapes=[dict(type="line", xref="paper", x0=0, x1=1, y0=b + 0.5, y1=b + 0.5,
                                       line=dict(color="#999999", width=0.5)) for b in breaks])
    # the kept neuron's own cell: without it a 50 % plan (one neuron merged into each kept one) reads
    # as a plain diagonal; with it every column shows the kept neuron and what merged into it
    row_of = {int(i): r for r, i in enumerate(order)}
    self_rows = [(j, row_of[int(i)]) for j, i in enumerate(kept) if int(i) in row_of and plan[int(i), j] > 0]
    if self_rows:
        fig.add_trace(go.Scatter(
            x=[str(int(kept[j])) for j, _ in self_rows], y=[rows[r] for _, r in self_rows], mode="markers",
            name="the kept neuron itself", marker=dict(symbol="circle", size=5, color="#f2a541",
                                                        line=dict(width=0.5, color="#333333")),
            hovertemplate="kept neuron %{x} (itself)<extra></extra>", showlegend=True))
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right",
                                      font=dict(size=10)))
    height, row_every = row_layout(n)
    tick_every = max(1, int(np.ceil(k / 32)))
    what = "Selection plan" if group_result.cost is None else "Transport plan"
    if title is None:
        title = group_title(what, group_result, model_name, importance, config)
    xtitle = target_axis_title(group_result, config)
    fig.update_layout(
        title=title, height=height, margin=TITLE_MARGIN,
        xaxis=dict(title=xtitle, type="category", tickmode="array", tickvals=kept[::tick_every].astype(str),
                   ticktext=kept[::tick_every].astype(str), ticklabeloverflow=TICKS_MAY_OVERFLOW),
        yaxis=dict(title="source neuron (by cluster)", type="category", autorange="reversed",
                   tickmode="array", tickvals=rows[::row_every],
                   ticktext=order[::row_every].astype(str), ticklabeloverflow=TICKS_MAY_OVERFLOW))
    return fig


def plan_comparison(group_results, titles=None, model_name: Optional[str] = None,
                    importance: Optional[str] = None, config=None):
    """Plans of the same group by several methods side by side (e.g. default | Intra-Fusion).

    Parameters
    ----------
    group_results : list of GroupResult
        Records of the same group and sparsity (e.g. one per method).
    titles : list of str, optional
        Subplot titles (default: each record's method).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` per record (rows in each record's own :func:`source_order`).
    """
    from plotly.subplots import make_subplots

    from ._common import method_of

    if hasattr(group_results, "groups") or not isinstance(group_results, (list, tuple)) or not group_results:
        raise TypeError("plan_comparison needs a non-empty list of group records of the same group, e.g. "
                        f"[res_a.group(3), res_b.group(3)]; got {type(group_results).__name__}")
    group_results = [record_of(g, None, "plan_comparison")[0] for g in group_results]
    first = group_results[0]
    titles = titles or [method_of(g) for g in group_results]
    fig = make_subplots(rows=1, cols=len(group_results), subplot_titles=titles, horizontal_spacing=0.08)
    for col, g in enumerate(group_results, start=1):
        single = plan_heatmap(g, config=config)
        trace = single.data[0]
        trace.update(showscale=col == len(group_results))
        fig.add_trace(trace, row=1, col=col)
        # a panel is a fraction of the figure's width: at most 18 column labels across all of them
        every = max(1, int(np.ceil(g.k / max(3, 18 // len(group_results)))))
        columns = to_numpy(g.kept).astype(int)[::every].astype(str)
        fig.update_xaxes(title_text=target_axis_title(g, config), type="category", tickmode="array",
                         tickvals=columns, ticktext=columns, tickangle=0,
                         ticklabeloverflow=TICKS_MAY_OVERFLOW, row=1, col=col)
        fig.update_yaxes(autorange="reversed", type="category", tickmode="array", tickvals=single.layout.yaxis.tickvals,
                         ticktext=single.layout.yaxis.ticktext, ticklabeloverflow=TICKS_MAY_OVERFLOW, row=1, col=col)
    fig.update_yaxes(title_text="source neuron (by cluster)", row=1, col=1)
    height, _ = row_layout(first.n)
    title = group_title("Plans side by side", first, model_name, importance, config)
    title = title.replace(method_of(first, config) + " · ", "")
    fig.update_layout(title=title, height=height + 30, margin=dict(TITLE_MARGIN, t=100))
    return fig
