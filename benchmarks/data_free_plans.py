"""Which Intra-Fusion plan holds up without data? Each candidate cause of the gap to Model Folding, measured.

Every group of a converged reference model pruned at once, l1 importance, no fine-tuning, accuracy on
the 2,000 test images without repair and with the data-free repair.  Plans, from Intra-Fusion's
semi-relaxed plan (IF-free) towards Model Folding's clusters, one OTConfig option at a time:

* ``IF-bary``: the library default (balanced plan, soft: its "clusters" are each channel's largest
  share), cause (c);
* ``IF-free``: ``OTConfig(target_mass="free")``: each channel to its nearest most-important channel
  (unit-normalised channel vectors);
* ``+imp-mass``: importance source masses (a kept channel keeps more of itself), cause (d);
* ``+standardize``: the cost on standardised channel vectors (Model Folding's RobustScaler), cause (a);
* ``centroid-cos``: k-means++ centroid targets (spherical k-means) on the raw vectors, cause (b);
* ``centroid-cos+std``: both: ``OTConfig.data_free()``;
* ``kmeans+std``: ``OTConfig.data_free(normalize=False)``: plain k-means on the standardised vectors
  (Model Folding's clusters);
* ``fold``: ``method="fold"``.

Per plan and layer it also measures (on 256 training images) the correlation of the merged channels'
BatchNorm inputs within each cluster, against the estimate the data-free repair uses (Model
Folding's cosine of every tensor along the channel), the clusters' sizes, and after the data-free
repair the merged channels' drift (``ifv.layer_drift``: correlation with what they stand for, std
ratio).  Tables to stdout and benchmarks/results/data_free_plans.md, raw numbers to
benchmarks/results/data_free_plans.json, a figure to benchmarks/results/data_free_plans_<arch>_s<seed>.html.

    python benchmarks/data_free_plans.py --arch vgg11_bn --seeds 0 1 --sparsity 0.3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, header, save_cache, save_figure  # noqa: E402

PLANS = {  # label -> (method, OTConfig factory arguments)
    "IF-bary": ("intra-fusion", {}),
    "IF-free": ("intra-fusion", dict(target_mass="free")),
    "IF-free+imp-mass": ("intra-fusion", dict(target_mass="free", source_mass="importance")),
    "IF-free+standardize": ("intra-fusion", dict(target_mass="free", standardize=True)),
    "centroid-cos": ("intra-fusion", dict(preset="data_free", normalize=True, standardize=False)),
    "centroid-cos+std": ("intra-fusion", dict(preset="data_free")),  # OTConfig.data_free()
    "kmeans+std": ("intra-fusion", dict(preset="data_free", normalize=False)),  # Model Folding's clusters
    "fold": ("fold", {}),
}




def _config(ifv, settings):
    settings = dict(settings)
    preset = settings.pop("preset", None)
    return getattr(ifv.OTConfig, preset)(**settings) if preset else ifv.OTConfig(**settings)


@torch.no_grad()
def cluster_statistics(ifv, model, res, x):
    """Per pruned group (forward order of its first producer): cluster sizes and within-cluster correlations.

    ``measured``: mean Pearson correlation, over the pairs of channels merged into the same channel,
    of the producers' outputs (the BatchNorm inputs; spatial positions and samples pooled) on ``x``;
    ``estimated``: the data-free repair's estimate for the same pairs (Model Folding's cosine).
    """
    from intrafusion_viz.repair._activations import _recording, _run
    from intrafusion_viz.repair._data_free import _correlation_from_gram, snapshot_sources
    from intrafusion_viz.merge._surgery import _slots

    groups = [g for g in res.groups if g.k < g.n]
    snap = snapshot_sources(model, groups)
    producers = sorted({m.name for g in groups for m in g.members if m.role == "out"})
    with _recording(model, producers) as out:
        _run(model, x)
    order = {name: i for i, name in enumerate(out)}
    rows = []
    for g in groups:
        labels = g.plan.argmax(1)
        hard = bool(((g.plan > 0).sum(1) == 1).all())
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(g.n, dtype=torch.bool)
        sizes = torch.bincount(labels, minlength=g.k)
        meas, est = [], []
        first = min((m.name for m in g.members if m.role == "out"), key=lambda n: order.get(n, 1e9))
        for m in g.members:
            if m.role != "out":
                continue
            slots = _slots(m, g.n)[:, 0]
            a = out[m.name].double().movedim(1, 0)[slots].reshape(g.n, -1)
            corr = torch.corrcoef(a).nan_to_num(0.0)
            rho = _correlation_from_gram(snap[m.name]["gram"])
            if same.any():
                meas.append(float(corr[same].mean()))
                est.append(float(rho[same].mean()))
        rows.append(dict(group=g.index, layer=first, n=g.n, k=g.k, hard=hard, max_size=int(sizes.max()),
                         merged=int((sizes > 1).sum()), alone=int((sizes == 1).sum()),
                         measured=sum(meas) / len(meas) if meas else float("nan"),
                         estimated=sum(est) / len(est) if est else float("nan"), order=order.get(first, 1e9)))
    return sorted(rows, key=lambda r: r["order"])


def run(args):
    import intrafusion_viz as ifv

    torch.set_num_threads(1)
    path = RESULTS / "data_free_plans.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    (x_train, _), (x_test, y_test) = ifv.reference_data()
    probe = x_train[:256]
    for arch in args.arch:
        for seed in args.seeds:
            model = ifv.reference_model(arch, seed, train_if_missing=False)
            for s in args.sparsity:
                for label in args.plans:
                    key = f"{arch}|{seed}|{s}|{label}"
                    if key in cache:
                        continue
                    method, settings = PLANS[label]
                    res = ifv.prune(model, x_test[:1], s, method=method, importance="l1", repair="none",
                                    config=_config(ifv, settings))
                    fixed = ifv.repair(res, model, mode="data-free")
                    drift = ifv.layer_drift(model, res, x_test[:256], model=fixed)
                    entry = dict(none=ifv.accuracy(res.model, (x_test, y_test)),
                                 data_free=ifv.accuracy(fixed, (x_test, y_test)),
                                 clusters=cluster_statistics(ifv, model, res, probe),
                                 drift=[{k: r[k] for k in ("layer", "group", "pruned", "corr", "std_ratio")
                                         if k in r} | ({"agreement": r["agreement"]} if "agreement" in r else {})
                                        for r in drift])
                    cache[key] = entry
                    save_cache(path, cache)
                    print(f"{key}: none {entry['none']:.1f} data-free {entry['data_free']:.1f}", flush=True)
    return cache


def tables(cache, args) -> str:
    out = []
    for arch in args.arch:
        for s in args.sparsity:
            seeds = [sd for sd in args.seeds if any(f"{arch}|{sd}|{s}|{p}" in cache for p in args.plans)]
            if not seeds:
                continue
            out.append(f"\n#### {arch}, every group at {s:.0%}, seeds {seeds} (per seed: accuracy without repair / "
                       "with data-free repair)\n")
            out.append("| plan | no repair | data-free | largest cluster (max over layers) | within-cluster corr. "
                       "measured / estimated (mean over layers; per seed) | merged channels' corr. after data-free, "
                       "last pruned layer | logits top-1 agreement after data-free |")
            out.append("|---|---|---|---:|---|---|---|")
            for label in args.plans:
                cells = [cache.get(f"{arch}|{sd}|{s}|{label}") for sd in seeds]
                if not all(cells):
                    continue

                def per_seed(fn, fmt="{:.1f}"):
                    return " / ".join(fmt.format(fn(c)) for c in cells)

                def mean_over(c, key):
                    vals = [r[key] for r in c["clusters"] if r[key] == r[key]]
                    return sum(vals) / len(vals) if vals else float("nan")

                def pairs(cs):
                    return ", ".join(f"{mean_over(c, 'measured'):.2f} / {mean_over(c, 'estimated'):.2f}" for c in cs)

                last = lambda c: [r for r in c["drift"] if r.get("pruned")][-1]["corr"]  # noqa: E731
                out.append(f"| {label} | {per_seed(lambda c: c['none'])} | {per_seed(lambda c: c['data_free'])} | "
                           f"{per_seed(lambda c: max(r['max_size'] for r in c['clusters']), '{:d}')} | "
                           f"{pairs(cells)} | "
                           f"{per_seed(last, '{:.2f}')} | {per_seed(lambda c: c['drift'][-1]['agreement'])} |")
            if args.per_layer:
                sd = seeds[0]
                out.append(f"\nPer layer, seed {sd} (within-cluster correlation measured / estimated; largest "
                           "cluster; merged channels' correlation with their sources after data-free repair):\n")
                labels = [p for p in args.per_layer if f"{arch}|{sd}|{s}|{p}" in cache]
                out.append("| layer (n -> k) | " + " | ".join(labels) + " |")
                out.append("|---|" + "---|" * len(labels))
                base = cache[f"{arch}|{sd}|{s}|{labels[0]}"]
                for i, row in enumerate(base["clusters"]):
                    cells = []
                    for p in labels:
                        c = cache[f"{arch}|{sd}|{s}|{p}"]
                        r = c["clusters"][i]
                        d = next((x for x in c["drift"] if x["group"] == r["group"] and x.get("pruned")), None)
                        cells.append(f"{r['measured']:.2f} / {r['estimated']:.2f}; {r['max_size']}; "
                                     f"{d['corr']:.2f}" if d else f"{r['measured']:.2f} / {r['estimated']:.2f}")
                    out.append(f"| {row['layer']} ({row['n']} -> {row['k']}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def figure(cache, arch, seed, s, plans):
    """Within-cluster correlation (measured and estimated) per layer, one line per plan."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for p in plans:
        c = cache.get(f"{arch}|{seed}|{s}|{p}")
        if not c:
            continue
        layers = [r["layer"] for r in c["clusters"]]
        fig.add_trace(go.Scatter(x=layers, y=[r["measured"] for r in c["clusters"]], mode="lines+markers",
                                 name=f"{p}: measured ({c['data_free']:.1f} % with data-free repair)"))
        fig.add_trace(go.Scatter(x=layers, y=[r["estimated"] for r in c["clusters"]], mode="lines",
                                 line=dict(dash="dot"), name=f"{p}: repair's estimate"))
    fig.update_layout(title=f"{arch} (MNIST, seed {seed}), every group at {s:.0%}, l1:<br>correlation of the channels "
                            "merged together (BatchNorm inputs, 256 images) vs the data-free repair's estimate",
                      xaxis_title="layer (forward order)", yaxis_title="mean within-cluster correlation")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.3])
    parser.add_argument("--plans", nargs="+", default=[p for p in PLANS if p != "IF-bary"], choices=list(PLANS))
    parser.add_argument("--per-layer", nargs="*", default=["IF-free", "IF-free+standardize", "centroid-cos+std", "fold"])
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    path = RESULTS / "data_free_plans.json"
    cache = json.loads(path.read_text()) if args.tables_only and path.exists() else run(args)
    text = header("python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:])) + tables(cache, args)
    print(text)
    (RESULTS / "data_free_plans.md").write_text(text + "\n")
    for arch in args.arch:
        for seed in args.seeds:
            for s in args.sparsity:
                fig = figure(cache, arch, seed, s, args.plans)
                if fig.data:
                    save_figure(fig, f"data_free_plans_{arch}_s{seed}_{int(100 * s)}", width=1400, height=650)  # HTML (+ PNG)


if __name__ == "__main__":
    main()
