"""Which neurons merge: each kept filter beside the filters merged into it and the merged result."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import TITLE_MARGIN, group_title, model_name_of, record_of, to_numpy


def _producer(group_result, model):
    """The group's first conv/linear producing its channels, and its BatchNorm (or None)."""
    if not hasattr(model, "named_modules"):
        raise TypeError(f"the original model (an nn.Module, before pruning) is needed to draw its filters; "
                        f"got a {type(model).__name__}")
    modules = dict(model.named_modules())
    out = next((m for m in group_result.members if m.role == "out"), None)
    if out is None:
        raise ValueError(f"group {group_result.name!r} has no producing conv/linear layer to draw")
    norm = next((m for m in group_result.members if m.role == "norm" and m.fold_from == out.name), None)
    if out.name not in modules or getattr(modules[out.name], "weight", None) is None:
        raise ValueError(f"layer {out.name!r} of group {group_result.name!r} is not in the given model: pass the "
                         "original model (the one ifv.prune was given), not the pruned one")
    layer = modules[out.name]
    if layer.weight.shape[out.dim] < max(out.local_idxs, default=-1) + 1:
        raise ValueError(f"layer {out.name!r} has {layer.weight.shape[out.dim]} channels, fewer than the group's "
                         f"{group_result.n}: pass the original model (before pruning), not the pruned one")
    return out, layer, (modules[norm.name] if norm is not None else None)


def producer_rows(group_result, model) -> np.ndarray:
    """Each neuron's producing weights, BatchNorm scale folded in when the group has one.

    Returns
    -------
    numpy.ndarray, shape (n, *weight.shape[1:])
        Row ``i`` is neuron ``i``'s filter (conv: ``(in_channels, kh, kw)``; linear: ``(in_features,)``).
    """
    group_result = record_of(group_result, None, "producer_rows")[0]
    member, layer, bn = _producer(group_result, model)
    w = to_numpy(layer.weight)
    if bn is not None and bn.running_var is not None:
        scale = to_numpy(bn.weight) if bn.affine else 1.0
        scale = scale / np.sqrt(to_numpy(bn.running_var) + bn.eps)
        w = w * scale.reshape([-1] + [1] * (w.ndim - 1))
    w = np.moveaxis(w, member.dim, 0)
    local = np.asarray(member.local_idxs)
    root = np.asarray(member.root_idxs)
    rows = np.empty((group_result.n,) + w.shape[1:])
    rows[root] = w[local]
    return rows


def _clusters(group_result, max_clusters: int, max_sources: int):
    plan = to_numpy(group_result.plan)
    kept = to_numpy(group_result.kept).astype(int)
    out_map = to_numpy(group_result.out_map)
    # A neuron belongs to the kept neuron it sends most mass to (soft Sinkhorn plans spread a little everywhere).
    assignment = to_numpy(group_result.assignment).astype(int)
    sizes = np.bincount(assignment[assignment >= 0], minlength=len(kept))
    chosen = np.argsort(-sizes, kind="stable")[:max_clusters]
    clusters = []
    for j in sorted(chosen):
        sources = [int(i) for i in np.argsort(-plan[:, j], kind="stable") if assignment[i] == j and i != kept[j]]
        clusters.append((j, int(kept[j]), sources[:max_sources], len(sources)))
    return clusters, out_map


def _tile(filt: np.ndarray, lo: float, hi: float) -> np.ndarray:
    img = np.clip((filt - lo) / (hi - lo + 1e-12), 0, 1)
    img = np.moveaxis(img, 0, -1)  # (kh, kw, c)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return (img * 255).astype(np.uint8)


def merge_gallery(group_result, original_model, max_clusters: int = 16, max_sources: int = 6,
                  title: Optional[str] = None, model_name: Optional[str] = None,
                  importance: Optional[str] = None, config=None, *, group=None):
    """Each kept neuron beside the neurons merged into it, and the merged result.

    For convs whose input has 1 or 3 channels the filters are image tiles (one ``Image`` mosaic:
    a row per kept neuron: kept filter | merged filters | merged result); for other layers the
    same as bars of weight norms.  BatchNorm scale is folded into the filters, as the merge does.

    Parameters
    ----------
    group_result : GroupResult
        Uses ``plan``, ``kept``, ``out_map`` (the merged filter is ``out_map[:, j] @ filters``).
    original_model : nn.Module
        The model before pruning (read only).
    max_clusters : int
        Draw the kept neurons with the most merged sources, at most this many.
    max_sources : int
        At most this many merged sources per kept neuron (largest mass first).
    title : str, optional
    model_name, importance : str, optional
        Named in the default title.
    config : OTConfig, optional
        The prune's settings (named in the title).

    Returns
    -------
    plotly.graph_objects.Figure
        Image mode: an ``Image`` trace plus an invisible ``Scatter`` for the hover.  Bar mode: three
        ``Bar`` traces (kept, merged into it, merged result) on a two-level category axis.
    """
    import plotly.graph_objects as go

    group_result, _, default_config = record_of(group_result, group, "merge_gallery")
    model_name, config = model_name or model_name_of(original_model), config or default_config
    rows = producer_rows(group_result, original_model)
    clusters, out_map = _clusters(group_result, max_clusters, max_sources)
    merged = {j: out_map[:, j] @ rows.reshape(len(rows), -1) for j, _, _, _ in clusters}
    is_image = rows.ndim == 4 and rows.shape[1] in (1, 3)
    shown = _shown_note(group_result, clusters, max_sources)
    if is_image:
        return _image_gallery(group_result, rows, clusters, merged, title or group_title(
            "Which filters merge", group_result, model_name, importance, config) + shown)
    flat = rows.reshape(len(rows), -1)
    norms = np.linalg.norm(flat, axis=1)
    traces = {"kept": ([], [], []), "merged in": ([], [], []), "merged result": ([], [], [])}
    for j, kept_i, sources, total in clusters:
        cluster = f"kept {kept_i}"
        entries = [("kept", str(kept_i), norms[kept_i])]
        entries += [("merged in", str(i), norms[i]) for i in sources]
        entries += [("merged result", "result", float(np.linalg.norm(merged[j])))]
        for what, name, value in entries:
            outer, inner, ys = traces[what]
            outer.append(cluster)
            inner.append(name)
            ys.append(value)
    colors = {"kept": "#111111", "merged in": "#9aa5c8", "merged result": "#636EFA"}
    fig = go.Figure([go.Bar(x=[outer, inner], y=ys, name=what, marker_color=colors[what],
                            hovertemplate=f"{what} %{{x}}<br>weight norm %{{y:.3g}}<extra></extra>")
                     for what, (outer, inner, ys) in traces.items()])
    fig.update_layout(title=title or group_title("Weight norms: kept, merged in, result", group_result,
                                                 model_name, importance, config) + shown,
                      barmode="group", margin=TITLE_MARGIN, xaxis_title="kept neuron / neuron",
                      yaxis_title="weight norm (BatchNorm folded)", height=420)
    return fig


def _shown_note(group_result, clusters, max_sources: int) -> str:
    """A line under the title saying which clusters and sources are drawn when not all of them are."""
    parts = []
    if len(clusters) < group_result.k:
        parts.append(f"the {len(clusters)} of {group_result.k} kept neurons that absorb the most")
    if any(total > max_sources for _, _, _, total in clusters):
        parts.append(f"at most {max_sources} merged neurons each (largest mass first)")
    return ("<br><sup>showing " + "; ".join(parts) + "</sup>") if parts else ""


# The width a figure gets in a notebook on a 1366 px laptop screen with JupyterLab's file browser open.
LAPTOP_PLOT_WIDTH = 880
TILE_PX = 40  # a filter tile at least this wide on that screen


def _grid_columns(n_blocks: int, block_tiles: int) -> int:
    """Blocks per row: as many as fit the laptop width with tiles of about ``TILE_PX``."""
    return int(max(1, min(n_blocks, LAPTOP_PLOT_WIDTH // (block_tiles * TILE_PX))))


def _image_gallery(group_result, rows, clusters, merged, title: str):
    """Filters as image tiles: per kept neuron a block (kept | merged in | result), blocks in a grid."""
    import plotly.graph_objects as go

    c, kh, kw = rows.shape[1:]
    lo, hi = float(rows.min()), float(rows.max())
    width = max([len(sources) for _, _, sources, _ in clusters] + [0]) + 2  # tiles per block
    cols = _grid_columns(len(clusters), width + 1)
    grid_rows = -(-len(clusters) // cols)
    gap = 1
    tile_w, tile_h = kw + gap, kh + gap
    label_h = max(2, kh // 2)  # a band above each block row for its labels
    block_w = width * tile_w + tile_w  # one empty tile between blocks
    row_h = label_h + tile_h
    canvas = np.full((grid_rows * row_h, cols * block_w, 3), 255, dtype=np.uint8)
    plan = to_numpy(group_result.plan)
    hx, hy, htext, annotations = [], [], [], []
    for b, (j, kept_i, sources, total) in enumerate(clusters):
        r, col0 = divmod(b, cols)
        y0 = r * row_h + label_h
        tiles = [(kept_i, rows[kept_i], "kept")] + [(i, rows[i], "merged in") for i in sources]
        tiles += [(None, merged[j].reshape(c, kh, kw), "merged result")]
        for t, (idx, filt, what) in enumerate(tiles):
            t = width - 1 if what == "merged result" else t
            x0 = col0 * block_w + t * tile_w
            canvas[y0:y0 + kh, x0:x0 + kw] = _tile(filt, lo, hi)
            hx.append(x0 + kw / 2 - 0.5)
            hy.append(y0 + kh / 2 - 0.5)
            mass = "" if idx is None else f"<br>mass {plan[idx, j]:.3g}"
            htext.append(f"{what} {'' if idx is None else 'neuron ' + str(idx)}<br>"
                         f"cluster of kept neuron {kept_i} ({total} merged in){mass}")
        annotations.append(dict(x=col0 * block_w - 0.5, y=y0 - 0.6, xref="x", yref="y", xanchor="left",
                                yanchor="bottom", showarrow=False, font=dict(size=10, color="#333333"),
                                text=f"kept {kept_i} + {total} \u2192 result"))
    fig = go.Figure([go.Image(z=canvas, hoverinfo="skip"),
                     go.Scatter(x=hx, y=hy, mode="markers", marker=dict(size=14, opacity=0),
                                text=htext, hovertemplate="%{text}<extra></extra>", showlegend=False)])
    fig.update_layout(
        # the image keeps square pixels: a height that makes it fill the laptop width, not a third of it
        title=title, height=int(min(1100, max(300, 160 + LAPTOP_PLOT_WIDTH * canvas.shape[0] / canvas.shape[1]))),
        margin=dict(TITLE_MARGIN, t=110, l=20),
        annotations=annotations, plot_bgcolor="white",
        xaxis=dict(title="per kept neuron: its filter | the filters merged into it (largest mass first) | "
                         "the merged result", side="bottom", showticklabels=False, showgrid=False, zeroline=False),
        yaxis=dict(showticklabels=False, showgrid=False, zeroline=False))
    return fig
