"""Whole-model and one-group merging on the converged reference models, with and without statistics repair.

Methods default / IF barycentric / IF paper / IF-free (semi-relaxed plan) / IF-df (``OTConfig.data_free()``)
/ IF-kmeans (``OTConfig.data_free(normalize=False)``) / fold (Model Folding), l1 importance, no fine-tuning;
each without data, with the data-free repair, and with data repairs on 512 unlabeled training images
("bn": re-estimated BatchNorm statistics; "repair": REPAIR).  Accuracy on the 2,000 test images of the
MNIST split.  Results are cached in benchmarks/results/whole_model.json (rerun to resume; several runs,
e.g. one per seed, may write it at once); tables (mean ± std over seeds, each seed in brackets) go to
stdout and benchmarks/results/whole_model.md, figures to benchmarks/results/whole_model_*.html (and .png).

    python benchmarks/whole_model.py --arch vgg11_bn resnet18 --seeds 0 1 2
    python benchmarks/whole_model.py --arch vgg11_bn resnet18 --seeds 0 1 2 --tables-only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, cache_key, header, save_cache, save_figure  # noqa: E402

CACHE = RESULTS / "whole_model.json"
METHODS = {  # label -> (prune method, OTConfig settings)
    "default": ("default", {}),
    "IF-bary": ("intra-fusion", {}),
    "IF-paper": ("intra-fusion", {"fusion": "paper"}),
    "IF-free": ("intra-fusion", {"target_mass": "free"}),  # semi-relaxed OT: each channel to its nearest kept
    "fold": ("fold", {}),
    # OTConfig.data_free(): centroid targets from k-means++ on standardised vectors, free target mass
    "IF-df": ("intra-fusion", {"preset": "data_free"}),  # spherical k-means (cosine) centroids of standardised vectors
    "IF-kmeans": ("intra-fusion", {"preset": "data_free", "normalize": False}),  # plain k-means: Model Folding's clusters
}
REPAIRS = ("none", "data-free", "bn", "repair")




def _config(ifv, settings: dict):
    settings = dict(settings)
    preset = settings.pop("preset", None)
    return getattr(ifv.OTConfig, preset)(**settings) if preset else ifv.OTConfig(**settings)




def run(args):
    import intrafusion_viz as ifv

    torch.set_num_threads(1)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}

    def save():
        save_cache(CACHE, cache)

    (x_train, _), (x_test, y_test) = ifv.reference_data()
    batch = x_train[:512]
    example = x_test[:1]
    from tqdm.auto import tqdm

    for arch in args.arch:
        for seed in args.seeds:
            model = ifv.reference_model(arch, seed, train_if_missing=False)
            base_key = cache_key(arch, seed, "base")
            if base_key not in cache:
                cache[base_key] = ifv.accuracy(model, (x_test, y_test))
                save()
            jobs = []
            for s in args.whole:
                for label in args.methods:
                    jobs.append(("whole", s, label, None, args.repairs, False))
                if args.sequential:
                    jobs.append(("whole-seq", s, "IF-bary", None, ("none", "data-free", "bn"), True))
            n_groups = len(ifv.find_groups(model, example))
            for gi in range(n_groups if args.one_group else 0):
                for label in args.methods:
                    jobs.append(("one", args.one_group, label, gi, tuple(args.one_group_repairs), False))
            for scope, s, label, gi, repairs, sequential in tqdm(jobs, desc=f"{arch} seed {seed}"):
                todo = [r for r in repairs if cache_key(arch, seed, scope, s, label, gi, r) not in cache]
                if not todo:
                    continue
                method, settings = METHODS[label]
                sparsity = s if gi is None else {gi: s}
                res = ifv.prune(model, example, sparsity, method=method, importance="l1", repair="none",
                                config=_config(ifv, settings), sequential=sequential)
                for r in todo:
                    start = time.perf_counter()
                    if r == "none":
                        net = res.model
                    elif r == "data-free":
                        net = ifv.repair(res, model, mode="data-free")
                    else:
                        net = ifv.repair(res, model, batch, mode=r)
                    acc = ifv.accuracy(net, (x_test, y_test))
                    cache[cache_key(arch, seed, scope, s, label, gi, r)] = acc
                    save()
                    tqdm.write(f"{arch} s{seed} {scope} {s} {label} g{gi} {r}: {acc:.2f} "
                               f"({time.perf_counter() - start:.1f} s)")
    return cache


def tables(cache, args) -> str:
    import numpy as np

    out = []
    for arch in args.arch:
        seeds = [s for s in args.seeds if cache_key(arch, s, "base") in cache]
        if not seeds:
            continue
        base = [cache[cache_key(arch, s, "base")] for s in seeds]
        out.append(f"\n### {arch}, seeds {seeds}: base accuracy {np.mean(base):.2f} % "
                   f"({', '.join(f'{b:.2f}' for b in base)})\n")
        out.append(f"Every group pruned at once (accuracy %, 2,000 test images; mean ± std over seeds "
                   f"(seed {' / seed '.join(map(str, seeds))})):\n")
        out.append("| sparsity | method | " + " | ".join(args.repairs) + " |")
        out.append("|---|---|" + "---:|" * len(args.repairs))

        def cell(scope, s, label, gi, r):
            vals = [cache.get(cache_key(arch, seed, scope, s, label, gi, r)) for seed in seeds]
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            per_seed = " / ".join(f"{v:.1f}" for v in vals)
            if len(vals) == 1:
                return f"{vals[0]:.1f}" + ("" if len(seeds) == 1 else " (1 seed)")
            spread = f" ± {np.std(vals, ddof=1):.1f}"
            return f"{np.mean(vals):.1f}{spread} ({per_seed})" + ("" if len(vals) == len(seeds) else f" ({len(vals)} seeds)")

        for s in args.whole:
            for label in args.methods:
                out.append(f"| {s:.0%} | {label} | " + " | ".join(cell("whole", s, label, None, r) for r in args.repairs) + " |")
            if args.sequential:
                out.append(f"| {s:.0%} | IF-bary, sequential | " +
                           " | ".join(cell("whole-seq", s, "IF-bary", None, r) if r != "repair" else "-"
                                      for r in args.repairs) + " |")
        if args.one_group:
            s = args.one_group
            out.append(f"\nOne group at a time at {s:.0%} ((group, seed) cases within 1.5 points of their "
                       f"seed's base; worst case's accuracy; per seed {' / '.join(map(str, seeds))}):\n")
            out.append("| method | no data | data-free repair |")
            out.append("|---|---:|---:|")
            for label in args.methods:
                cells = []
                for r in ("none", "data-free"):
                    within, total, worst, per_seed = 0, 0, 100.0, []
                    for seed in seeds:
                        b = cache[cache_key(arch, seed, "base")]
                        gi, w = 0, 0
                        while cache_key(arch, seed, "one", s, label, gi, r) in cache:
                            acc = cache[cache_key(arch, seed, "one", s, label, gi, r)]
                            w += acc >= b - 1.5
                            worst = min(worst, acc)
                            gi += 1
                        within, total = within + w, total + gi
                        per_seed.append(f"{w}/{gi}" if gi else "-")
                    seeds_text = f"; {' / '.join(per_seed)}" if len(seeds) > 1 else ""
                    cells.append(f"{within}/{total} = {100 * within / total:.0f} % (worst {worst:.1f}{seeds_text})"
                                 if total else "-")
                out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def figures(cache, args):
    import plotly.graph_objects as go

    for arch in args.arch:
        seeds = [s for s in args.seeds if cache_key(arch, s, "base") in cache]
        if not seeds:
            continue
        fig = go.Figure()
        for label in args.methods:
            for r in args.repairs:
                ys = []
                for s in args.whole:
                    vals = [cache.get(cache_key(arch, seed, "whole", s, label, None, r)) for seed in seeds]
                    vals = [v for v in vals if v is not None]
                    ys.append(sum(vals) / len(vals) if vals else None)
                fig.add_trace(go.Scatter(x=[100 * s for s in args.whole], y=ys, mode="lines+markers",
                                         name=f"{label} + {r}"))
        fig.update_layout(title=f"{arch} on MNIST, every group pruned, l1 importance, no fine-tuning:<br>"
                                f"accuracy vs sparsity (mean of seeds {seeds})",
                          xaxis_title="sparsity of every group (%)", yaxis_title="test accuracy (%)")
        save_figure(fig, f"whole_model_{arch}", width=1400, height=650)  # HTML, and PNG when kaleido works


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--whole", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repairs", nargs="+", default=list(REPAIRS))
    parser.add_argument("--one-group", type=float, default=0.7, help="sparsity of the one-group runs (0: skip)")
    parser.add_argument("--one-group-repairs", nargs="+", default=["none", "data-free"],
                        choices=["none", "data-free"], help="repairs of the one-group runs")
    parser.add_argument("--sequential", action="store_true", help="also IF-bary planned group by group")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    cache = json.loads(CACHE.read_text()) if args.tables_only and CACHE.exists() else run(args)
    text = header("python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:])) + tables(cache, args)
    print(text)
    (RESULTS / "whole_model.md").write_text(text + "\n")
    figures(cache, args)


if __name__ == "__main__":
    main()
