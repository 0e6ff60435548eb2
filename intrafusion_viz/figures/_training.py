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
            text=part.stage, textposition="top center", textfont=dict(size=11),
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


FINETUNE_COLORS = {"default": "#EF553B", "IF (paper)": "#00CC96", "IF (data-free)": "#636EFA", "fold": "#AB63FA"}


def finetune_figure(records, model_name: str = "", importance: str = "", max_epoch: Optional[int] = None,
                    sparsities=None, title: Optional[str] = None):
    """Accuracy against fine-tuning epochs (0 = right after pruning), one line per method, a panel per sparsity.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Rows of :func:`intrafusion_viz.finetune` (``epoch``, ``accuracy``, ``label`` or ``method``,
        ``sparsity``; optional ``seed`` and ``unpruned``), e.g. ``benchmarks/finetune_recovery.py``'s
        ``records.csv``.  Several seeds: the mean, with the min-max range as error bars.
    model_name, importance : str
        Named in the title.
    max_epoch : int, optional
        Draw epochs ``0..max_epoch`` only (a slider over epochs).
    sparsities : list of float, optional
        Panels to draw (default every sparsity in ``records``).
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter`` per (sparsity, method); a dashed line at the unpruned accuracy when known.
    """
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    if "label" not in df.columns or (df["label"].fillna("") == "").all():
        df["label"] = df.get("method", "")
    for col in ("epoch", "accuracy", "sparsity"):
        if col not in df.columns:
            raise ValueError(f"records need a {col!r} column (finetune()'s records); got {list(df.columns)}")
    if max_epoch is not None:
        df = df[df.epoch <= max_epoch]
    levels = sorted(df.sparsity.unique()) if sparsities is None else list(sparsities)
    fig = make_subplots(rows=1, cols=len(levels), shared_yaxes=True,
                        subplot_titles=[f"sparsity {s:.0%}" for s in levels])
    labels = [m for m in FINETUNE_COLORS if m in set(df.label)] + [m for m in df.label.unique()
                                                                   if m not in FINETUNE_COLORS]
    for col, s in enumerate(levels, start=1):
        part = df[(df.sparsity - s).abs() < 1e-9]
        for label in labels:
            curve = part[part.label == label].groupby("epoch").accuracy.agg(["mean", "min", "max"]).reset_index()
            if not len(curve):
                continue
            fig.add_trace(go.Scatter(
                x=curve.epoch, y=curve["mean"], mode="lines+markers", name=label, legendgroup=label,
                showlegend=col == 1, line=dict(color=FINETUNE_COLORS.get(label)),
                error_y=dict(type="data", symmetric=False, array=curve["max"] - curve["mean"],
                             arrayminus=curve["mean"] - curve["min"], thickness=1, width=3),
                hovertemplate=f"{label}, sparsity {s:.0%}<br>epoch %{{x}}: %{{y:.2f}} %<extra></extra>"), 1, col)
        if "unpruned" in part.columns and part.unpruned.notna().any():
            fig.add_hline(y=float(part.unpruned.mean()), line=dict(color="#444444", dash="dash"), row=1, col=col,
                          annotation_text="unpruned", annotation_position="bottom right")
    seeds = df["seed"].nunique() if "seed" in df.columns else 1
    what = ", ".join(p for p in (model_name, "whole model", importance and f"importance {importance}",
                                 "sparsity " + " / ".join(f"{s:.0%}" for s in levels),
                                 f"mean of {seeds} seeds (bars: min-max)" if seeds > 1 else "") if p)
    fig.update_layout(title=title or f"Recovery with fine-tuning: accuracy after each epoch<br><sup>{what}; "
                      f"methods: {', '.join(labels)}</sup>", height=460, margin=dict(t=100),
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="fine-tuning epochs", dtick=1)
    fig.update_yaxes(title_text="test accuracy (%)", col=1)
    return fig


_STAGE_COLORS = {"train": "#7f7f7f", "train halves": "#7f7f7f", "prune": "#EF553B", "prune each": "#EF553B",
                 "fuse": "#636EFA", "fine-tune": "#00CC96", "fine-tune fused": "#19D3F3", "fine-tune each": "#00CC96"}


def pipeline_gantt(records, title: Optional[str] = None):
    """Every pipeline's stages on one wall-clock axis; the parallel halves as two bars side by side in time.

    Parameters
    ----------
    records : pandas.DataFrame or list of dict
        Rows of :func:`intrafusion_viz.fusion.pipelines.compare_pipelines` (columns ``pipeline``, ``stage``,
        ``step``, ``stage_start_s``, ``stage_time_s``, ``stage_model_times_s``, ``accuracy``; one seed).
    title : str, optional
        Default names the model, the data and the sparsity, and each pipeline's time against the baseline's.

    Returns
    -------
    plotly.graph_objects.Figure
        Horizontal bars (``Bar`` traces, one per stage kind): a row per pipeline, two rows ("model A",
        "model B") where the halves run in parallel; the final accuracy and the time relative to the
        baseline written after each pipeline's last bar.
    """
    import pandas as pd
    import plotly.graph_objects as go

    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    for col in ("pipeline", "stage", "step", "stage_start_s", "stage_time_s", "accuracy"):
        if col not in df.columns:
            raise ValueError(f"records need a {col!r} column (compare_pipelines' records); got {list(df.columns)}")
    if "seed" in df.columns and df["seed"].nunique() > 1:
        raise ValueError("pipeline_gantt draws one run: pass the records of one seed")
    order = [p for p in PIPELINE_COLORS if p in set(df.pipeline)] + [p for p in df.pipeline.unique()
                                                                   if p not in PIPELINE_COLORS]
    bars = []  # (row label, stage, start, duration, accuracy)
    rows = []
    for name in order:
        part = df[df.pipeline == name].sort_values("step")
        label = PIPELINE_LABELS.get(name, name).split(" (")[0]
        parallel = part.stage_model_times_s.astype(str).str.contains("/") if "stage_model_times_s" in part else \
            pd.Series(False, index=part.index)
        halves = bool(parallel.any())
        names = [f"{label} · model A", f"{label} · model B"] if halves else []
        rows += names + [label]
        for (_, r), par in zip(part.iterrows(), parallel):
            if par:
                for row, t in zip(names, str(r.stage_model_times_s).split(" / ")):
                    bars.append((row, r.stage, r.stage_start_s, float(t), r.accuracy))
            else:
                bars.append((label, r.stage, r.stage_start_s, r.stage_time_s, r.accuracy))
    fig = go.Figure()
    bdf = pd.DataFrame(bars, columns=["row", "stage", "start", "duration", "accuracy"])
    for stage in dict.fromkeys(bdf.stage):
        part = bdf[bdf.stage == stage]
        fig.add_trace(go.Bar(
            y=part.row, x=part.duration, base=part.start, orientation="h", name=stage,
            marker=dict(color=_STAGE_COLORS.get(stage, "#BAB0AC"), line=dict(color="white", width=1)),
            text=[stage if d > 0 else "" for d in part.duration], textposition="inside", insidetextanchor="middle",
            constraintext="both", customdata=np.stack([part.start, part.start + part.duration, part.accuracy], 1),
            hovertemplate=("%{y}: " + stage + "<br>%{customdata[0]:.2f} s to %{customdata[1]:.2f} s<br>"
                           "accuracy after it %{customdata[2]:.2f} %<extra></extra>")))
    base_end = None
    ends = {}
    for name in order:
        part = df[df.pipeline == name].sort_values("step")
        end = float(part.stage_start_s.iloc[-1] + part.stage_time_s.iloc[-1])
        ends[name] = (end, float(part.accuracy.iloc[-1]))
        if name == "baseline":
            base_end = end
    for name, (end, acc) in ends.items():
        label = PIPELINE_LABELS.get(name, name).split(" (")[0]
        ratio = "" if base_end is None or name == "baseline" or end <= 0 else (
            f", {base_end / end:.2f}x faster" if end < base_end else f", {end / base_end:.2f}x slower")
        fig.add_annotation(x=end, y=label, text=f" {acc:.1f} %{ratio}", showarrow=False, xanchor="left",
                           font=dict(size=12))
    what = _describe(df)
    longest = max(e for e, _ in ends.values()) if ends else 1.0
    fig.update_layout(
        title=title or f"Fusion in the training loop: every stage on one time axis<br><sup>{what}; parallel halves "
                       "side by side; final accuracy and time against the baseline at the right</sup>",
        barmode="overlay", height=160 + 34 * len(rows), margin=dict(l=10, r=10, t=90, b=40),
        xaxis=dict(title="wall-clock seconds (warmed up; parallel halves counted once)", range=[0, longest * 1.35]),
        yaxis=dict(categoryorder="array", categoryarray=list(reversed(rows)), automargin=True),
        legend=dict(orientation="h", y=-0.25, title_text="stage"), uniformtext=dict(minsize=9, mode="hide"))
    return fig


def fusion_plan(record, title: Optional[str] = None):
    """A fusion plan as a heatmap with axes that say whose neurons they are (rows: model B's, columns: model A's).

    Parameters
    ----------
    record : FusedGroup
        One of :func:`intrafusion_viz.fuse`'s ``.groups``.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        :func:`plan_heatmap` of the record, axes retitled.
    """
    from ._plans import plan_heatmap

    where = f"G{record.paper_index} {record.name}" if record.paper_index else f"group {record.index} ({record.name})"
    fig = plan_heatmap(record, title=title or (
        f"{where}: fusion plan, model B's {record.n} neurons (rows) onto model A's "
        f"{record.k} (columns)"))
    fig.update_xaxes(title_text=f"model A's neurons ({record.k})")
    fig.update_yaxes(title_text=f"model B's neurons ({record.n}, by the A neuron they join)")
    return fig
