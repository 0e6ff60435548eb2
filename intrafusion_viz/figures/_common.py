"""Shared helpers for the figure modules: tidy tables, tensors to numpy, palettes."""
from __future__ import annotations

import numpy as np

# Fixed colours per method so every figure of the project reads the same way.
METHOD_COLORS = {
    "original": "#444444",
    "default": "#EF553B",
    "intra-fusion": "#636EFA",
    "intra-fusion (paper)": "#00CC96",
    "fold": "#AB63FA",
}
METHOD_ORDER = ("default", "intra-fusion", "intra-fusion (paper)", "fold")


def to_numpy(x) -> np.ndarray:
    """A tensor/array/list as a float64 numpy array (detached, on CPU)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def tidy_frame(records):
    """Records (DataFrame or list of dicts) as a DataFrame with the shared tidy columns.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Columns ``group``, ``group_name``, ``paper_group``, ``sparsity``, ``method``, ``importance``,
        ``accuracy`` (percent); missing optional columns are filled in.
    """
    import pandas as pd

    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    for col in ("sparsity", "method", "accuracy"):
        if col not in df.columns:
            raise ValueError(f"records need a {col!r} column; got columns {list(df.columns)}")
    if "group" not in df.columns:
        df["group"] = -1
    if "group_name" not in df.columns:
        df["group_name"] = np.where(df["group"] == -1, "all", df["group"].astype(str))
    if "paper_group" not in df.columns:
        df["paper_group"] = ""
    if "importance" not in df.columns:
        df["importance"] = ""
    df["sparsity"] = df["sparsity"].astype(float)
    df["accuracy"] = df["accuracy"].astype(float)
    return df


def method_order(methods) -> list:
    """Methods in the project's usual order (known ones first, then the rest as they come)."""
    methods = [m for m in dict.fromkeys(methods) if m != "original"]
    known = [m for m in METHOD_ORDER if m in methods]
    return known + [m for m in methods if m not in known]


def group_label(row) -> str:
    """``"G3 features.4"``-style label of a tidy row (``"whole model"`` for group -1)."""
    if int(row["group"]) == -1:
        return "whole model"
    paper = row.get("paper_group", "") or ""
    name = row.get("group_name", "") or str(row["group"])
    return f"{paper} {name}".strip()


def row_layout(n: int):
    """Figure height and row-label step for a heatmap of ``n`` rows: ~12 px a row, 350-900 px high."""
    import math

    height = int(min(900, max(350, 120 + 12 * n)))
    return height, max(1, int(math.ceil(n * 12 / (height - 120))))
