"""Accuracy figures drawn from tidy sweep records: curves, per-layer heatmaps and grouped bars."""
from __future__ import annotations

from typing import Optional, Union

from ._common import METHOD_COLORS, group_label, method_order, tidy_frame


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


def accuracy_vs_sparsity(records, group: Optional[Union[int, str]] = None, title: Optional[str] = None):
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

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` (lines+markers) per method, plus a dashed line for the original.

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
    if not original.empty:
        level = float(original["accuracy"].mean())
        xs = df.loc[df["method"] != "original", "sparsity"]
        lo, hi = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
        fig.add_trace(go.Scatter(
            x=[lo, hi], y=[level, level], mode="lines", name="original",
            line=dict(color=METHOD_COLORS["original"], dash="dash"),
            hovertemplate=f"original<br>accuracy {level:.2f}%<extra></extra>"))
    if title is None:
        title = "Accuracy vs sparsity" + ("" if group is None else f" ({group_label(df.iloc[0])})")
    fig.update_layout(title=title, xaxis_title="sparsity (fraction of channels removed)",
                      yaxis_title="accuracy (%)", legend_title="method", template="plotly_white")
    return fig
