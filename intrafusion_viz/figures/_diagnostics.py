"""Figure of per-layer drift (:func:`intrafusion_viz.layer_drift`): where a merged network leaves the original."""
from __future__ import annotations

from typing import Dict, List, Optional


def drift_figure(variants: Dict[str, List[dict]], *, model_name: str = "model", method: str = "",
                 importance: str = "", sparsity: Optional[float] = None, metric: str = "rel_error"):
    """Lines of a drift metric per layer (forward order), one per variant (e.g. no repair, data-free, bn).

    Parameters
    ----------
    variants : dict
        ``{label: rows from layer_drift}``.
    model_name, method, importance, sparsity
        For the title.
    metric : {"rel_error", "std_ratio", "mean_shift", "corr"}
        Plotted in the top panel; the bottom panel always shows ``std_ratio`` (1 = the variance the
        channel should have).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not variants:
        raise ValueError("variants is empty: pass {label: layer_drift(...)} for at least one network")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(metric.replace("_", " "), "std ratio (merged / what it stands for)"))
    for label, rows in variants.items():
        layers = [r["layer"] for r in rows]
        hover = [f"group {r['group']} ({'pruned' if r['pruned'] else 'kept'}), {r['n']}->{r['k']} ch" +
                 (f", top-1 agreement {r['agreement']:.1f} %" if "agreement" in r else "") for r in rows]
        fig.add_trace(go.Scatter(x=layers, y=[r[metric] for r in rows], mode="lines+markers", name=label,
                                 legendgroup=label, hovertext=hover), row=1, col=1)
        fig.add_trace(go.Scatter(x=layers, y=[r["std_ratio"] for r in rows], mode="lines+markers", name=label,
                                 legendgroup=label, showlegend=False, hovertext=hover), row=2, col=1)
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray", row=2, col=1)
    parts = [model_name, method, f"{importance} importance" if importance else "",
             f"sparsity {sparsity:.0%}" if sparsity is not None else ""]
    fig.update_layout(title=f"Per-layer drift from the original: {', '.join(p for p in parts if p)}",
                      height=600, legend_title="network")
    fig.update_xaxes(title_text="layer (forward order)", row=2, col=1)
    return fig
