"""A statistics repair without data from synthetic inputs: BatchNorm re-estimated on ZeroQ's distilled data.

``x = ifv.synthetic_inputs(model, example)`` (64 inputs optimised so that every BatchNorm of the
*unpruned* model sees its stored mean and std; no training image), then ``ifv.repair(result, model, x,
mode="bn")``, against the data-free repair's prediction (``mode="data-free"``) and "bn" on 512 real
training images.  Converged reference models, l1 importance, no fine-tuning, 2,000 test images; every
group at 30 / 50 / 70 % and each group alone at 70 %.  Cached in benchmarks/results/synthetic_repair.json
(rerun to resume); tables to stdout and benchmarks/results/synthetic_repair.md.

    python benchmarks/synthetic_repair.py --arch vgg11_bn --seeds 0 1 2
    python benchmarks/synthetic_repair.py --arch vgg11_bn resnet18 --tables-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, cache_key, header, save_cache  # noqa: E402

CACHE = RESULTS / "synthetic_repair.json"
METHODS = ("IF-df", "fold", "default")
REPAIRS = ("data-free", "synthetic", "bn")






def run(args) -> dict:
    import intrafusion_viz as ifv
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    (x_train, _), (x_test, y_test) = ifv.reference_data()
    batch = x_train[:512]
    for arch in args.arch:
        for seed in args.seeds:
            model = ifv.reference_model(arch, seed, train_if_missing=False)
            if cache_key(arch, seed, "base") not in cache:
                cache[cache_key(arch, seed, "base")] = ifv.accuracy(model, (x_test, y_test))
                save_cache(CACHE, cache)
            jobs = [("whole", s, m, None) for s in args.whole for m in args.methods]
            n_groups = len(ifv.find_groups(model, x_test[:1]))
            jobs += [("one", args.one_group, m, gi) for gi in range(n_groups if args.one_group else 0)
                     for m in args.methods]
            synthetic = None
            for scope, s, label, gi in tqdm(jobs, desc=f"{arch} seed {seed}"):
                todo = [r for r in args.repairs if cache_key(arch, seed, scope, s, label, gi, r) not in cache]
                if not todo:
                    continue
                if synthetic is None and "synthetic" in todo:
                    start = time.perf_counter()
                    synthetic = ifv.synthetic_inputs(model, x_test[:1], n=64, steps=args.steps)
                    cache[cache_key(arch, seed, "synthetic_s")] = time.perf_counter() - start
                kw = dict(method=label if label != "IF-df" else "intra-fusion")
                if label == "IF-df":
                    kw["config"] = ifv.OTConfig.data_free()
                res = ifv.prune(model, x_test[:1], s if gi is None else {gi: s}, importance="l1", repair="none", **kw)
                for r in todo:
                    if r == "data-free":
                        net = ifv.repair(res, model, mode="data-free")
                    else:
                        net = ifv.repair(res, model, synthetic if r == "synthetic" else batch, mode="bn")
                    cache[cache_key(arch, seed, scope, s, label, gi, r)] = ifv.accuracy(net, (x_test, y_test))
                save_cache(CACHE, cache)
                tqdm.write(f"{arch} s{seed} {scope} {s} {label} g{gi}: " + ", ".join(
                    f"{r} {cache[cache_key(arch, seed, scope, s, label, gi, r)]:.2f}" for r in todo))
    return cache


def tables(cache, args) -> str:
    import numpy as np

    out = []
    for arch in args.arch:
        seeds = [sd for sd in args.seeds if cache_key(arch, sd, "base") in cache]
        if not seeds:
            continue
        base = {sd: cache[cache_key(arch, sd, "base")] for sd in seeds}
        spent = [cache.get(cache_key(arch, sd, "synthetic_s")) for sd in seeds]
        spent = [v for v in spent if v is not None]
        out.append(f"\n#### {arch}, seeds {seeds}: base {np.mean(list(base.values())):.2f} %"
                   + (f"; synthetic inputs took {min(spent):.0f}-{max(spent):.0f} s per model (loaded machine)"
                      if spent else "") + "\n")
        out.append("Every group pruned (accuracy %, mean ± std over seeds (per seed)):\n")
        out.append("| sparsity | method | " + " | ".join(args.repairs) + " |")
        out.append("|---|---|" + "---:|" * len(args.repairs))
        for s in args.whole:
            for label in args.methods:
                cells = []
                for r in args.repairs:
                    vals = [cache.get(cache_key(arch, sd, "whole", s, label, None, r)) for sd in seeds]
                    vals = [v for v in vals if v is not None]
                    if not vals:
                        cells.append("-")
                        continue
                    spread = f" ± {np.std(vals, ddof=1):.1f}" if len(vals) > 1 else ""
                    cells.append(f"{np.mean(vals):.1f}{spread} ({' / '.join(f'{v:.1f}' for v in vals)})")
                out.append(f"| {s:.0%} | {label} | " + " | ".join(cells) + " |")
        if args.one_group:
            s = args.one_group
            out.append(f"\nEach group alone at {s:.0%}: (group, seed) cases within 1.5 points of their seed's base "
                       "(worst case's drop in points):\n")
            out.append("| method | " + " | ".join(args.repairs) + " |")
            out.append("|---|" + "---:|" * len(args.repairs))
            for label in args.methods:
                cells = []
                for r in args.repairs:
                    within, total, worst = 0, 0, 0.0
                    for sd in seeds:
                        gi = 0
                        while cache_key(arch, sd, "one", s, label, gi, r) in cache:
                            drop = cache[cache_key(arch, sd, "one", s, label, gi, r)] - base[sd]
                            within += drop >= -1.5
                            worst = min(worst, drop)
                            total += 1
                            gi += 1
                    cells.append(f"{within}/{total} = {100 * within / total:.0f} % ({worst:+.1f})" if total else "-")
                out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--whole", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--one-group", type=float, default=0.7, help="sparsity of the one-group runs (0: skip)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repairs", nargs="+", default=list(REPAIRS), choices=list(REPAIRS))
    parser.add_argument("--steps", type=int, default=200, help="Adam steps of synthetic_inputs")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    cache = json.loads(CACHE.read_text()) if args.tables_only and CACHE.exists() else run(args)
    text = header("python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:])) + tables(cache, args)
    print(text)
    (RESULTS / "synthetic_repair.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
