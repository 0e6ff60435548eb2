"""The HTML report of ``intrafusion-viz prune`` (and ``intrafusion-viz report`` that writes it again)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch

from ._model import UserError

__all__ = ["StoredGroup", "write_prune_report", "read_record", "run"]


@dataclass
class StoredGroup:
    """One pruned group as the report file stores it; reads like a ``GroupResult`` for the figure helpers."""

    index: int
    paper_index: int
    name: str
    n: int
    k: int
    sparsity: float
    kept: torch.Tensor
    importance: torch.Tensor
    plan: torch.Tensor
    method: str
    has_cost: bool

    @property
    def cost(self):  # the figures only ask whether there was one (a transport plan vs. a selection)
        return torch.empty(0) if self.has_cost else None

    @classmethod
    def from_record(cls, row: dict) -> "StoredGroup":
        stored = row["plan"]
        if "dense" in stored:
            plan = stored["dense"].double()
        else:
            plan = torch.zeros(stored["shape"], dtype=torch.float64)
            plan[stored["rows"].long(), stored["cols"].long()] = stored["values"].double()
        return cls(row["index"], row["paper_index"], row["name"], row["n"], row["k"], row["sparsity"],
                   row["kept"], row["importance"], plan, row.get("method", ""), bool(row.get("has_cost", True)))


def read_record(path) -> dict:
    """The result record stored in a checkpoint written by ``intrafusion-viz prune`` (weights-only load)."""
    from ..evaluation._train import load_checkpoint

    _, meta = load_checkpoint(path)
    if "result" not in meta:
        raise UserError(f"'{path}' holds no prune result: it was not written by `intrafusion-viz prune`")
    return meta["result"]


def _table(rows, header) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if str(c).startswith('<') else esc(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(after, before) -> str:
    return f"{after / before:.0%}" if before else ""


def _summary(record: dict) -> str:
    rows = [["parameters", f"{record['params_before']:,}", f"{record['params_after']:,}",
             _pct(record["params_after"], record["params_before"])],
            ["MACs (one input)", f"{record['macs_before']:,}", f"{record['macs_after']:,}",
             _pct(record["macs_after"], record["macs_before"])]]
    if record.get("accuracy_before") is not None:
        rows.append([f"accuracy (%, {record['eval_samples']} samples)", f"{record['accuracy_before']:.2f}",
                     f"{record['accuracy_after']:.2f}",
                     f"{record['accuracy_after'] - record['accuracy_before']:+.2f} points"])
    return _table(rows, ["", "before", "after", "after/before"])


def _plan_summary(group: StoredGroup) -> str:
    plan = group.plan
    if group.k == group.n:
        return "all kept"
    sources = (plan > 0).sum(0)  # how many neurons flow into each kept one
    if not group.has_cost:
        return f"{group.n - group.k} dropped"
    return f"{int((sources > 1).sum())} of {group.k} kept neurons absorb others (up to {int(sources.max())} each)"


def _groups_table(record: dict, stored: dict) -> str:
    skipped = {int(i): reason for i, _, reason in record.get("skipped", [])}
    rows = []
    for g in record["groups"]:
        s = stored.get(g["index"])
        producers = sum(1 for m in g["members"] if m[1] == "out")
        if s is not None:
            status = "merged" if s.has_cost and s.k < s.n else ("dropped" if s.k < s.n else "kept all")
            kept, plan = f"{s.k} of {s.n} ({s.k / s.n:.0%})", _plan_summary(s)
        else:
            status = "skipped" if g["index"] in skipped else "not pruned"
            kept, plan = f"{g['size']} of {g['size']}", skipped.get(g["index"], "")
        rows.append([g["index"], g["paper_group"], g["name"], len(g["members"]),
                     f"residual stream ({producers} producers)" if producers > 1 else "", kept, status, plan])
    return _table(rows, ["index", "paper", "root layer", "layers", "", "kept", "status", "plan"])


def _figures(record: dict, stored: dict, max_plans: int) -> list:
    from ..figures import group_map, plan_heatmap

    figures = [group_map(record)]
    ranked = sorted((s for s in stored.values() if s.k < s.n), key=lambda s: (-s.n, s.index))[:max(0, max_plans)]
    for s in sorted(ranked, key=lambda s: s.index):
        figures.append(plan_heatmap(s, model_name=record["model"], importance=record["settings"]["importance"]))
    return figures


def write_prune_report(record: dict, path, max_plans: int = 4) -> Path:
    """One standalone HTML page (plotly.js inlined once): settings, summary, group map, groups, plans."""
    from ._demo import _versions

    stored = {row["index"]: StoredGroup.from_record(row) for row in record["pruned"]}
    figures = _figures(record, stored, max_plans)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=dict(responsive=True))
             for i, fig in enumerate(figures)]
    settings = dict(record["settings"])
    settings["run time"] = f"{record.get('elapsed_s', 0):.1f} s"
    settings.update({f"version: {k}": v for k, v in _versions().items()})
    settings_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                            for k, v in settings.items())
    style = ("body{font-family:sans-serif;max-width:1300px;margin:auto;padding:0 12px}"
             "table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;"
             "text-align:left}")
    title = f"{record['model']} pruned with {record['settings']['method']}"
    skipped = "".join(f"<li>{html.escape(str(n))} (group {i}): {html.escape(str(r))}</li>"
                      for i, n, r in record.get("skipped", []))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>From <code>{html.escape(record['settings']['checkpoint'])}</code> "
            f"({html.escape(record['settings']['format'])}); sparsity {html.escape(record['settings']['sparsity'])}, "
            f"importance {html.escape(record['settings']['importance'])}, config "
            f"{html.escape(record['settings']['config'])}, repair {html.escape(record['settings']['repair'])}; "
            f"data: {html.escape(record['settings']['data'])}.</p>"
            "<h2>Before and after</h2>" + _summary(record)
            + "<h2>Group map</h2><p>Every layer (rows) in the coupled groups (columns) whose channels are pruned "
              "together; hover a marker for the layer's part and the group's outcome.</p>" + parts[0]
            + "<h2>Groups</h2>" + _groups_table(record, stored)
            + (f"<h3>Skipped groups</h3><ul>{skipped}</ul>" if skipped else "")
            + ("<h2>Transport plans</h2><p>The largest pruned groups: each source neuron (row) and the kept "
               "neurons it merges into (columns).</p>" + "".join(parts[1:]) if len(parts) > 1 else "")
            + "<h2>Settings</h2><table>" + settings_rows + "</table></body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def run(args) -> int:
    """The ``report`` subcommand."""
    record = read_record(args.result)
    out = Path(args.report) if args.report else Path(args.result).with_suffix(".html")
    write_prune_report(record, out, max_plans=args.max_plans)
    print(f"report: {out}")
    return 0
