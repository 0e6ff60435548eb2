"""Neuron similarity: the cost or cosine matrix reordered by cluster, and a 2-D embedding with merges."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import TITLE_MARGIN, group_title, record_of, row_layout, to_numpy
from ._plans import source_order, target_axis_title


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similarity_matrix(group_result, kind: str = "cost", features=None, title: Optional[str] = None,
                      model_name: Optional[str] = None, importance: Optional[str] = None, config=None, *,
                      group=None):
    """The recorded cost (or the cosine similarity) matrix, rows reordered by merge cluster.

    Parameters
    ----------
    group_result : GroupResult or PruneResult
        One group's record, or the whole result with ``group=`` (index or name).
    kind : {"cost", "cosine"}
        ``"cost"``: the recorded (n, k) transport cost.  ``"cosine"``: the full (n, n) cosine
        similarity between the neurons' ``features`` (rows and columns in cluster order).
    features : Tensor, shape (n, d), optional
        Channel vectors (:func:`intrafusion_viz.channel_features`); required for ``"cosine"`` (the
        recorded cost is a p-norm distance, possibly to centroids, and does not determine the cosine).
    title : str, optional
    model_name, importance : str, optional
        Named in the default title.
    config : OTConfig, optional
        The prune's settings (names a centroid target on the columns).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` (square, ``scaleanchor``-locked cells for the full (n, n) matrix).
    """
    import plotly.graph_objects as go

    group_result, default_name, default_config = record_of(group_result, group, "similarity_matrix")
    model_name, config = model_name or default_name, config or default_config
    if kind not in ("cost", "cosine"):
        raise ValueError(f"kind must be 'cost' or 'cosine', got {kind!r}")
    order = source_order(group_result)
    kept = to_numpy(group_result.kept).astype(int)
    n = group_result.n
    if kind == "cosine" and features is None:
        raise ValueError("kind='cosine' needs the neurons' vectors: pass features=ifv.channel_features(model, "
                         "group) (the recorded cost gives the cosine only for p=2 with kept-neuron targets)")
    if kind == "cosine":
        x = _unit(to_numpy(features))
        if x.shape[0] != n:
            raise ValueError(f"features must have {n} rows (one per neuron), got shape {x.shape}")
        z = (x @ x.T)[np.ix_(order, order)]
        cols, xtitle = order, "neuron (cluster order)"
        zmin, zmax, scale, bar = -1.0, 1.0, "RdBu", "cosine"
    else:
        if group_result.cost is None:
            raise ValueError("this group was pruned with method='default', which records no cost; "
                             "pass features= (ifv.channel_features(model, group)) with kind='cosine'")
        cost = to_numpy(group_result.cost)
        cols, xtitle = kept, target_axis_title(group_result, config)
        z = cost[order]
        zmin, zmax, scale, bar = 0.0, float(cost.max()) or 1.0, "Viridis_r", "cost"
    ncols = z.shape[1]
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(ncols), y=np.arange(n), colorscale=scale, zmin=zmin, zmax=zmax,
        colorbar=dict(title=bar), customdata=np.stack(np.broadcast_arrays(order[:, None], cols[None, :]), -1),
        hovertemplate=f"neuron %{{customdata[0]}} vs %{{customdata[1]}}<br>{bar} %{{z:.3f}}<extra></extra>"))
    col_every = max(1, int(np.ceil(ncols / 32)))
    height, row_every = row_layout(n)
    what = f"{'Cosine similarity' if bar == 'cosine' else 'Transport cost'} " + (
        "between neurons" if ncols == n and kind == "cosine" and features is not None else "to targets")
    fig.update_layout(
        title=title or group_title(what, group_result, model_name, importance, config),
        height=height, margin=TITLE_MARGIN,
        xaxis=dict(title=xtitle, tickmode="array", tickvals=np.arange(0, ncols, col_every),
                   ticktext=[str(v) for v in cols[::col_every]]),
        yaxis=dict(title="neuron (cluster order)", autorange="reversed", tickmode="array",
                   tickvals=np.arange(0, n, row_every), ticktext=[str(v) for v in order[::row_every]]))
    if ncols == n:  # a square matrix: square cells, whatever the output width
        fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
        fig.update_xaxes(constrain="domain")
    return fig


def _classical_mds(dist: np.ndarray, dims: int = 2) -> np.ndarray:
    m = dist.shape[0]
    j = np.eye(m) - 1.0 / m
    b = -0.5 * j @ (dist ** 2) @ j
    vals, vecs = np.linalg.eigh(b)
    top = np.argsort(vals)[::-1][:dims]
    out = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0))
    if out.shape[1] < dims:
        out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
    return out


def _landmark_mds(cost: np.ndarray, kept: np.ndarray, dims: int = 2) -> np.ndarray:
    """Landmark MDS (de Silva & Tenenbaum): kept neurons are the landmarks, the (n, k) cost the distances."""
    landmark = cost[kept]  # (k, k) distances between kept neurons
    landmark = (landmark + landmark.T) / 2
    k = landmark.shape[0]
    d2 = landmark ** 2
    j = np.eye(k) - 1.0 / k
    b = -0.5 * j @ d2 @ j
    vals, vecs = np.linalg.eigh(b)
    top = np.argsort(vals)[::-1][:dims]
    vals, vecs = np.maximum(vals[top], 1e-12), vecs[:, top]
    pinv = vecs / np.sqrt(vals)  # (k, dims)
    coords = -0.5 * (cost ** 2 - d2.mean(0)[None, :]) @ pinv
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    return coords


def embed_features(features, method: str = "pca") -> np.ndarray:
    """2-D coordinates of neurons from their channel vectors.

    Parameters
    ----------
    features : Tensor or array, shape (n, d)
    method : {"pca", "mds"}
        PCA of the unit-normalised vectors, or classical MDS of their Euclidean distances.

    Returns
    -------
    numpy.ndarray, shape (n, 2)
    """
    x = _unit(to_numpy(features))
    if method == "pca":
        x = x - x.mean(0)
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        out = u[:, :2] * s[:2]
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    if method == "mds":
        sq = (x ** 2).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
        return _classical_mds(dist)
    raise ValueError(f"method must be 'pca' or 'mds', got {method!r}")


def _cluster_marker(assignment: np.ndarray) -> dict:
    """Marker colours: one per merge cluster (cycling a qualitative palette), grey for dropped neurons.

    Given as numbers on a stepped colour scale (step ``i`` is the palette's colour ``i``, the last one
    grey) rather than one colour string per neuron: plotly validates 512 colour strings in ~25 ms,
    on every slider move of a dashboard.
    """
    import plotly.colors

    palette = list(plotly.colors.qualitative.Dark24) + ["#bbbbbb"]
    steps = len(palette)
    values = np.where(assignment >= 0, np.mod(assignment, steps - 1), steps - 1).astype(np.float64) + 0.5
    scale = [[edge / steps, color] for i, color in enumerate(palette) for edge in (i, i + 1)]
    return dict(color=values, colorscale=scale, cmin=0, cmax=steps, showscale=False)


def neuron_embedding(group_result, features=None, method: str = "pca", coords=None,
                     title: Optional[str] = None, model_name: Optional[str] = None,
                     importance: Optional[str] = None, config=None, *, group=None):
    """Neurons in 2-D, kept ones marked, with a line from every neuron to the kept neuron it merges into.

    Parameters
    ----------
    group_result : GroupResult or PruneResult
        One group's record, or the whole result with ``group=``.
    features : Tensor, shape (n, d), optional
        Channel vectors; embedded with ``method``.  Without them the neurons are placed by landmark
        MDS of the recorded (n, k) cost (kept neurons are the landmarks), so nothing is recomputed.
    method : {"pca", "mds"}
    coords : array, shape (n, 2), optional
        Precomputed coordinates (dashboards cache :func:`embed_features`); overrides the above.
    title : str, optional
    model_name, importance : str, optional
        Named in the default title.
    config : OTConfig, optional
        The prune's settings (named in the title).

    Returns
    -------
    plotly.graph_objects.Figure
        Three ``Scatter`` traces: merge lines, all neurons (one colour per merge cluster, i.e. per
        kept neuron they merge into; grey: dropped by default pruning), kept neurons (stars).
    """
    import plotly.graph_objects as go

    group_result, default_name, default_config = record_of(group_result, group, "neuron_embedding")
    model_name, config = model_name or default_name, config or default_config
    n, k = group_result.n, group_result.k
    kept = to_numpy(group_result.kept).astype(int)
    how = method.upper() if features is not None or coords is not None else "landmark MDS of cost"
    if coords is None:
        if features is not None:
            coords = embed_features(features, method)
        elif group_result.cost is not None:
            coords = _landmark_mds(to_numpy(group_result.cost), kept)
        else:
            raise ValueError("default pruning records no cost to embed from; pass features=")
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (n, 2):
        raise ValueError(f"coords must have shape ({n}, 2), got {coords.shape}")
    assignment = to_numpy(group_result.assignment).astype(int)
    scores = to_numpy(group_result.importance)
    # one segment per merged neuron, source -> its kept neuron, separated by NaN (a gap in the line);
    # arrays, not lists: plotly checks a list item by item (30 ms for 512 neurons, on every slider move)
    movers = np.array([i for i, j in enumerate(assignment) if j >= 0 and kept[j] != i], dtype=int)
    segments = np.full((len(movers), 3, 2), np.nan)
    if len(movers):
        segments[:, 0] = coords[movers]
        segments[:, 1] = coords[kept[assignment[movers]]]
    xs, ys = segments[:, :, 0].ravel(), segments[:, :, 1].ravel()
    custom = np.stack([np.arange(n), np.where(assignment >= 0, kept[np.maximum(assignment, 0)], -1), scores], 1)
    lines = go.Scatter(x=xs, y=ys, mode="lines", name="merges into", hoverinfo="skip",
                       line=dict(color="rgba(120,120,120,0.5)", width=1))
    neurons = go.Scatter(
        x=coords[:, 0], y=coords[:, 1], mode="markers",
        name="neuron (colour: its merge cluster)" if group_result.cost is not None else "neuron (grey: dropped)",
        customdata=custom,
        marker=dict(size=8, line=dict(width=0.5, color="white"), **_cluster_marker(assignment)),
        hovertemplate=("neuron %{customdata[0]:.0f} (importance %{customdata[2]:.3g})<br>"
                       "merges into %{customdata[1]:.0f}<extra></extra>"))
    kept_trace = go.Scatter(
        x=coords[kept, 0], y=coords[kept, 1], mode="markers", name="kept", customdata=custom[kept],
        marker=dict(size=14, symbol="star", line=dict(width=1, color="#111111"), **_cluster_marker(np.arange(k))),
        hovertemplate="kept neuron %{customdata[0]:.0f} (importance %{customdata[2]:.3g})<extra></extra>")
    fig = go.Figure([lines, neurons, kept_trace])
    fig.update_layout(title=title or group_title(f"Neurons ({how})", group_result, model_name, importance, config),
                      xaxis_title="component 1", yaxis_title="component 2", height=450, margin=TITLE_MARGIN,
                      legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    return fig
