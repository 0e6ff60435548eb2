"""Model Folding's own code beside our ``prune(method="fold")`` on one checkpoint: accuracy at 30/50/70 %.

Every group folded, no data (their DF_REPAIR; ours ``repair="auto"`` = Model Folding's data-free repair),
per seed and the mean.  Their code runs in this process through ``theirs.run_theirs`` (glue in README.md).

    python benchmarks/model_folding/compare.py --arch vgg11_bn --theirs ../ModelFolding           # reference seed 0
    python benchmarks/model_folding/compare.py --arch resnet18 --checkpoint my.pt --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
from theirs import run_theirs  # noqa: E402


def load_model(arch: str, checkpoint=None, reference_seed: int = 0):
    """The model to fold: ``checkpoint`` loaded into the reference architecture, or the cached reference model."""
    import intrafusion_viz as ifv
    from intrafusion_viz.evaluation._reference import build_reference

    if checkpoint is None:
        return ifv.reference_model(arch, seed=reference_seed, train_if_missing=False)
    model = build_reference(arch)
    ifv.load_checkpoint(checkpoint, model)
    return model.eval()


def evaluate(model, x, y, batch: int = 500) -> float:
    """Top-1 accuracy in percent (eval mode, no grad)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def compare(model, arch: str, x, y, sparsities=(0.3, 0.5, 0.7), seeds=(0, 1, 2), theirs=None, ours=True,
            n_jobs=1, log=print):
    """Rows ``{"sparsity", "seed", "theirs", "ours", "theirs_s", "ours_s"}`` (accuracies in percent, times in s)."""
    import intrafusion_viz as ifv

    example = x[:2]
    rows = []
    for s in sparsities:
        for seed in seeds:
            t = time.perf_counter()
            acc_theirs = evaluate(run_theirs(model, arch, s, seed, theirs, n_jobs=n_jobs), x, y)
            row = {"sparsity": s, "seed": seed, "theirs": acc_theirs, "theirs_s": time.perf_counter() - t}
            if ours:
                t = time.perf_counter()
                res = ifv.prune(model, example, s, method="fold", seed=seed)
                row.update(ours=evaluate(res.model, x, y), ours_s=time.perf_counter() - t)
            rows.append(row)
            log(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("vgg11_bn", "resnet18"), default="vgg11_bn")
    parser.add_argument("--checkpoint", help="checkpoint of the reference architecture (default: cached reference)")
    parser.add_argument("--reference-seed", type=int, default=0, help="which cached reference model (no --checkpoint)")
    parser.add_argument("--sparsities", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--theirs", help="their checkout (default $MODEL_FOLDING_SRC or ../ModelFolding)")
    parser.add_argument("--jobs", type=int, default=1, help="HKMeans n_jobs (theirs: -1; the result is the same)")
    parser.add_argument("--theirs-only", action="store_true", help="skip our fold")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import intrafusion_viz as ifv

    model = load_model(args.arch, args.checkpoint, args.reference_seed)
    _, (x, y) = ifv.reference_data()
    print(f"{args.arch}: unpruned {evaluate(model, x, y):.2f} %", file=sys.stderr)
    rows = compare(model, args.arch, x, y, args.sparsities, args.seeds, args.theirs, not args.theirs_only,
                   args.jobs, log=lambda r: print(r, file=sys.stderr, flush=True))
    print(f"\n{args.arch} ({args.checkpoint or f'reference seed {args.reference_seed}'}), every group folded, no data; "
          f"accuracy % per seed {args.seeds}\n")
    print("| removed | Model Folding's code | ours (method='fold') |\n|---:|---|---|")
    for s in args.sparsities:
        cell = [r for r in rows if r["sparsity"] == s]

        def fmt(key):
            if key not in cell[0]:
                return ""
            vals = [r[key] for r in cell]
            return f"{sum(vals) / len(vals):.1f} ({', '.join(f'{v:.1f}' for v in vals)})"
        print(f"| {s:.0%} | {fmt('theirs')} | {fmt('ours')} |")


if __name__ == "__main__":
    main()
