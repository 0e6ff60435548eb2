"""Median time from setting the explore dashboard's sparsity slider to its figures updated, on CPU.

Prints a markdown table (median / p90 ms per slider move over 20 moves, each to a value not seen
before, so every move prunes, fuses and evaluates anew rather than hitting the result cache).  A move
prunes the group with every method (``ifv.METHODS``) and evaluates each pruned model on the fixed
batch; ``evaluation`` says whether only the layers from the group on run (``prefix cached``, the
dashboard's default) or the whole network (``full``, what it did before).

    python benchmarks/bench_dashboard.py [--moves 20] [--eval 512] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import intrafusion_viz as ifv


def _moves(n: int):
    # 20 distinct slider positions on a fine grid, visited in a shuffled order
    grid = np.round(np.linspace(0.12, 0.88, n), 3)  # never the dashboard's start (0.5): every move is new
    return np.random.default_rng(0).permutation(grid).tolist()


def bench(name, model, data, example, group, moves, renderer="widget", full=False):
    db = ifv.widgets.explore(model, data, example, renderer=renderer, eval_samples=None)
    if full:  # the evaluation before the prefix cache: the whole pruned network on the whole batch
        db._evaluator.accuracy = lambda pruned, key, members: ifv.accuracy(pruned, db.eval_data)
    db.group.value = group
    db.sparsity.step = 0.001
    times = []
    for value in _moves(moves):
        start = time.perf_counter()
        db.sparsity.value = float(value)
        times.append((time.perf_counter() - start) * 1e3)
        assert db.error is None, db.error
    g = db.groups[group]
    row = dict(case=name, group=f"G{g.paper_index} {g.name} (n={g.size})", eval=len(db.eval_data[1]),
                median=float(np.median(times)), p90=float(np.percentile(times, 90)), renderer=renderer,
                evaluation="full" if full else "prefix cached")
    print(f"| {row['case']} | {row['group']} | {row['eval']} | {row['renderer']} | {row['evaluation']} "
          f"| {row['median']:.0f} | {row['p90']:.0f} |", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--eval", type=int, default=512, help="evaluation samples for VGG11-BN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="do not measure the full evaluation")
    parser.add_argument("--only", choices=["cnn", "vgg"], default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows = []
    modes = [False] if args.skip_full else [False, True]

    print("| model | group | eval samples | renderer | evaluation | median ms/move | p90 ms/move |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    digits = ifv.data.load_digits_tensors()
    cnn = ifv.models.SmallCNN()
    ifv.train(cnn, (digits.x_train, digits.y_train), epochs=5, lr=0.05, seed=0, progress=False)
    cnn.eval()
    test = (digits.x_test, digits.y_test)
    for full in modes if args.only != "vgg" else []:
        for group in (0, 1):
            rows.append(bench("SmallCNN, digits (trained 5 epochs)", cnn, test, digits.x_test[:2], group, args.moves,
                              full=full))
    if args.only != "vgg":
        rows.append(bench("SmallCNN, digits (trained 5 epochs)", cnn, test, digits.x_test[:2], 1, args.moves,
                          renderer="static"))

    vgg = ifv.models.vgg11_bn(num_classes=10).eval()
    x = torch.randn(args.eval, 3, 32, 32)
    y = torch.randint(0, 10, (args.eval,))
    groups = ifv.find_groups(vgg, x[:2])
    for full in modes if args.only != "cnn" else []:
        for group in (0, len(groups) // 2, len(groups) - 1):  # first conv, a middle one, last conv (paper's G1)
            rows.append(bench("VGG11-BN, 3x32x32, random weights", vgg, (x, y), x[:2], group, args.moves,
                              full=full))

    print(f"\n{len(ifv.METHODS)} methods per move ({', '.join(ifv.METHODS)}), torch threads {args.threads}")
    print("| model | group | eval samples | renderer | evaluation | median ms/move | p90 ms/move |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['group']} | {r['eval']} | {r['renderer']} | {r['evaluation']} | {r['median']:.0f} "
              f"| {r['p90']:.0f} |")


if __name__ == "__main__":
    main()
