"""How many synthetic inputs, and how many steps, does the default's BatchNorm repair need?

Question: the default call ``ifv.prune(model, x, s)`` is Intra-Fusion with capacities (``OTConfig.capped()``,
``capped-2-hart-euc`` in no_finetune_accuracy.py) followed by BatchNorm statistics re-estimated on
``ifv.synthetic_inputs(model, x, n=64, steps=200, seed=0)``; the synthetic inputs are its cost (34 s for a
VGG11-BN width 0.5 at 32x32 on one thread).  What is the cheapest ``(n, steps)`` whose accuracy stays within
about 0.5 point of ``(64, 200)`` everywhere?

Setup: converged reference networks (``ifv.reference_model(arch, seed, train_if_missing=False, dataset=...)``),
importance l1, every group pruned at 50 % and 70 % with ``no_finetune_accuracy._result(..., "capped-2-hart-euc",
seed)`` (its data-free repair included), then ``ifv.repair(result, model, synthetic, mode="bn")`` on synthetic
inputs made from the unpruned model with each ``(n, steps)`` in (64, 200), (32, 100), (64, 100), (32, 50),
(16, 50) (seed 0, lr 0.1); accuracy on the whole test set, no fine-tuning.  ``(64, 200)`` reuses the inputs
no_finetune_accuracy.py cached in ``benchmarks/results/synthetic_<dataset>_<arch>_s<seed>.pt`` (so its
accuracies are that table's ``+syn`` cells) and the seconds recorded there unless ``--fresh``; the other
budgets are made here and timed (wall clock of ``synthetic_inputs``, one thread).  The column "no syn" is the
pruned network with its data-free repair only.  Cells are appended as JSON lines to
``benchmarks/results/synthetic_budget.jsonl`` (a rerun skips cells already there).

    python benchmarks/synthetic_budget.py --refs mnist:vgg11_bn:0 mnist:vgg11_bn:1 fashion-mnist:vgg11_bn:0 \
        fashion-mnist:resnet18:0
    python benchmarks/synthetic_budget.py --tables-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import no_finetune_accuracy as nfa  # noqa: E402

RESULTS = nfa.RESULTS
CACHE = RESULTS / "synthetic_budget.jsonl"
BUDGETS = ((64, 200), (32, 100), (64, 100), (32, 50), (16, 50))
METHOD = "capped-2-hart-euc"
REFS = ("mnist:vgg11_bn:0", "mnist:vgg11_bn:1", "fashion-mnist:vgg11_bn:0", "fashion-mnist:resnet18:0")


def load_cache():
    return nfa.load_cache(CACHE, ("dataset", "arch", "seed", "sparsity", "n", "steps"))


def _append(cells, cell):
    cells[(cell["dataset"], cell["arch"], cell["seed"], cell["sparsity"], cell["n"], cell["steps"])] = cell
    with CACHE.open("a") as f:
        f.write(json.dumps(cell) + "\n")


def _inputs(ifv, model, example, dataset, arch, seed, n, steps, fresh):
    """(synthetic inputs, seconds, whether the seconds were measured in this run)."""
    cached = RESULTS / f"synthetic_{dataset}_{arch}_s{seed}.pt"
    if (n, steps) == (64, 200) and cached.exists() and not fresh:
        saved = torch.load(cached)
        return saved["inputs"], saved["seconds"], False
    start = time.perf_counter()
    x = ifv.synthetic_inputs(model, example, n=n, steps=steps, seed=0)
    return x, time.perf_counter() - start, True


def run(args):
    import intrafusion_viz as ifv
    from intrafusion_viz.repair._synthetic import bn_statistics_gap

    torch.set_num_threads(args.threads)
    cells = load_cache()
    for ref in args.refs:
        dataset, arch, seed = ref.split(":")
        seed = int(seed)
        (_, _), (x_test, y_test) = ifv.reference_data(dataset=dataset)
        model = ifv.reference_model(arch, seed, train_if_missing=False, dataset=dataset)
        example = x_test[:1]
        todo = [(n, st) for n, st in BUDGETS
                if any((dataset, arch, seed, s, n, st) not in cells for s in args.sparsity)]
        if not todo:
            continue
        pruned = {}  # sparsity -> (PruneResult, accuracy with the data-free repair only)
        for s in args.sparsity:
            res = nfa._result(ifv, model, example, s, METHOD, seed)
            pruned[s] = (res, ifv.accuracy(res.model, (x_test, y_test)))
        for n, steps in todo:
            x, seconds, measured = _inputs(ifv, model, example, dataset, arch, seed, n, steps, args.fresh)
            gap = bn_statistics_gap(model, x)
            for s in args.sparsity:
                res, acc_df = pruned[s]
                acc = ifv.accuracy(ifv.repair(res, model, x, mode="bn"), (x_test, y_test))
                _append(cells, dict(dataset=dataset, arch=arch, seed=seed, sparsity=s, n=n, steps=steps,
                                    method=METHOD, accuracy=round(acc, 3), no_syn=round(acc_df, 3),
                                    synthetic_seconds=round(seconds, 2), seconds_measured_here=measured,
                                    gap=round(gap, 5), threads=args.threads))
                print(f"{dataset} {arch} s{seed} {s:.0%} n={n} steps={steps}: {acc:.2f} % (no syn {acc_df:.2f} %; "
                      f"synthetic inputs {seconds:.1f} s{'' if measured else ', cached'}; gap {gap:.3g})",
                      flush=True)
    return cells


def tables(cells, args) -> str:
    refs = [tuple(r.split(":")) for r in args.refs]
    refs = [(d, a, int(sd)) for d, a, sd in refs]
    out = []
    for s in args.sparsity:
        out.append(f"\n#### {METHOD} + bn on synthetic inputs, every group {s:.0%} removed: test accuracy (%), "
                   "difference to (64, 200) in brackets")
        cols = [f"{a}, {nfa.DATASET_LABEL.get(d, d)}, s{sd}" for d, a, sd in refs]
        out.append("| (n, steps) | " + " | ".join(cols) + " | worst difference |")
        out.append("|---|" + "---:|" * (len(cols) + 1))
        base = {r: cells.get((*r, s, 64, 200)) for r in refs}
        out.append("| no syn (data-free repair only) | " + " | ".join(
            f"{cells[(*r, s, 64, 200)]['no_syn']:.2f}" if base[r] else "" for r in refs) + " | |")
        for n, steps in BUDGETS:
            row, diffs = [], []
            for r in refs:
                c = cells.get((*r, s, n, steps))
                if not c:
                    row.append("")
                    continue
                d = c["accuracy"] - base[r]["accuracy"] if base[r] else None
                if d is not None:
                    diffs.append(d)
                row.append(f"{c['accuracy']:.2f}" + (f" ({d:+.2f})" if d is not None and (n, steps) != (64, 200)
                                                     else ""))
            worst = f"{min(diffs):+.2f}" if diffs and (n, steps) != (64, 200) else ""
            out.append(f"| ({n}, {steps}) | " + " | ".join(row) + f" | {worst} |")
    out.append("\n#### seconds of synthetic_inputs (one thread; * = recorded when no_finetune_accuracy.py made them)")
    cols = [f"{a}, {nfa.DATASET_LABEL.get(d, d)}, s{sd}" for d, a, sd in refs]
    out.append("| (n, steps) | " + " | ".join(cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for n, steps in BUDGETS:
        row = []
        for r in refs:
            c = next((cells[k] for k in cells if k[:3] == r and k[4:] == (n, steps)), None)
            row.append(f"{c['synthetic_seconds']:.1f}{'' if c['seconds_measured_here'] else '*'}" if c else "")
        out.append(f"| ({n}, {steps}) | " + " | ".join(row) + " |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", nargs="+", default=list(REFS), help="dataset:arch:seed")
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="remake (64, 200) instead of reusing the cached inputs")
    parser.add_argument("--tables-only", action="store_true", help="print the tables from the cache")
    args = parser.parse_args(argv)
    cells = load_cache() if args.tables_only else run(args)
    print(tables(cells, args))


if __name__ == "__main__":
    main()
