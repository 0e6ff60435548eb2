"""Group map: the model's layers against its coupled channel groups, and what pruning did to each group.

One row per layer (forward order), one column per group.  A marker says the layer takes part in the group
and how (produces its channels, consumes them, normalises them, ...); a layer in two columns joins two
groups (its outputs in one, its inputs in the other).  A group with several producing layers is a
residual stream: the producers add into the same channels, so they are pruned together.  The colour
says what happened to the group: merged, dropped, skipped (with the reason) or not pruned.
"""
from __future__ import annotations

from typing import Optional

from ._common import TITLE_MARGIN

STATUS_COLORS = {"merged": "#636EFA", "merged (fold)": "#AB63FA", "dropped": "#EF553B",
                 "skipped": "#7f7f7f", "not pruned": "#c8c8c8", "kept all": "#00CC96"}
ROLE_SYMBOLS = {"out": "square", "in": "circle", "norm": "diamond", "depthwise": "hexagon",
                "affine": "diamond-tall", "grouped": "hexagram", "shift": "cross", "scale": "x",
                "other": "triangle-up"}
ROLE_WORDS = {"out": "produces the channels", "in": "consumes them", "norm": "normalises them (BatchNorm)",
              "depthwise": "depthwise conv on them", "affine": "per-channel scale/shift", "grouped": "grouped conv",
              "shift": "added parameter", "scale": "multiplying parameter", "other": "other layer"}


def _as_rows(groups) -> list:
    """Plain dict rows (index, paper_group, name, size, mergeable, reason, members) from Groups or rows."""
    rows = []
    for g in groups:
        if isinstance(g, dict):
            rows.append(g)
        elif hasattr(g, "members") and hasattr(g, "size"):
            rows.append(dict(index=g.index, paper_group=f"G{g.paper_index}", name=g.name, size=g.size,
                             mergeable=bool(g.mergeable), reason=g.unmergeable_reason or "",
                             members=[[m.name, m.role, m.layer_type] for m in g.members]))
        else:
            raise TypeError("group_map needs the groups from ifv.find_groups(model, x) (or the rows "
                            f"`intrafusion-viz prune` stores); got a {type(g).__name__} in the list")
    return rows


def _outcomes(result) -> tuple:
    """``({group index: (k, status)}, {group index: reason})`` from a PruneResult or a stored CLI record."""
    if result is None:
        return {}, {}
    if isinstance(result, dict):
        pruned = [(p["index"], p["n"], p["k"], p.get("method", ""), p.get("has_cost", True)) for p in result["pruned"]]
        skipped, method = result.get("skipped", []), result.get("method", "")
    else:
        pruned = [(g.index, g.n, g.k, g.method, result.method != "default") for g in result.groups]
        skipped, method = result.skipped, result.method
    kept = {}
    for index, n, k, group_method, merged in pruned:
        if k == n:
            status = "kept all"
        elif method == "fold" or group_method == "fold":
            status = "merged (fold)"
        else:
            status = "merged" if merged and method != "default" else "dropped"
        kept[index] = (k, status)
    return kept, {int(i): str(reason) for i, _, reason in skipped}


def group_map(groups, result=None, model_name: Optional[str] = None, title: Optional[str] = None,
              layer_order=None, max_layers: int = 120, width: Optional[int] = None):
    """Which layers share channels, and what pruning kept of each group.

    Parameters
    ----------
    groups : list of Group, or a stored ``intrafusion-viz prune`` record (dict)
        ``ifv.find_groups(model, x)``; a record brings its own groups, result and layer order.
    result : PruneResult, optional
        What :func:`intrafusion_viz.prune` did: kept counts and merged / dropped / skipped per group.
    model_name : str, optional
        Named in the title; default the model's class name.
    layer_order : list of str, optional
        Layer names in forward order; default the order of ``model.named_modules()``.
    max_layers : int
        Draw at most this many layers (the first ones); the title says when some are left out.
    width : int, optional
        Figure width in px; default autosize (fits a 1366 px laptop screen).

    Returns
    -------
    plotly.graph_objects.Figure
        One scatter trace per status; ``customdata`` of each point is ``(layer, group index)``.
    """
    import plotly.graph_objects as go

    if isinstance(groups, dict) and "groups" in groups:  # a stored CLI record
        record = groups
        result = record if result is None else result
        layer_order = layer_order or record.get("layer_order")
        model_name = model_name or record.get("model")
        groups = record["groups"]
    if hasattr(groups, "groups") and hasattr(groups, "model"):
        raise TypeError("group_map takes the groups (ifv.find_groups(model, x)) and the PruneResult as "
                        "result=: group_map(ifv.find_groups(model, x), result=res)")
    if groups is None or isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise TypeError(f"group_map needs a list of groups from ifv.find_groups(model, x); got {type(groups).__name__}")
    source_groups = list(groups)
    rows = _as_rows(source_groups)
    if not rows:
        raise ValueError("group_map got no groups: the model has no prunable coupled channels")
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise ValueError(f"max_layers must be a positive int, got {max_layers!r}")
    if layer_order is None and hasattr(source_groups[0], "model"):
        layer_order = [name for name, _ in source_groups[0].model.named_modules()]
    if model_name is None and hasattr(source_groups[0], "model"):
        model_name = type(source_groups[0].model).__name__
    kept, skipped = _outcomes(result)

    seen = list(dict.fromkeys(m[0] for r in rows for m in r["members"]))
    position = {name: i for i, name in enumerate(layer_order or [])}
    layers = sorted(seen, key=lambda n: (position.get(n, len(position)), seen.index(n)))
    dropped_layers = max(0, len(layers) - max_layers)
    layers = layers[:max_layers]
    shown = set(layers)

    columns, points = [], {}
    for col, r in enumerate(rows):
        k, status = kept.get(r["index"], (None, "skipped" if r["index"] in skipped else "not pruned"))
        producers = sum(1 for m in r["members"] if m[1] == "out")
        label = f"{r['paper_group']}<br>{k if k is not None else r['size']}/{r['size']}"
        columns.append(label)
        reason = skipped.get(r["index"]) or ("" if r.get("mergeable", True) else r.get("reason", ""))
        for name, role, layer_type in r["members"]:
            if name not in shown:
                continue
            hover = (f"<b>{name}</b> ({layer_type})<br>{ROLE_WORDS.get(role, role)} of group {r['index']} "
                     f"{r['paper_group']} <i>{r['name']}</i><br>{r['size']} channels"
                     + (f", keeps {k}" if k is not None else "") + f" · {status}"
                     + (f"<br>residual stream: {producers} layers add into these channels" if producers > 1 else "")
                     + (f"<br>{reason}" if reason else ""))
            points.setdefault(status, []).append((col, name, role, hover, r["index"]))

    fig = go.Figure()
    for status in STATUS_COLORS:
        pts = points.get(status)
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[columns[p[0]] for p in pts], y=[p[1] for p in pts], mode="markers", name=status,
            marker=dict(color=STATUS_COLORS[status], size=9, symbol=[ROLE_SYMBOLS.get(p[2], "circle") for p in pts],
                        line=dict(width=0.5, color="#333333")),
            customdata=[[p[1], p[4]] for p in pts], hovertext=[p[3] for p in pts], hoverinfo="text"))
    for role, symbol in ROLE_SYMBOLS.items():  # a legend of shapes (no data)
        if any(m[1] == role for r in rows for m in r["members"]):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{role}: {ROLE_WORDS[role]}",
                                     marker=dict(symbol=symbol, color="white", size=9, line=dict(width=1, color="#333")),
                                     legendgroup="roles", legendgrouptitle_text="layer's part"))
    n_rows = len(layers)
    height = int(min(2400, max(420, 150 + 13 * n_rows)))
    more = f" · first {len(layers)} of {len(layers) + dropped_layers} layers" if dropped_layers else ""
    if title is None:
        head = " · ".join(x for x in ("Group map", model_name) if x)
        counts = {}
        for _, status in kept.values():
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{v} {s}" for s, v in counts.items()) or "nothing pruned yet"
        if skipped:
            summary += f", {len(skipped)} skipped"
        title = (f"{head}<br><sup>{len(rows)} coupled groups over {len(layers) + dropped_layers} layers · "
                 f"{summary}{more}</sup>")
    fig.update_layout(
        title=title, height=height, width=width, margin=dict(TITLE_MARGIN, l=10, r=10, t=90),
        xaxis=dict(title="coupled group (paper label, kept/channels)", type="category",
                   categoryorder="array", categoryarray=columns, tickangle=0, side="top",
                   showgrid=True, gridcolor="#eeeeee", tickfont=dict(size=10)),
        yaxis=dict(type="category", categoryorder="array", categoryarray=layers, autorange="reversed",
                   automargin=True, showgrid=True, gridcolor="#f2f2f2", tickfont=dict(size=10)),
        legend=dict(orientation="v", x=1.01, y=1, font=dict(size=10)),
        plot_bgcolor="white", hovermode="closest")
    return fig
