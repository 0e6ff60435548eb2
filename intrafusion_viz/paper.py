"""The Intra-Fusion paper's CIFAR-10 cells and our reproduction's results, without a clone of the repo.

``benchmarks/reproduce_paper.py`` (a clone) trains and measures; this module holds what a notebook or
a user needs to read and show the results anywhere the package is installed: the paper's numbers
(:data:`PAPER`), the results file's format (:func:`read_results`), the side-by-side table
(:func:`comparison_table`) and a figure (:func:`paper_figure`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["PAPER", "PAPER_TABLE", "RESULT_METHOD_NAMES", "paper_table", "read_results", "comparison_table",
           "paper_figure"]

# (model, importance, paper group, sparsity) -> (default accuracy, Intra-Fusion accuracy) from the paper
# (CIFAR-10, no fine-tuning).  Only cells we could check are filled in; never add a number you have
# not read in the paper.  Everything else prints "n/a".
PAPER: Dict[Tuple[str, str, int, float], Tuple[Optional[float], Optional[float]]] = {
    ("vgg11_bn", "l1", 2, 0.7): (37.89, 80.11),   # Table 10
    ("resnet18", "l1", 3, 0.5): (81.91, 91.25),   # Table 12
}
PAPER_TABLE = {"vgg11_bn": "Table 10", "resnet18": "Table 12"}
# The results file's method labels -> the project's tidy method names.
RESULT_METHOD_NAMES = {"original": "original", "default": "default", "IF (paper)": "intra-fusion (paper)",
                       "IF (barycentric)": "intra-fusion"}


def paper_table():
    """The paper's cells as a DataFrame: model, table, importance, group ("G2"), sparsity, both accuracies."""
    import pandas as pd

    return pd.DataFrame([dict(model=model, table=PAPER_TABLE[model], importance=importance, group=f"G{group}",
                              sparsity=sparsity, **{"paper: default": d, "paper: Intra-Fusion": f})
                         for (model, importance, group, sparsity), (d, f) in PAPER.items()])


def read_results(path):
    """``results.jsonl`` of ``reproduce_paper.py`` as a tidy DataFrame (``None`` if the file is absent).

    Columns: model, group (paper number, 0 for the unpruned row), sparsity, importance, method (tidy
    names: original, default, intra-fusion (paper), intra-fusion), group_name, accuracy, paper_group.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    ours = pd.DataFrame(rows)
    ours["method"] = ours["method"].map(RESULT_METHOD_NAMES).fillna(ours["method"])
    ours["paper_group"] = ours["group"].map(lambda g: f"G{g}" if g else "")
    return ours


def comparison_table(ours):
    """Our accuracy per method beside the paper's, one row per (model, importance, group, sparsity)."""
    paper = paper_table().rename(columns={"group": "paper_group"})
    table = ours[ours.method != "original"].pivot_table(
        index=["model", "importance", "paper_group", "sparsity"], columns="method", values="accuracy")
    return table.join(paper.set_index(["model", "importance", "paper_group", "sparsity"])
                      [["paper: default", "paper: Intra-Fusion"]], how="left")


def paper_figure(ours=None):
    """Bars of the paper's cells (default vs Intra-Fusion), with ours beside them where measured.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Bar`` per (source, method): "paper: default", "paper: Intra-Fusion", and with ``ours``
        "ours: <method>" for every method measured in those cells.
    """
    import plotly.graph_objects as go

    from .figures._common import METHOD_COLORS

    cells = list(PAPER)
    labels = [f"{m} {PAPER_TABLE[m]}<br>G{g} {imp} {s:.0%}" for m, imp, g, s in cells]
    fig = go.Figure()
    for pos, (name, color) in enumerate((("paper: default", "#f4a582"), ("paper: Intra-Fusion", "#92c5de"))):
        fig.add_trace(go.Bar(x=labels, y=[PAPER[c][pos] for c in cells], name=name, marker_color=color,
                             text=[f"{PAPER[c][pos]:.1f}" for c in cells], textposition="outside"))
    if ours is not None:
        for method in ("default", "intra-fusion (paper)", "intra-fusion"):
            ys = []
            for m, imp, g, s in cells:
                hit = ours[(ours.model == m) & (ours.importance == imp) & (ours.group == g)
                           & ((ours.sparsity - s).abs() < 1e-9) & (ours.method == method)]
                ys.append(float(hit.accuracy.iloc[0]) if len(hit) else None)
            if any(y is not None for y in ys):
                fig.add_trace(go.Bar(x=labels, y=ys, name=f"ours: {method}", marker_color=METHOD_COLORS.get(method),
                                     text=["" if y is None else f"{y:.1f}" for y in ys], textposition="outside"))
    fig.add_hline(y=10.0, line=dict(color="#999999", dash="dot"), annotation_text="chance (10%)",
                  annotation_position="bottom right")
    fig.update_layout(
        title="CIFAR-10 accuracy after pruning one group, no fine-tuning<br><sup>the paper's verified cells"
              + (" and our reproduction" if ours is not None else " (run the reproduction to add ours)") + "</sup>",
        barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 105]), height=420, margin=dict(t=90),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return fig
