"""How much do the k-means draws decide? Intra-Fusion's data-free plan and Model Folding over k-means seeds.

Both ``OTConfig.data_free()`` (IF-df: spherical k-means++ on standardised channel vectors) and
``method="fold"`` (Model Folding: plain k-means++) cluster every group with a seeded k-means++
(``ifv.prune(..., seed=s)``, best of 10 starts).  Section 5.1 of BENCHMARKS.md uses seed 0 only; here
every group of a converged reference model is pruned with k-means seeds ``0 .. K-1``, l1 importance, no
fine-tuning, and measured without repair and with the data-free repair (accuracy on the 2,000 test
images of the MNIST split).  Tables: per sparsity and method, mean ± std over all (training seed,
k-means seed) draws, each training seed's mean over its draws, and the range.  Cached in
benchmarks/results/kmeans_seeds.json (rerun to resume; several runs may write it at once); tables to
stdout and benchmarks/results/kmeans_seeds.md, figure benchmarks/results/kmeans_seeds_<arch>.html (.png
when kaleido works).

    python benchmarks/kmeans_seeds.py --arch vgg11_bn --seeds 0 1 2 --kmeans-seeds 5
    python benchmarks/kmeans_seeds.py --arch vgg11_bn resnet18 --tables-only
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

CACHE = RESULTS / "kmeans_seeds.json"
METHODS = ("IF-df", "fold")






def run(args) -> dict:
    import intrafusion_viz as ifv
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    (_, _), (x_test, y_test) = ifv.reference_data()
    for arch in args.arch:
        for seed in args.seeds:
            model = ifv.reference_model(arch, seed, train_if_missing=False)
            if cache_key(arch, seed, "base") not in cache:
                cache[cache_key(arch, seed, "base")] = ifv.accuracy(model, (x_test, y_test))
                save_cache(CACHE, cache)
            jobs = [(s, m, ks) for s in args.sparsity for m in args.methods for ks in range(args.kmeans_seeds)]
            for s, label, ks in tqdm(jobs, desc=f"{arch} seed {seed}"):
                key = cache_key(arch, seed, s, label, ks)
                if key in cache:
                    continue
                start = time.perf_counter()
                kw = dict(method="fold") if label == "fold" else dict(config=ifv.OTConfig.data_free())
                res = ifv.prune(model, x_test[:1], s, importance="l1", repair="none", seed=ks, **kw)
                cache[key] = dict(none=ifv.accuracy(res.model, (x_test, y_test)),
                                  data_free=ifv.accuracy(ifv.repair(res, model, mode="data-free"), (x_test, y_test)))
                save_cache(CACHE, cache)
                tqdm.write(f"{key}: none {cache[key]['none']:.2f} data-free {cache[key]['data_free']:.2f} "
                           f"({time.perf_counter() - start:.1f} s)")
    return cache


def _draws(cache, arch, seed, s, label, kmeans_seeds, repair):
    vals = [cache.get(cache_key(arch, seed, s, label, ks)) for ks in range(kmeans_seeds)]
    return [v[repair] for v in vals if v is not None]


def tables(cache, args) -> str:
    import numpy as np

    out = []
    for arch in args.arch:
        seeds = [sd for sd in args.seeds if cache_key(arch, sd, "base") in cache]
        if not seeds:
            continue
        present = sorted({int(k.rsplit("|", 1)[1]) for k in cache
                          if k.startswith(f"{arch}|") and k.split("|")[-1].isdigit()
                          and int(k.rsplit("|", 1)[1]) < args.kmeans_seeds})
        out.append(f"\n#### {arch}, every group pruned, k-means seeds {present} for each training "
                   f"seed {seeds} (accuracy %, 2,000 test images)\n")
        out.append("| sparsity | method | repair | mean ± std over all draws | per training seed: mean over "
                   "k-means seeds (k-means seed 0) | min - max | draws |")
        out.append("|---|---|---|---:|---|---|---:|")
        for s in args.sparsity:
            for label in args.methods:
                for repair in ("none", "data_free"):
                    per_seed = {sd: _draws(cache, arch, sd, s, label, args.kmeans_seeds, repair) for sd in seeds}
                    every = [v for vs in per_seed.values() for v in vs]
                    if not every:
                        continue
                    spread = f" ± {np.std(every, ddof=1):.1f}" if len(every) > 1 else ""
                    seed_text = " / ".join(f"{np.mean(vs):.1f} ({vs[0]:.1f})" if vs else "-"
                                           for vs in per_seed.values())
                    out.append(f"| {s:.0%} | {label} | {repair.replace('_', '-')} | {np.mean(every):.1f}{spread} | "
                               f"{seed_text} | {min(every):.1f} - {max(every):.1f} | {len(every)} |")
    return "\n".join(out)


def figure(cache, arch, args):
    """Every draw's accuracy with the data-free repair, by sparsity: one box per method."""
    import plotly.graph_objects as go

    seeds = [sd for sd in args.seeds if cache_key(arch, sd, "base") in cache]
    fig = go.Figure()
    drawn = set()
    for label in args.methods:
        xs, ys, text = [], [], []
        for s in args.sparsity:
            for sd in seeds:
                for ks in range(args.kmeans_seeds):
                    v = cache.get(cache_key(arch, sd, s, label, ks))
                    if v is not None:
                        xs.append(f"{s:.0%}")
                        ys.append(v["data_free"])
                        text.append(f"training seed {sd}, k-means seed {ks}")
                        drawn.add(ks)
        if ys:
            fig.add_trace(go.Box(x=xs, y=ys, name=label, boxpoints="all", text=text, jitter=0.4))
    fig.update_layout(boxmode="group", title=f"{arch} (MNIST), every group pruned, l1, data-free repair:<br>accuracy over "
                                             f"k-means seeds {sorted(drawn)} x training seeds {seeds}",
                      xaxis_title="sparsity of every group", yaxis_title="test accuracy (%)")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--kmeans-seeds", type=int, default=5, help="k-means seeds 0 .. K-1")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    cache = json.loads(CACHE.read_text()) if args.tables_only and CACHE.exists() else run(args)
    text = header("python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:])) + tables(cache, args)
    print(text)
    (RESULTS / "kmeans_seeds.md").write_text(text + "\n")
    for arch in args.arch:
        fig = figure(cache, arch, args)
        if fig.data:
            save_figure(fig, f"kmeans_seeds_{arch}", width=1400, height=650)  # HTML, and PNG when kaleido works


if __name__ == "__main__":
    main()
