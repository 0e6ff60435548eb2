"""Fusion in the training loop: accuracy against training time per pipeline, and two models' neurons side by side."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import to_numpy

PIPELINE_COLORS = {
    "baseline": "#444444",
    "paf": "#00CC96",
    "fap": "#636EFA",
    "fap-vanilla": "#EF553B",
}
PIPELINE_LABELS = {
    "baseline": "baseline (train all, prune, fine-tune)",
    "paf": "PaF (prune each, fuse)",
    "fap": "FaP (fuse, prune)",
    "fap-vanilla": "FaP, unaligned averaging",
}
_X = {"train_time_s": "training time (s, parallel halves counted once)",
      "train_time_sum_s": "training time (s, halves added up)",
      "train_cpu_s": "training CPU time (s, parallel halves counted once)",
      "wall_time_s": "wall-clock time (s, parallel halves counted once, fuse and prune included)",
      "epochs": "epochs (cumulative; parallel halves counted once)",
      "samples_seen": "training samples seen (parallel halves counted once)"}


def _describe(df) -> str:
    parts = []
    for col, fmt in (("model", "{}"), ("data", "{}"), ("sparsity", "sparsity {:.0%}")):
        if col in df.columns:
            values = [v for v in df[col].dropna().unique() if v != ""]
            if len(values) == 1:
                parts.append(fmt.format(values[0]))
    if "seed" in df.columns and df["seed"].nunique() > 1:
        parts.append(f"mean of {df['seed'].nunique()} seeds")
    return ", ".join(parts)


def pipeline_timeline(records, x: str = "train_time_s", title: Optional[str] = None):
    """Accuracy after every stage against training time (or epochs), one line per pipeline.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Rows of :func:`intrafusion_viz.fusion.pipelines.compare_pipelines` (columns ``pipeline``, ``stage``,
        ``step``, ``accuracy`` and ``x``; optional ``model``, ``data``, ``sparsity``, ``seed``).
        Several seeds are averaged per (pipeline, step).
    x : {"train_time_s", "train_time_sum_s", "train_cpu_s", "wall_time_s", "epochs", "samples_seen"}
    title : str, optional
        Default names the model, the data and the sparsity found in ``records``.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` (lines + markers labelled with the stage) per pipeline; hover shows the stage,
        accuracy, time, epochs and parameters.
    """
    import pandas as pd
    import plotly.graph_objects as go

    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    for col in ("pipeline", "stage", "step", "accuracy", x):
        if col not in df.columns:
            raise ValueError(f"records need a {col!r} column; got {list(df.columns)}")
    if x not in _X:
        raise ValueError(f"x must be one of {', '.join(_X)}; got {x!r}")
    extra = [c for c in ("train_time_s", "epochs", "params") if c in df.columns and c != x]
    agg = df.groupby(["pipeline", "step", "stage"], sort=False).agg(
        accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), xval=(x, "mean"),
        **{c: (c, "mean") for c in extra}).reset_index()
    fig = go.Figure()
    order = [p for p in PIPELINE_COLORS if p in set(agg.pipeline)] + [p for p in agg.pipeline.unique()
                                                                      if p not in PIPELINE_COLORS]
    for name in order:
        part = agg[agg.pipeline == name].sort_values("step")
        custom = np.stack([part[c].to_numpy(dtype=float) if c in part else np.full(len(part), np.nan)
                           for c in ("train_time_s", "epochs", "params")], 1)
        fig.add_trace(go.Scatter(
            x=part.xval, y=part.accuracy, mode="lines+markers+text", name=PIPELINE_LABELS.get(name, name),
            text=part.stage, textposition="top center", textfont=dict(size=9),
            error_y=dict(array=part.accuracy_std.fillna(0), thickness=1, width=3),
            line=dict(color=PIPELINE_COLORS.get(name)), marker=dict(size=8), customdata=custom,
            hovertext=part.stage,
            hovertemplate=("%{hovertext}<br>accuracy %{y:.2f} %<br>x %{x:.3g}<br>training time "
                           "%{customdata[0]:.1f} s, epochs %{customdata[1]:.0f}, params %{customdata[2]:,.0f}"
                           "<extra>" + name + "</extra>")))
    what = _describe(df)
    fig.update_layout(
        title=title or f"Fusion in the training loop: accuracy after every stage<br><sup>{what}</sup>",
        xaxis_title=_X[x], yaxis_title="test accuracy (%)", height=500, legend=dict(orientation="h", y=-0.2))
    return fig


class _JointView:
    """Both models' neurons as one set of n_B + n_A "sources", model A's neurons the "kept" ones."""

    def __init__(self, record):
        n, k = record.n, record.k
        plan = to_numpy(record.plan)
        self.index, self.paper_index, self.name = record.index, record.paper_index, record.name
        self.n, self.k = n + k, k
        self.kept = np.arange(n, n + k)
        self.importance = np.ones(n + k)
        self.cost = None
        self.assignment = np.concatenate([plan.argmax(1), np.arange(k)])


def fusion_embedding(record, method: str = "pca", title: Optional[str] = None):
    """Model B's neurons and model A's in one 2-D picture, a line from each of B's to the A neuron it is aligned to.

    Parameters
    ----------
    record : FusedGroup
        One of :func:`intrafusion_viz.fuse`'s ``.groups`` (needs the compared vectors
        ``features_b``, ``features_a``; ``method="vanilla"`` records none).
    method : {"pca", "mds"}
        Embedding of the concatenated vectors (:func:`embed_features`).
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        :func:`neuron_embedding`'s three traces: alignment lines, all neurons (B's and A's, coloured
        by A's neuron), A's neurons as stars.
    """
    from ._similarity import embed_features, neuron_embedding

    if getattr(record, "features_a", None) is None or getattr(record, "features_b", None) is None:
        raise ValueError("this record holds no compared vectors (method='vanilla' compares none); fuse with "
                         "method='ot' to draw the alignment")
    view = _JointView(record)
    feats = np.concatenate([to_numpy(record.features_b), to_numpy(record.features_a)], 0)
    coords = embed_features(feats, method)
    fig = neuron_embedding(view, coords=coords, title=title or (
        f"G{record.paper_index} {record.name}: model B's {record.n} neurons aligned onto model A's {record.k} "
        f"({method.upper()} of the compared vectors; stars: model A)"))
    return fig
