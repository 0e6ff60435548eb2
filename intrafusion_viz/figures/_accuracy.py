"""Accuracy figures drawn from tidy sweep records: curves, per-layer heatmaps and grouped bars."""
from __future__ import annotations

from typing import Optional, Union

from ._common import (METHOD_COLORS, TITLE_MARGIN, chance_from, group_label, method_order, records_title,
                      tidy_frame)


def _select_group(df, group):
    if group is None:
        return df if (df["group"] == -1).sum() == 0 else df[df["group"] == -1]
    if isinstance(group, str):
        mask = (df["group_name"] == group) | (df["paper_group"] == group)
    else:
        mask = df["group"] == int(group)
    out = df[mask]
    if out.empty:
        raise KeyError(f"no records for group {group!r}; groups present: {sorted(df['group'].unique().tolist())}")
    return out


def _reference_lines(fig, level_original, chance, x0, x1):
    """Dashed line at the original's accuracy and dotted line at chance level (if known)."""
    import plotly.graph_objects as go

    if level_original is not None:
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[level_original, level_original], mode="lines",
            name="original", line=dict(color=METHOD_COLORS["original"], dash="dash"),
            hovertemplate=f"original<br>accuracy {level_original:.2f}%<extra></extra>"))
    if chance is not None:
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[chance, chance], mode="lines", name="chance",
            line=dict(color="#999999", dash="dot"),
            hovertemplate=f"chance level<br>accuracy {chance:.2f}%<extra></extra>"))
    for level, text in ((level_original, "original"), (chance, "chance")):
        if level is not None:  # in the right margin: inside the plot they sat on the points
            fig.add_annotation(x=1.0, xref="paper", y=level, text=f"{text} {level:.1f}%", showarrow=False,
                               xanchor="left", yanchor="middle", xshift=4, font=dict(size=11, color="#555555"))


def accuracy_vs_sparsity(records, group: Optional[Union[int, str]] = None, title: Optional[str] = None,
                         num_classes: Optional[int] = None, model_name: Optional[str] = None,
                         marker_at: Optional[float] = None):
    """Accuracy (%) against sparsity, one line per method.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Tidy records (``sparsity``, ``method``, ``accuracy`` and optionally ``group``...).  Rows with
        method ``"original"`` are drawn as a dashed horizontal reference line.
    group : int or str, optional
        Keep only this group (index, name or paper label such as ``"G1"``).  Default: the
        whole-model rows (``group == -1``) when there are any, else every row, averaged per sparsity.
    title : str, optional
        Default: names the model, the group, the importance and the evaluation.
    num_classes : int, optional
        Draw chance level (``100 / num_classes`` %) as a dotted line; also read from a
        ``num_classes`` column of the records.
    model_name : str, optional
        Named in the title (default: the records' ``model`` column, if any).
    marker_at : float, optional
        A vertical line at this sparsity (dashboards mark the slider's position).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` (lines+markers) per method, then a dashed ``"original"`` line and a dotted
        ``"chance"`` line where known, each labelled with its accuracy.

    Examples
    --------
    >>> fig = accuracy_vs_sparsity([dict(sparsity=0.5, method="default", accuracy=80.0),
    ...                             dict(sparsity=0.5, method="intra-fusion", accuracy=90.0)])
    >>> [t.name for t in fig.data]
    ['default', 'intra-fusion']
    """
    import plotly.graph_objects as go

    df = _select_group(tidy_frame(records), group)
    fig = go.Figure()
    for method in method_order(df["method"]):
        rows = df[df["method"] == method].groupby("sparsity", as_index=False)["accuracy"].mean()
        rows = rows.sort_values("sparsity")
        fig.add_trace(go.Scatter(
            x=rows["sparsity"].to_numpy(), y=rows["accuracy"].to_numpy(), mode="lines+markers", name=method,
            line=dict(color=METHOD_COLORS.get(method)),
            hovertemplate=f"{method}<br>sparsity %{{x:.2f}}<br>accuracy %{{y:.2f}}%<extra></extra>"))
    original = df[df["method"] == "original"]
    level = None if original.empty else float(original["accuracy"].mean())
    xs = df.loc[df["method"] != "original", "sparsity"]
    lo, hi = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
    _reference_lines(fig, level, chance_from(df, num_classes), lo, hi)
    if marker_at is not None:
        fig.add_vline(x=float(marker_at), line=dict(color="#111111", width=1, dash="dot"),
                      annotation_text=f"slider {float(marker_at):.2f}", annotation_position="top")
    if title is None:
        scope = "every group pruned at once" if group is None else f"only {group_label(df.iloc[0])} pruned"
        title = records_title("Accuracy vs sparsity", df, model_name, f"{scope}, no fine-tuning")
    # a height of its own (a dashboard's placeholder was 260 px: the plot got ~110 px), the legend below
    # the x-axis title, the reference labels in the right margin
    fig.update_layout(title=title, xaxis_title="sparsity (fraction of channels removed)",
                      yaxis_title="accuracy (%)", legend_title="method", height=460,
                      margin=dict(TITLE_MARGIN, b=120, r=110),
                      legend=dict(orientation="h", yanchor="top", y=-0.3, x=0))
    return fig


def _drops(records):
    """Per-layer rows with ``label`` and ``drop`` (original accuracy minus accuracy, points)."""
    df = tidy_frame(records)
    original = df[df["method"] == "original"]
    if original.empty:
        raise ValueError("records need a row with method 'original' to measure the drop from")
    base = float(original["accuracy"].mean())
    rows = df[(df["method"] != "original") & (df["group"] != -1)].copy()
    if rows.empty:
        raise ValueError("records hold no per-group rows (group >= 0); run intrafusion_viz.evaluation.sweeps.layer_sweep")
    rows["drop"] = base - rows["accuracy"]
    rows["label"] = [group_label(r) for _, r in rows.iterrows()]
    order = rows.drop_duplicates("group").sort_values("group")["label"].tolist()
    return rows, order, base


def sweep_heatmap(records, title: Optional[str] = None, model_name: Optional[str] = None):
    """Accuracy drop per group (rows) and sparsity (columns), one heatmap per method.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Tidy records of :func:`intrafusion_viz.evaluation.sweeps.layer_sweep` (needs an ``"original"`` row).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` per method (subplots side by side, shared colour scale), ``z`` of shape
        (groups, sparsities) in accuracy points lost.
    """
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, order, base = _drops(records)
    methods = method_order(rows["method"])
    sparsities = sorted(rows["sparsity"].unique())
    zmax = max(float(rows["drop"].max()), 1e-9)
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, method in enumerate(methods, start=1):
        table = rows[rows["method"] == method].pivot_table(index="label", columns="sparsity", values="drop",
                                                           aggfunc="mean").reindex(index=order, columns=sparsities)
        z = table.to_numpy(dtype=float)
        fig.add_trace(go.Heatmap(
            z=z, x=[f"{s:.2f}" for s in sparsities], y=order, zmin=min(0.0, float(np.nanmin(z))), zmax=zmax,
            colorscale="Reds", showscale=col == len(methods), colorbar=dict(title="drop (pts)"),
            texttemplate="%{z:.1f}", name=method,  # one format: "2.0", not "2" next to "2.4"
            hovertemplate=f"{method}<br>%{{y}}<br>sparsity %{{x}}<br>drop %{{z:.2f}} pts<extra></extra>"),
            row=1, col=col)
        fig.update_xaxes(title_text="sparsity", row=1, col=col)
    fig.update_yaxes(title_text="group", autorange="reversed", row=1, col=1)
    df = tidy_frame(records)
    fig.update_layout(title=title or records_title(
        "Accuracy drop per layer group", df, model_name,
        f"one group pruned at a time, no fine-tuning · original {base:.2f}%"),
        height=int(220 + 28 * len(order)), margin=dict(TITLE_MARGIN, l=140))
    return fig


def sweep_bars(records, sparsity: Optional[float] = None, title: Optional[str] = None,
               num_classes: Optional[int] = None, model_name: Optional[str] = None):
    """Grouped bars of the accuracy drop: one bar per method for every (group, sparsity).

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Tidy records with an ``"original"`` row.
    sparsity : float, optional
        Draw only this sparsity (default: all, on a two-level group / sparsity axis).
    num_classes : int, optional
        Draw the drop that leaves the model at chance level (original minus ``100 / num_classes``)
        as a dotted line; also read from a ``num_classes`` column.
    model_name : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Bar`` per method (plus the chance-level line, when known).
    """
    import plotly.graph_objects as go

    rows, order, base = _drops(records)
    if sparsity is not None:
        rows = rows[(rows["sparsity"] - sparsity).abs() < 1e-9]
        if rows.empty:
            raise KeyError(f"no records at sparsity {sparsity}")
    rank = {label: i for i, label in enumerate(order)}
    fig = go.Figure()
    for method in method_order(rows["method"]):
        part = rows[rows["method"] == method].groupby(["label", "sparsity"], as_index=False)["drop"].mean()
        part = part.assign(rank=part["label"].map(rank)).sort_values(["rank", "sparsity"])
        x = (part["label"].tolist() if sparsity is not None
             else [part["label"].tolist(), [f"{s:.2f}" for s in part["sparsity"]]])
        fig.add_trace(go.Bar(x=x, y=part["drop"].to_numpy(), name=method, marker_color=METHOD_COLORS.get(method),
                             hovertemplate=f"{method}<br>%{{x}}<br>drop %{{y:.2f}} pts<extra></extra>"))
    chance = chance_from(tidy_frame(records), num_classes)
    if chance is not None:
        fig.add_hline(y=base - chance, line=dict(color="#999999", dash="dot"),
                      annotation_text=f"drop to chance ({chance:.0f}%)", annotation_position="top left")
    at = "every sparsity" if sparsity is None else f"sparsity {sparsity:.2f}"
    fig.update_layout(title=title or records_title(
        "Accuracy drop per layer group", tidy_frame(records), model_name,
        f"one group pruned at a time at {at} · original {base:.2f}%"), barmode="group",
        xaxis_title="group" + ("" if sparsity is not None else " / sparsity"),
        yaxis_title="accuracy drop (points)", legend_title="method", margin=TITLE_MARGIN, height=440,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    return fig
