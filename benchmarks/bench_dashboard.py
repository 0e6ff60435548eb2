"""Kernel-side latency of the explore dashboard's sparsity slider, on CPU: how long after a move the
figures, the first accuracies and the accuracies on the whole evaluation batch are there.

Prints a markdown table (median / p90 ms per slider move over ``--moves`` moves, each to a value not
seen before, so every move prunes, fuses and evaluates anew rather than hitting the result cache).

* ``steps`` (what a move made in the browser does, ``progressive=True`` here): the group is pruned
  with the methods drawn and the figures are updated (**figures**); then the accuracies on the first
  images of the batch, as many as fit the dashboard's ``first_budget_s`` (**first**, with the
  number of images); then on the whole batch (**full**); then Model Folding when it is included
  (**all**).  In a notebook the kernel is free between these steps, so a newer slider value
  preempts them.
* ``one step``: everything before the assignment returns (``progressive=False``; what a change made
  from code does, and what every move did before).

Model Folding is included where the dashboard includes it by default (models up to 2 M parameters);
``--fold`` includes it everywhere.  Evaluation runs only the layers from the group on (prefix cache).

    python benchmarks/bench_dashboard.py                 # digits CNN and VGG11-BN (3x32x32, 512 images)
    python benchmarks/bench_dashboard.py --only vgg --moves 8
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import intrafusion_viz as ifv

HEADER = ("| model | group | eval images | mode | figures | first accuracies (images) | full batch | "
          "all (with fold) |\n|---|---|---|---|---|---|---|---|")


def _moves(n: int):
    # n distinct slider positions on a fine grid, visited in a shuffled order
    grid = np.round(np.linspace(0.12, 0.88, n), 3)  # never the dashboard's start (0.5): every move is new
    return np.random.default_rng(0).permutation(grid).tolist()


def _stat(values):
    values = [v * 1e3 for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.median(values):.0f} / {np.percentile(values, 90):.0f}"


def bench(name, model, data, example, group, moves, progressive, include_fold=None, budget=0.25):
    db = ifv.widgets.explore(model, data, example, renderer="widget", eval_samples=None, progressive=progressive,
                             include_fold=include_fold, first_budget_s=budget)
    db.group.value = group  # records the group's prefix (once per group, not timed below)
    db.sparsity.step = 0.001
    db.timings.clear()
    for value in _moves(moves):
        db.sparsity.value = float(value)
        assert db.error is None, db.error
    t = db.timings
    g = db.groups[group]
    samples = sorted({m["first_samples"] or m["eval_total"] for m in t})
    row = dict(case=name, group=f"G{g.paper_index} {g.name} (n={g.size})", eval=len(db.eval_data[1]),
               mode=("steps" if progressive else "one step") + (", fold" if db.include_fold.value else ""),
               figures=_stat([m["figures"] for m in t]),
               first=f"{_stat([m['first'] for m in t])} ({', '.join(map(str, samples))})",
               full=_stat([m["full"] for m in t]), all=_stat([m["all"] for m in t]))
    line = (f"| {row['case']} | {row['group']} | {row['eval']} | {row['mode']} | {row['figures']} | {row['first']} "
            f"| {row['full']} | {row['all']} |")
    print(line, flush=True)
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=12)
    parser.add_argument("--eval", type=int, default=512, help="evaluation images for VGG11-BN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["cnn", "vgg"], default=None)
    parser.add_argument("--vgg-groups", default="last,middle,first",
                        help="VGG11-BN groups to time: any of last (the paper's G1), middle, first")
    parser.add_argument("--fold", action="store_true", help="include Model Folding on every model")
    parser.add_argument("--skip-one-step", action="store_true", help="time only the stepped moves")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    include_fold = True if args.fold else None
    modes = [True] if args.skip_one_step else [True, False]
    print(f"ms per slider move, median / p90 over {args.moves} moves; torch threads {args.threads}\n{HEADER}",
          flush=True)
    lines = []
    if args.only != "vgg":
        digits = ifv.data.load_digits_tensors()
        cnn = ifv.models.SmallCNN()
        ifv.train(cnn, (digits.x_train, digits.y_train), epochs=5, lr=0.05, seed=0, progress=False)
        cnn.eval()
        for progressive in modes:
            for group in (0, 1):
                lines.append(bench("SmallCNN, digits (trained 5 epochs)", cnn, (digits.x_test, digits.y_test),
                                   digits.x_test[:2], group, args.moves, progressive, include_fold))
    if args.only != "cnn":
        vgg = ifv.models.vgg11_bn(num_classes=10).eval()
        x = torch.randn(args.eval, 3, 32, 32)
        y = torch.randint(0, 10, (args.eval,))
        groups = ifv.find_groups(vgg, x[:2])
        where = {"last": len(groups) - 1, "middle": len(groups) // 2, "first": 0}
        for progressive in modes:
            for name in args.vgg_groups.split(","):
                lines.append(bench("VGG11-BN, 3x32x32, random weights", vgg, (x, y), x[:2], where[name.strip()],
                                   args.moves, progressive, include_fold))
    print(f"\nmethods: {', '.join(ifv.METHODS)}\n{HEADER}\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
