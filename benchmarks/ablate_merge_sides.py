"""Which side of an Intra-Fusion merge costs accuracy on a whole model: the producer average or the consumer sum?

Takes Intra-Fusion's plans (every group, l1, barycentric) and merges with
  - "IF": producer rows averaged along the plan, consumer columns summed (Intra-Fusion),
  - "IF producer only": producer rows averaged, consumer columns of the kept channels only (dropped ones discarded),
  - "IF consumer only": producer rows of the kept channels unchanged, consumer columns summed,
  - "default": both sides selection (plain pruning of the same kept channels),
then evaluates each without repair and after re-estimating BatchNorm statistics on 512 unlabeled images.

    python benchmarks/ablate_merge_sides.py --arch vgg11_bn --seed 1 --sparsity 0.3
"""
from __future__ import annotations

import argparse
import copy

import torch


def main(argv=None):
    import intrafusion_viz as ifv
    from intrafusion_viz.merge._surgery import IndexTracker, apply_merge, fold_group_batchnorms
    from intrafusion_viz.plan._transport import merge_matrices, selection_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (x_train, _), (x_test, y_test) = ifv.reference_data()
    model = ifv.reference_model(args.arch, args.seed, train_if_missing=False)
    ex, batch = x_test[:1], x_train[:512]
    print("| sparsity | merge | no repair | bn (512 images) |")
    print("|---|---|---:|---:|")
    for s in args.sparsity:
        res = ifv.prune(model, ex, s, method="intra-fusion", repair="none")
        for label in ("IF", "IF producer only", "IF consumer only", "default"):
            work = copy.deepcopy(model)
            groups = ifv.find_groups(work, ex)
            tracker = IndexTracker()
            for rec in res.groups:
                g = groups[rec.index]
                sel = merge_matrices(selection_plan(rec.n, rec.kept))[0]
                fold_group_batchnorms(work, g)
                out_map = rec.out_map if label in ("IF", "IF producer only") else sel
                in_map = rec.in_map if label in ("IF", "IF consumer only") else sel
                apply_merge(work, g, rec.kept, out_map, in_map, out_map, tracker)
            shell = copy.copy(res)
            shell.model = work
            fixed = ifv.repair(shell, model, batch, mode="bn")
            print(f"| {s:.0%} | {label} | {ifv.accuracy(work, (x_test, y_test)):.2f} | "
                  f"{ifv.accuracy(fixed, (x_test, y_test)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
