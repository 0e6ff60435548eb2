"""Shared helpers for the figure modules: tidy tables, tensors to numpy, palettes."""
from __future__ import annotations

from typing import Optional

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
    """Figure height and row-label step for a heatmap of ``n`` rows: 14 px a row (every row named) up to
    900 px high; taller groups name every ``step``-th row, ``step`` odd so that clusters of two (a 50 %
    plan: a kept neuron and the one merged into it) are not all named by their kept neuron."""
    import math

    height = int(min(900, max(380, 140 + 14 * n)))
    # 14 px per labelled row leaves a gap between 11-px tick labels (the plot area is height - ~140 px)
    step = max(1, int(math.ceil(n * 14 / (height - 140))))
    return height, step + 1 if step > 1 and step % 2 == 0 else step


def chance_level(num_classes) -> float:
    """Accuracy (%) of guessing uniformly among ``num_classes`` classes."""
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return 100.0 / num_classes


def method_of(group_result, config=None) -> str:
    """``"default"``, ``"fold"`` or ``"intra-fusion"`` (with the OT settings that change the picture) of a record."""
    method = getattr(group_result, "method", None)
    if method == "fold":
        return "fold"
    if group_result.cost is None:
        return "default"
    if config is None:
        return "intra-fusion"
    extras = [f"{config.solver}" + (f" reg {config.reg:g}" if config.solver == "sinkhorn" else ""), f"p={config.p:g}"]
    if config.target != "most_important":
        extras.append(f"{config.target} targets")
    if config.fusion != "barycentric":
        extras.append(f"{config.fusion} fusion")
    return "intra-fusion (" + ", ".join(extras) + ")"


def record_of(obj, group=None, helper: str = "this figure"):
    """``(group record, model name or None, OTConfig or None)`` from a ``GroupResult``, or a ``PruneResult`` and ``group``.

    A ``PruneResult`` names its model (the class name of ``res.model``); a bare ``GroupResult`` does so
    when it carries a ``model_name`` attribute.  Anything else is refused with what to pass instead.
    """
    if (all(hasattr(obj, a) for a in ("kept", "n", "k")) and (hasattr(obj, "plan") or hasattr(obj, "assignment"))
            and not hasattr(obj, "groups")):  # a GroupResult, a FusedGroup, or a view that reads like one
        return obj, getattr(obj, "model_name", None), None
    if hasattr(obj, "groups") and hasattr(obj, "model") and hasattr(obj, "group"):
        name, config = type(obj.model).__name__, getattr(obj, "config", None)
        if group is not None:
            return obj.group(group), name, config
        if len(obj.groups) == 1:
            return obj.groups[0], name, config
        raise TypeError(f"{helper} draws one group; this PruneResult has {len(obj.groups)}: pass "
                        f"{helper}(res, group=KEY) or {helper}(res.group(KEY)) with KEY one of "
                        f"{[g.index for g in obj.groups][:12]} (index or name)")
    if group is not None:
        raise TypeError(f"{helper}(..., group=) needs a PruneResult, got {type(obj).__name__}")
    raise TypeError(f"{helper} needs one group's record from ifv.prune: res.groups[i] or res.group(key) "
                    f"(or the PruneResult with group=); got a {type(obj).__name__}")


def model_name_of(model) -> Optional[str]:
    """The class name of a model (``None`` for ``None``)."""
    return None if model is None else type(model).__name__


def group_title(what: str, group_result, model_name=None, importance=None, config=None) -> str:
    """A two-line figure title naming the model, group, method, importance and sparsity.

    ``"<what> · <model> · G1 conv2 (n=32)"`` over
    ``"<method> · importance <importance> · sparsity 0.50: keeps 16 of 32"``.
    """
    head = " · ".join(x for x in (what, model_name, f"G{group_result.paper_index} {group_result.name}") if x)
    details = [method_of(group_result, config)]
    if importance:
        details.append(f"importance {importance}")
    details.append(f"sparsity {group_result.sparsity:.2f}: keeps {group_result.k} of {group_result.n}")
    return f"{head}<br><sup>{' · '.join(details)}</sup>"


def records_title(what: str, df, model_name=None, extra=None) -> str:
    """A two-line title for a figure of tidy records: what, model; importance(s), extra."""
    importances = [i for i in dict.fromkeys(df["importance"].astype(str)) if i]
    if model_name is None and "model" in df.columns:
        names = [m for m in dict.fromkeys(df["model"].astype(str)) if m and m != "nan"]
        model_name = ", ".join(names) or None
    head = " · ".join(x for x in (what, model_name) if x)
    details = []
    if importances:
        details.append("importance " + ", ".join(importances))
    if extra:
        details.append(extra)
    return head + (f"<br><sup>{' · '.join(details)}</sup>" if details else "")


def chance_from(df, num_classes=None):
    """Chance level (%) from ``num_classes`` or a ``num_classes`` column of the records (else None)."""
    if num_classes is None and "num_classes" in df.columns and df["num_classes"].notna().any():
        num_classes = int(df["num_classes"].dropna().iloc[0])
    return None if num_classes is None else chance_level(num_classes)


# Figures with a two-line title need room above the plot; a compact margin elsewhere.
TITLE_MARGIN = dict(t=80, l=60, r=20, b=50)
