"""``intrafusion-viz demo``: trains a small CNN on digits, prunes it and writes a report.

Runs offline (scikit-learn's bundled digits) in well under a minute on two CPU cores.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

__all__ = ["run_demo", "format_table", "format_html_table", "write_report", "run"]

DEMO_MODEL = "SmallCNN(width=(32, 64)) on scikit-learn digits"
DEFAULT_CALL = "ifv.prune default"  # the demo's column for prune(model, x, s) with no other argument


def run_demo(sparsities: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7), epochs: int = 15, seed: int = 0,
             importance: str = "l1", progress: bool = True) -> List[dict]:
    """Train ``SmallCNN`` on digits, prune the whole model at each sparsity, return tidy records.

    Uses :func:`intrafusion_viz.evaluation.sweeps.sparsity_sweep` with every sweep method.  The caller's global
    random state is left as it was (the model is initialised under ``torch.random.fork_rng``).

    Returns
    -------
    list of dict
        ``group=-1, group_name="all", sparsity, method, importance, accuracy, params, seed, model,
        num_classes`` per row, plus one ``method="original"`` row first.
    """
    import pandas as pd

    from .. import IMPORTANCES, accuracy, models, prune, train
    from ..data import load_digits_tensors
    from ..evaluation.sweeps import PAPER_FUSION, sparsity_sweep

    # the demo's comparison: dropping, Intra-Fusion, and the paper's normalisation (names from ifv.METHODS)
    demo_methods = ("default", "intra-fusion", PAPER_FUSION)

    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(map(repr, IMPORTANCES))}; got {importance!r}")
    data = load_digits_tensors(seed=seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = models.SmallCNN(in_channels=1, num_classes=10, width=(32, 64), input_size=8)
    train(model, (data.x_train, data.y_train), epochs=epochs, seed=seed, progress=progress,
          optimizer="adam", lr=3e-3)
    test = (data.x_test, data.y_test)
    example = data.x_train[:1]
    batch = (data.x_train[:256], data.y_train[:256])
    table = sparsity_sweep(model, test, example, sparsities=list(sparsities), methods=demo_methods,
                           importance=importance, batch=batch, cache=False, progress=progress)
    # the default call ifv.prune(model, x, s) itself (docs/defaults.md): on this BatchNorm network, Intra-Fusion
    # with capacities repaired on synthetic inputs (made once, then remembered for every sparsity)
    call = [dict(group=-1, group_name="all", paper_group="", sparsity=float(s), method=DEFAULT_CALL,
                 importance=importance if isinstance(importance, str) else "custom",
                 accuracy=accuracy(prune(model, example, s, importance=importance, progress=False).model, test))
            for s in sparsities]
    table = pd.concat([table, pd.DataFrame(call)], ignore_index=True)
    params = {0.0: sum(p.numel() for p in model.parameters())}
    for s in sparsities:  # parameters depend on the sparsity only (every method keeps as many channels)
        params[float(s)] = prune(model, example, s, method="default", importance="l1").params_after
    records = table.to_dict("records")
    for r in records:
        r.update(params=params[float(r["sparsity"])], seed=seed, model="SmallCNN", num_classes=10)
    return records


def format_table(records: List[dict]) -> str:
    """Markdown table: one row per sparsity, one column per method."""
    methods, original, rows = _table_rows(records)
    lines = [f"original accuracy: {original['accuracy']:.2f}%  ({original['params']:,} parameters)", "",
             "| sparsity | params | " + " | ".join(methods) + " |",
             "|---:|---:|" + "---:|" * len(methods)]
    for s, params, cells in rows:
        lines.append(f"| {s:.0%} | {params:,} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def _table_rows(records):
    methods = [m for m in dict.fromkeys(r["method"] for r in records) if m != "original"]
    original = next(r for r in records if r["method"] == "original")
    rows = []
    for s in sorted({r["sparsity"] for r in records if r["method"] != "original"}):
        row = {r["method"]: r for r in records if r["sparsity"] == s and r["method"] != "original"}
        params = next(iter(row.values()))["params"]
        rows.append((s, params, [row[m]["accuracy"] if m in row else None for m in methods]))
    return methods, original, rows


def format_html_table(records: List[dict]) -> str:
    """The same table as HTML: accuracy (%) per sparsity and method, the best of each row in bold."""
    methods, original, rows = _table_rows(records)
    esc = html.escape
    head = "".join(f"<th>{esc(m)}</th>" for m in methods)
    body = []
    for s, params, cells in rows:
        best = max(c for c in cells if c is not None)
        tds = "".join("<td></td>" if c is None else
                      (f"<td><b>{c:.2f}</b></td>" if c == best else f"<td>{c:.2f}</td>") for c in cells)
        body.append(f"<tr><td>{s:.0%}</td><td>{params:,} ({params / original['params']:.0%})</td>{tds}</tr>")
    return ("<table class='results'><thead><tr><th>sparsity</th><th>parameters</th>" + head + "</tr></thead>"
            f"<tbody><tr><td>0% (original)</td><td>{original['params']:,}</td>"
            f"<td colspan='{len(methods)}'>{original['accuracy']:.2f}</td></tr>" + "".join(body) + "</tbody></table>")


def _versions() -> dict:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("intrafusion_viz", "torch", "torch-pruning", "POT", "plotly", "scikit-learn", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_report(records: List[dict], path: Path, elapsed: float, settings: Optional[dict] = None) -> Path:
    """A standalone HTML page: the settings, the accuracy-vs-sparsity figure and the table."""
    from ..figures import accuracy_vs_sparsity

    original = next(r for r in records if r["method"] == "original")
    importance = original.get("importance", "")
    fig = accuracy_vs_sparsity(records, num_classes=original.get("num_classes"), title=(
        f"SmallCNN on digits: accuracy after pruning every group, no fine-tuning<br>"
        f"<sup>importance {importance} · seed {original.get('seed', '')} · original {original['accuracy']:.2f}%"
        f"</sup>"))
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    settings.setdefault("model", DEMO_MODEL)
    settings.setdefault("importance", importance)
    settings.setdefault("seed", original.get("seed", ""))
    settings.setdefault("sparsities", ", ".join(f"{r:.2f}" for r in sorted(
        {r["sparsity"] for r in records if r["method"] != "original"})))
    settings["run time"] = f"{elapsed:.1f} s"
    settings.update({f"version: {k}": v for k, v in _versions().items()})
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items())
    style = ("body{font-family:sans-serif;max-width:960px;margin:auto;padding:0 12px}"
             "table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 12px;border-bottom:1px solid #ddd;"
             "text-align:right}table.settings th,table.settings td{text-align:left}")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>intrafusion_viz demo</title>"
            f"<style>{style}</style></head><body>"
            "<h1>intrafusion_viz demo</h1>"
            "<p>A small CNN trained on scikit-learn's digits, every group pruned at once, evaluated on "
            "held-out digits without fine-tuning. <b>default</b> drops the least important channels; "
            "<b>intra-fusion</b> merges every channel into the kept ones along an optimal-transport plan "
            "(barycentric merge); <b>intra-fusion (paper)</b> uses the paper's normalisation.</p>"
            + fig.to_html(full_html=False, include_plotlyjs=True)
            + "<h2>Accuracy (%) on the held-out digits</h2>" + format_html_table(records)
            + "<h2>Settings</h2><table class='settings'>" + rows + "</table></body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def run(args) -> int:
    """The ``demo`` subcommand."""
    start = time.perf_counter()
    records = run_demo(args.sparsities, epochs=args.epochs, seed=args.seed, importance=args.importance,
                       progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(format_table(records))
    out = write_report(records, Path(args.out), elapsed, settings=dict(epochs=args.epochs))
    print(f"\nreport written to {out} ({elapsed:.1f} s)")
    return 0
