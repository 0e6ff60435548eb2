"""Command line: ``intrafusion-viz demo`` trains a small CNN on digits, prunes it and writes a report.

Runs offline (scikit-learn's bundled digits) in well under a minute on two CPU cores.
"""
from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

__all__ = ["main", "run_demo"]

DEMO_METHODS = (
    ("default", "default", None),
    ("intra-fusion", "intra-fusion", "barycentric"),
    ("intra-fusion (paper)", "intra-fusion", "paper"),
)


def run_demo(sparsities: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7), epochs: int = 15, seed: int = 0,
             importance: str = "l1", progress: bool = True) -> List[dict]:
    """Train ``SmallCNN`` on digits, prune the whole model at each sparsity, return tidy records.

    Returns
    -------
    list of dict
        ``group=-1, group_name="all", sparsity, method, importance, accuracy, params, seed`` per row,
        plus one ``method="original"`` row.
    """
    from . import OTConfig, accuracy, models, prune, train
    from .data import load_digits_tensors

    torch.manual_seed(seed)
    data = load_digits_tensors(seed=seed)
    model = models.SmallCNN(in_channels=1, num_classes=10, width=(32, 64), input_size=8)
    train(model, (data.x_train, data.y_train), epochs=epochs, seed=seed, progress=progress,
          optimizer="adam", lr=3e-3)
    test = (data.x_test, data.y_test)
    example = data.x_train[:1]
    base = dict(group=-1, group_name="all", paper_group="", importance=importance, seed=seed)
    records = [dict(base, sparsity=0.0, method="original", accuracy=accuracy(model, test),
                    params=sum(p.numel() for p in model.parameters()))]
    batch = (data.x_train[:256], data.y_train[:256])
    jobs = [(s, label, method, fusion) for s in sparsities for label, method, fusion in DEMO_METHODS]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="pruning")
    for s, label, method, fusion in jobs:
        cfg = OTConfig(fusion=fusion) if fusion else OTConfig()
        res = prune(model, example, s, method=method, importance=importance, config=cfg, batch=batch, seed=seed)
        records.append(dict(base, sparsity=s, method=label, accuracy=accuracy(res.model, test),
                            params=res.params_after))
    return records


def format_table(records: List[dict]) -> str:
    """Markdown table: one row per sparsity, one column per method."""
    methods = [m for m in dict.fromkeys(r["method"] for r in records) if m != "original"]
    original = next(r for r in records if r["method"] == "original")
    lines = [f"original accuracy: {original['accuracy']:.2f}%  ({original['params']:,} parameters)", "",
             "| sparsity | params | " + " | ".join(methods) + " |",
             "|---:|---:|" + "---:|" * len(methods)]
    for s in sorted({r["sparsity"] for r in records if r["method"] != "original"}):
        row = {r["method"]: r for r in records if r["sparsity"] == s and r["method"] != "original"}
        params = next(iter(row.values()))["params"]
        cells = [f"{row[m]['accuracy']:.2f}" if m in row else "" for m in methods]
        lines.append(f"| {s:.0%} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(records: List[dict], path: Path, elapsed: float) -> Path:
    """A standalone HTML page with the table and the accuracy-vs-sparsity figure."""
    from .figures import accuracy_vs_sparsity

    fig = accuracy_vs_sparsity(records, title="SmallCNN on digits: accuracy after pruning, no fine-tuning")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = html.escape(format_table(records))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>intrafusion_viz demo</title></head>"
            "<body style='font-family:sans-serif;max-width:960px;margin:auto'>"
            "<h1>intrafusion_viz demo</h1>"
            "<p>A small CNN trained on scikit-learn's digits, every group pruned at once, evaluated on "
            "held-out digits without fine-tuning. <b>default</b> drops the least important channels; "
            "<b>intra-fusion</b> merges every channel into the kept ones along an optimal-transport plan "
            "(barycentric merge); <b>intra-fusion (paper)</b> uses the paper's normalisation.</p>"
            + fig.to_html(full_html=False, include_plotlyjs=True)
            + f"<pre>{table}</pre><p>Ran in {elapsed:.1f} s.</p></body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def _demo(args) -> int:
    start = time.perf_counter()
    records = run_demo(args.sparsities, epochs=args.epochs, seed=args.seed, importance=args.importance,
                       progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(format_table(records))
    out = write_report(records, Path(args.out), elapsed)
    print(f"\nreport written to {out} ({elapsed:.1f} s)")
    return 0


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="intrafusion-viz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train on digits, prune at several sparsities, write an HTML report")
    demo.add_argument("--sparsities", type=_sparsity, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--importance", default="l1", choices=["l1", "l2", "taylor", "lamp", "random"])
    demo.add_argument("--out", default="reports/demo.html")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
