"""The Intra-Fusion paper's numbers and our reproduction's results, without a clone of the repo.

``benchmarks/reproduce_paper.py`` (a clone) trains and measures; this module holds what a notebook or
a user needs to read and show the results anywhere the package is installed: the paper's numbers
(Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024, camera-ready), shipped as data
because they are facts from the paper:

* :data:`PAPER`: Tables 10 (VGG11-BN) and 12 (ResNet18), CIFAR-10, one group pruned, no fine-tuning,
  l1 and Taylor importance, plus the failure cases the paper reports (VGG11-BN G7 with l1, ResNet18
  G4 / G7 with Taylor);
* :data:`TABLE_1`: whole model with fine-tuning; :data:`SECTION_6`: split-data fusion speed-ups;

and the results file's format (:func:`read_results`), the side-by-side table (:func:`comparison_table`)
and a figure (:func:`paper_figure`).  :func:`parse_tables` reads the same numbers from the project's
transcription ``../shared/paper/tables.md`` (:func:`tables_path`); ``tests/test_paper.py`` checks the
shipped numbers equal that file's.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["PAPER", "PAPER_TABLE", "FAILURE_CASES", "TABLE_1", "TABLE_1_UNPRUNED", "SECTION_6",
           "RESULT_METHOD_NAMES", "OURS_COLUMNS", "paper_table", "paper_groups", "parse_tables", "tables_path", "read_results",
           "comparison_table", "paper_figure"]

Cell = Tuple[str, str, int, float]  # (model, importance, paper group, sparsity)

# Tables 10 and 12: (model, importance, paper group) -> accuracy pairs (default, Intra-Fusion) at
# 30, 40, 50, 60, 70 % sparsity, CIFAR-10, no fine-tuning.
_SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7)
_TABLES = {
    ("vgg11_bn", "l1", 1): ((88.74, 89.15), (87.68, 88.84), (85.44, 88.06), (77.81, 87.58), (60.63, 86.82)),
    ("vgg11_bn", "taylor", 1): ((88.76, 89.24), (88.51, 88.92), (87.49, 88.23), (83.55, 87.53), (68.88, 86.60)),
    ("vgg11_bn", "l1", 2): ((80.41, 88.26), (76.07, 87.18), (68.41, 85.37), (60.10, 83.51), (37.89, 80.11)),
    ("vgg11_bn", "taylor", 2): ((87.34, 88.46), (84.61, 87.36), (78.94, 85.11), (74.10, 83.70), (65.62, 80.86)),
    ("vgg11_bn", "l1", 3): ((86.76, 87.79), (85.56, 87.45), (79.49, 86.68), (72.23, 85.58), (54.86, 84.10)),
    ("vgg11_bn", "taylor", 3): ((88.50, 88.06), (87.47, 87.12), (85.52, 86.06), (82.58, 86.15), (71.07, 85.10)),
    ("resnet18", "l1", 1): ((94.86, 94.89), (94.84, 94.82), (94.72, 94.86), (94.61, 94.85), (94.09, 94.83)),
    ("resnet18", "taylor", 1): ((94.72, 94.88), (94.65, 94.89), (94.36, 94.86), (94.18, 94.80), (93.13, 94.62)),
    ("resnet18", "l1", 2): ((94.58, 94.86), (94.34, 94.82), (94.10, 94.76), (93.50, 94.61), (92.41, 94.41)),
    ("resnet18", "taylor", 2): ((94.72, 94.75), (94.48, 94.74), (94.06, 94.59), (93.67, 94.30), (92.90, 94.07)),
    ("resnet18", "l1", 3): ((91.33, 93.59), (87.75, 92.46), (81.91, 91.25), (75.73, 88.32), (58.93, 80.70)),
    ("resnet18", "taylor", 3): ((91.93, 93.43), (89.17, 92.58), (83.69, 91.67), (76.30, 88.42), (57.86, 79.97)),
}
# The paper's own failure cases.  VGG11-BN G7 (the first conv), l1, 30-50 %: Intra-Fusion worse than
# default.  ResNet18 G4 and G7 with Taylor: Intra-Fusion at chance (10.10) at every sparsity of the
# sweep; the paper gives no default number for them (None).
FAILURE_CASES: Dict[Cell, Tuple[Optional[float], Optional[float]]] = {
    ("vgg11_bn", "l1", 7, 0.3): (88.22, 79.10),
    ("vgg11_bn", "l1", 7, 0.4): (87.19, 68.28),
    ("vgg11_bn", "l1", 7, 0.5): (84.23, 63.05),
    **{("resnet18", "taylor", g, s): (None, 10.10) for g in (4, 7) for s in _SPARSITIES},
}
# (model, importance, paper group, sparsity) -> (default accuracy, Intra-Fusion accuracy): every
# one-group cell of the paper (Tables 10, 12 and the failure cases).
PAPER: Dict[Cell, Tuple[Optional[float], Optional[float]]] = {
    **{(m, imp, g, s): pair for (m, imp, g), pairs in _TABLES.items() for s, pair in zip(_SPARSITIES, pairs)},
    **FAILURE_CASES,
}
PAPER_TABLE = {"vgg11_bn": "Table 10", "resnet18": "Table 12"}

# Table 1: whole model, l1, CIFAR-10, WITH fine-tuning; sparsity = fraction of weights removed.
# (model, sparsity) -> (default, Intra-Fusion); TABLE_1_UNPRUNED: the unpruned models.
TABLE_1: Dict[Tuple[str, float], Tuple[float, float]] = {
    ("vgg11_bn", 0.64): (88.95, 89.19), ("vgg11_bn", 0.84): (88.14, 88.51),
    ("vgg11_bn", 0.91): (87.43, 88.15), ("vgg11_bn", 0.96): (85.21, 85.89),
    ("resnet18", 0.64): (91.53, 91.98), ("resnet18", 0.84): (91.22, 91.62),
    ("resnet18", 0.91): (90.41, 91.37), ("resnet18", 0.96): (88.82, 89.60),
}
TABLE_1_UNPRUNED = {"vgg11_bn": 89.56, "resnet18": 92.17}

# Section 6 (split-data fusion, VGG11-BN): speed-ups over the 160-epoch baseline.
SECTION_6 = {"model": "vgg11_bn", "training_speedup": 1.81, "overall_speedup_paf": 1.42,
             "overall_speedup_fap": 1.31,
             "protocol": "iterative pruning 4 x 10 epochs + 80 epochs fine-tuning, against a 160-epoch baseline"}

# The results file's method labels -> the project's tidy method names.  "IF (barycentric)" is the
# third column of runs made before the default-config column replaced it.
RESULT_METHOD_NAMES = {"original": "original", "default": "default", "IF (paper)": "intra-fusion (paper)",
                       "IF (default config)": "intra-fusion", "IF (barycentric)": "intra-fusion (barycentric)"}
# Our columns in the comparison, in order: tidy method name -> column title.
OURS_COLUMNS = {"default": "ours: default", "intra-fusion (paper)": "ours: IF (paper preset)",
                "intra-fusion": "ours: IF (default config)"}


def paper_table():
    """The paper's one-group cells as a DataFrame: model, table, importance, group ("G2"), sparsity, both accuracies."""
    import pandas as pd

    return pd.DataFrame([dict(model=model, table=PAPER_TABLE[model], importance=importance, group=f"G{group}",
                              sparsity=sparsity, failure_case=(model, importance, group, sparsity) in FAILURE_CASES,
                              **{"paper: default": d, "paper: Intra-Fusion": f})
                         for (model, importance, group, sparsity), (d, f) in PAPER.items()])


def paper_groups(model: str) -> list:
    """The paper group numbers the paper reports for ``model`` (Tables 10 / 12 and the failure cases)."""
    return sorted({g for m, _, g, _ in PAPER if m == model})


def tables_path() -> Optional[Path]:
    """``tables.md`` of the shared folder, or ``None``: ``$INTRAFUSION_VIZ_SHARED/paper/tables.md``, else
    ``<project root>/../shared/paper/tables.md`` (a clone's layout)."""
    env = os.environ.get("INTRAFUSION_VIZ_SHARED")
    candidates = [Path(env) / "paper" / "tables.md"] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables.md")
    return next((p for p in candidates if p.is_file()), None)


_MODELS = {"VGG11-BN": "vgg11_bn", "ResNet18": "resnet18"}
_PAIR = r"(\d+\.\d+)\s*->\s*(\d+\.\d+)"


def parse_tables(text: str) -> dict:
    """The paper's numbers from the text of ``tables.md`` (the project's transcription of the paper).

    Returns
    -------
    dict
        ``"cells"``: ``{(model, importance, group, sparsity): (default, Intra-Fusion)}`` as :data:`PAPER`;
        ``"table_1"``: as :data:`TABLE_1`; ``"table_1_unpruned"``; ``"section_6"``: the three speed-ups
        (``training_speedup``, ``overall_speedup_paf``, ``overall_speedup_fap``).

    Raises
    ------
    ValueError
        If a section the paper has (Table 10, Table 12, Table 1, Section 6) is missing from ``text``.
    """
    cells, table_1, unpruned, section_6 = {}, {}, {}, {}
    model = None
    for line in text.splitlines():
        head = re.match(r"##\s+(.*)", line)
        if head:
            title = head.group(1)
            model = next((m for name, m in _MODELS.items() if name in title), None)
            if title.startswith("Table 1:"):
                model = "table_1"
            if title.startswith("Section 6"):
                model = "section_6"
                section_6 = dict(zip(("training_speedup", "overall_speedup_paf", "overall_speedup_fap"),
                                     map(float, re.findall(r"(\d+\.\d+)x", title))))
            continue
        row = re.match(r"G(\d+) (\d+): " + _PAIR + r" \| " + _PAIR, line)
        if row and model in _MODELS.values():
            g, s = int(row.group(1)), int(row.group(2)) / 100
            cells[(model, "l1", g, s)] = (float(row.group(3)), float(row.group(4)))
            cells[(model, "taylor", g, s)] = (float(row.group(5)), float(row.group(6)))
            continue
        failure = re.match(r"G(\d+) \(.*?\), l1, ([\d / ]+): (.*)", line)
        if failure and model in _MODELS.values():
            sparsities = [int(s) / 100 for s in failure.group(2).split("/")]
            for s, (d, f) in zip(sparsities, re.findall(_PAIR, failure.group(3))):
                cells[(model, "l1", int(failure.group(1)), s)] = (float(d), float(f))
            continue
        chance = re.match(r"G(\d+) and G(\d+) with Taylor importance: Intra-Fusion (\d+\.\d+) at every sparsity", line)
        if chance and model in _MODELS.values():
            for g in (int(chance.group(1)), int(chance.group(2))):
                for s in _SPARSITIES:
                    cells[(model, "taylor", g, s)] = (None, float(chance.group(3)))
            continue
        whole = re.match(r"(VGG11-BN|ResNet18) \(unpruned (\d+\.\d+)\): (.*)", line)
        if whole and model == "table_1":
            name = _MODELS[whole.group(1)]
            unpruned[name] = float(whole.group(2))
            for s, d, f in re.findall(r"(\d+) %: (\d+\.\d+) / (\d+\.\d+)", whole.group(3)):
                table_1[(name, int(s) / 100)] = (float(d), float(f))
    missing = [name for name, found in (("Table 10", any(k[0] == "vgg11_bn" for k in cells)),
                                        ("Table 12", any(k[0] == "resnet18" for k in cells)),
                                        ("Table 1", bool(table_1)), ("Section 6", len(section_6) == 3)) if not found]
    if missing:
        raise ValueError(f"tables.md lacks {', '.join(missing)}: is this the paper's transcription "
                         "(shared/paper/tables.md)?")
    return dict(cells=cells, table_1=table_1, table_1_unpruned=unpruned, section_6=section_6)


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


def comparison_table(ours=None):
    """Every paper cell with ours beside it, one row per (model, importance, group, sparsity).

    Columns: ``paper: default``, ``paper: Intra-Fusion``, then ours per :data:`OURS_COLUMNS` (and any
    other method in ``ours``), then ``Δ default`` (ours minus the paper's default) and ``Δ IF`` (our
    paper-preset Intra-Fusion minus the paper's).  Cells we did not measure are NaN; cells we measured
    that the paper lacks are appended.
    """
    import pandas as pd

    key = ["model", "importance", "paper_group", "sparsity"]
    table = (paper_table().rename(columns={"group": "paper_group"}).set_index(key)
             [["paper: default", "paper: Intra-Fusion"]].astype(float))
    if ours is not None and len(ours[ours.method != "original"]):
        mine = ours[ours.method != "original"].pivot_table(index=key, columns="method", values="accuracy")
        mine = mine.rename(columns={m: OURS_COLUMNS.get(m, f"ours: {m}") for m in mine.columns})
        table = table.join(mine, how="outer")
    for column in OURS_COLUMNS.values():
        if column not in table.columns:
            table[column] = float("nan")
    table["Δ default"] = table["ours: default"] - table["paper: default"]
    table["Δ IF"] = table["ours: IF (paper preset)"] - table["paper: Intra-Fusion"]
    return table.sort_index() if isinstance(table, pd.DataFrame) else table


def paper_figure(ours=None, model: str = "vgg11_bn", importance: str = "l1"):
    """Bars of every paper cell of one model and importance (default vs Intra-Fusion), ours beside them.

    Parameters
    ----------
    ours : pandas.DataFrame, optional
        :func:`read_results`' frame; without it only the paper's bars are drawn.
    model : {"vgg11_bn", "resnet18"}
    importance : {"l1", "taylor"}

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Bar`` per (source, method): "paper: default", "paper: Intra-Fusion", and with ``ours``
        "ours: <method>" for every method measured in those cells; x: "G<group> <sparsity>".
    """
    import plotly.graph_objects as go

    from .figures._common import METHOD_COLORS

    if model not in PAPER_TABLE:
        raise ValueError(f"model must be one of {sorted(PAPER_TABLE)}; got {model!r}")
    cells = sorted(c for c in PAPER if c[0] == model and c[1] == importance)
    if not cells:
        raise ValueError(f"the paper has no {model} cells with importance {importance!r}; use 'l1' or 'taylor'")
    labels = [f"G{g} {s:.0%}" + (" *" if (m, imp, g, s) in FAILURE_CASES else "") for m, imp, g, s in cells]
    fig = go.Figure()
    for pos, (name, color) in enumerate((("paper: default", "#f4a582"), ("paper: Intra-Fusion", "#92c5de"))):
        ys = [PAPER[c][pos] for c in cells]
        fig.add_trace(go.Bar(x=labels, y=ys, name=name, marker_color=color))
    if ours is not None:
        for method in ("default", "intra-fusion (paper)", "intra-fusion"):
            ys = []
            for m, imp, g, s in cells:
                hit = ours[(ours.model == m) & (ours.importance == imp) & (ours.group == g)
                           & ((ours.sparsity - s).abs() < 1e-9) & (ours.method == method)]
                ys.append(float(hit.accuracy.iloc[0]) if len(hit) else None)
            if any(y is not None for y in ys):
                fig.add_trace(go.Bar(x=labels, y=ys, name=OURS_COLUMNS[method],
                                     marker_color=METHOD_COLORS.get(method)))
    fig.add_hline(y=10.0, line=dict(color="#999999", dash="dot"), annotation_text="chance (10%)",
                  annotation_position="bottom right")
    fig.update_layout(
        title=f"{model}, CIFAR-10, one group pruned, importance {importance}, no fine-tuning "
              f"(the paper's {PAPER_TABLE[model]})<br><sup>every paper cell"
              + (" with our reproduction beside it" if ours is not None else " (run the reproduction to add ours)")
              + ("; * the paper's failure cases" if any(c in FAILURE_CASES for c in cells) else "") + "</sup>",
        barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 100]),
        xaxis=dict(title="paper group and sparsity"), height=440, margin=dict(t=90),
        legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
    return fig
