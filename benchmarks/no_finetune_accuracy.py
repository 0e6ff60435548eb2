"""Accuracy without fine-tuning: every group of a converged reference network pruned at once, no data.

Question: on converged VGG11-BN and ResNet18 (MNIST 8k split and Fashion-MNIST), which method keeps the
most accuracy without fine-tuning, with no data (data-free repair, or BatchNorm statistics re-estimated on
synthetic inputs) and with 512 unlabeled training images?

Methods (importance l1, every group, mean and spread over the 3 reference seeds, prune seed = model seed):

* ``default``: default pruning (``method="default"``: drop the least important channels), no repair;
* ``default+bn``: the same, BatchNorm statistics re-estimated on 512 unlabeled training images;
* ``fold``: ``method="fold"`` (Model Folding as this library implements it, its data-free repair);
* ``theirs``: Model Folding's own code (github marza96/ModelFolding @33e2818), run through
  ``benchmarks/model_folding`` (``run_theirs``; skipped when that runner or their checkout is missing);
* ``ifv``: ``ifv.prune(model, x, s)`` with no other argument (the library's default call; on these networks
  the same as ``capped-2-hart-euc+syn``);
* ``capped-2-hart-euc``: Intra-Fusion with capacities, ``OTConfig.capped()`` (Hartigan centroid targets,
  transport with capacity 2) + data-free repair; ``cfold-<c>``: ``method="fold"`` with
  ``OTConfig.capped_fold(capacity=c)``; ``paper``: ``OTConfig.paper()``, the balanced plan;
* ``<method>+bn``: then ``ifv.repair(..., mode="bn")`` on 512 unlabeled training images;
* ``<method>+syn``: then ``ifv.repair(..., mode="bn")`` on 64 synthetic inputs, no data at all
  (``ifv.synthetic_inputs(model, x, n=64, steps=200, seed=0)``: ZeroQ inputs made from the unpruned model's
  BatchNorm statistics; made once per model and cached in ``benchmarks/results/synthetic_<dataset>_<arch>_s<seed>.pt``
  with the seconds they took, which a cell's seconds do not include);
* more candidates (``--methods``): ``data_free_old`` (``OTConfig.data_free()``, Lloyd clusters, + data-free
  repair), ``capped-<c>[-hart][-euc][-mi]``, ``free[-hart][-euc]`` (Intra-Fusion plans, see ``_result``).

Every cell is cached as one JSON line in ``benchmarks/results/no_finetune_accuracy.jsonl`` (rerunning skips
cells already there; ``--force`` recomputes). Prints one table per network and writes
``benchmarks/results/no_finetune_accuracy.html`` (plotly).

    python benchmarks/no_finetune_accuracy.py                       # everything cached/trained so far
    python benchmarks/no_finetune_accuracy.py --datasets mnist --arch vgg11_bn --seeds 0 --sparsity 0.7
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "no_finetune_accuracy.jsonl"
# the evidence's columns (docs/results/no_finetune_accuracy.md); "capped-2-hart-euc+syn" is what
# ifv.prune(model, x, s) runs on these networks (ifv: the call itself)
METHODS = ("theirs", "fold", "capped-2-hart-euc", "cfold-3", "paper", "default", "fold+syn", "capped-2-hart-euc+syn",
           "default+bn", "fold+bn", "capped-2-hart-euc+bn")
LABELS = {
    "default": "default pruning",
    "default+bn": "default pruning + bn (512 images)",
    "fold": 'method="fold" (Model Folding)',
    "theirs": "Model Folding's code",
    "ifv": "ifv.prune(model, x, s) (no data)",
    "paper": "OTConfig.paper() (balanced plan)",
    "fold+bn": 'fold + bn (512 images)',
    "capped-2-hart-euc": 'Intra-Fusion, capacities (OTConfig.capped())',
    "capped-2-hart-euc+bn": 'OTConfig.capped() + bn (512 images)',
    "cfold-3": 'fold, capacity 3 (OTConfig.capped_fold())',
    "cfold-3+bn": "fold, capacity 3 + bn (512 images)",
    "data_free_old": "OTConfig.data_free() + data-free (before)",
    "fold+syn": "fold + bn on synthetic inputs (no data)",
    "capped-2-hart-euc+syn": "ifv.prune(model, x, s): OTConfig.capped() + bn on synthetic inputs (no data)",
    "default+syn": "default pruning + bn on synthetic inputs (no data)",
}
DATASET_LABEL = {"mnist": "MNIST (8k split)", "fashion-mnist": "Fashion-MNIST"}
SHORT = {  # the figure's legend
    "theirs": "Model Folding's code", "default": "default pruning", "paper": "the paper's plan",
    "capped-2-hart-euc": "capacities, data-free repair", "fold+syn": "fold + synthetic repair",
    "capped-2-hart-euc+syn": "<b>default call</b> (capacities + synthetic repair)", "fold+bn": "fold + bn, 512 images",
    "fold": "fold", "capped-2-hart-euc+bn": "capacities + bn, 512 images", "default+bn": "default + bn, 512 images",
}


def _theirs_runner():
    """h20a's ``run_theirs(model, arch, sparsity, seed)``, or None when it (or their checkout) is missing."""
    try:
        from model_folding.theirs import load_their_code, run_theirs  # benchmarks/model_folding/ (their checkout:
        load_their_code()  # --theirs there, or $MODEL_FOLDING_SRC, default <project root>/../ModelFolding)
    except Exception as err:  # noqa: BLE001 - any problem means "not available here"
        print(f"Model Folding's own code not available: {type(err).__name__}: {err}", flush=True)
        return None
    return run_theirs


def _result(ifv, model, x1, s, method, seed):
    """``prune``'s result of one method (its own repair included)."""
    OTConfig = ifv.OTConfig
    if method == "default":
        return ifv.prune(model, x1, s, method="default", seed=seed)
    if method == "fold":
        return ifv.prune(model, x1, s, method="fold", seed=seed)
    if method.startswith("cfold-"):  # method="fold" with capacity-bounded clusters
        return ifv.prune(model, x1, s, method="fold", seed=seed,
                         config=OTConfig(target_mass="capped", capacity=float(method.split("-")[1])))
    if method == "ifv":
        return ifv.prune(model, x1, s, seed=seed)
    if method == "paper":
        return ifv.prune(model, x1, s, config=OTConfig.paper(), repair="none", seed=seed)
    if method == "data_free_old":
        return ifv.prune(model, x1, s, config=OTConfig.data_free(), repair="data-free", seed=seed)
    if method.startswith(("capped-", "free")):  # capped-<capacity>[-mi][-hart][-euc], free[-hart][-euc]
        parts = method.split("-")
        settings = dict(target_mass="free") if parts[0] == "free" else dict(target_mass="capped",
                                                                              capacity=float(parts[1]))
        if "hart" in parts:
            settings["centroid_init"] = "hartigan"
        if "euc" in parts:
            settings["normalize"] = False
        if "mi" in parts:
            cfg = OTConfig(standardize=True, **settings)
        else:
            cfg = OTConfig.data_free(**settings)
        return ifv.prune(model, x1, s, config=cfg, repair="data-free", seed=seed)
    raise ValueError(f"unknown method {method!r}")


def _prune_cell(ifv, model, x1, s, method, seed, calib, synthetic=None):
    """The pruned (and repaired) network of one method; ``<method>+bn``: then BatchNorm re-estimated on ``calib``,
    ``<method>+syn``: on ``synthetic`` (the model's synthetic inputs, :func:`_synthetic`)."""
    if method.endswith("+bn"):
        return ifv.repair(_result(ifv, model, x1, s, method[:-3], seed), model, calib, mode="bn")
    if method.endswith("+syn"):
        return ifv.repair(_result(ifv, model, x1, s, method[:-4], seed), model, synthetic, mode="bn")
    return _result(ifv, model, x1, s, method, seed).model


def _synthetic(ifv, model, x1, dataset, arch, seed):
    """The unpruned model's 64 synthetic inputs (ZeroQ, 200 steps, seed 0), made once and cached on disk."""
    path = RESULTS / f"synthetic_{dataset}_{arch}_s{seed}.pt"
    if path.exists():
        saved = torch.load(path)
        print(f"{dataset} {arch} s{seed}: synthetic inputs from {path.name} (made in {saved['seconds']:.0f} s)",
              flush=True)
        return saved["inputs"]
    from intrafusion_viz.repair._synthetic import bn_statistics_gap

    start = time.perf_counter()
    inputs = ifv.synthetic_inputs(model, x1, n=64, steps=200, seed=0)
    seconds = time.perf_counter() - start
    gap = bn_statistics_gap(model, inputs)
    torch.save(dict(inputs=inputs, seconds=round(seconds, 2), n=64, steps=200, seed=0, gap=gap), path)
    print(f"{dataset} {arch} s{seed}: synthetic inputs made in {seconds:.0f} s (BatchNorm statistics gap "
          f"{gap:.3g}), saved to {path.name}", flush=True)
    return inputs


def load_cache(path=CACHE, key=("dataset", "arch", "seed", "sparsity", "method")):
    """The cells of a JSON-lines cache, keyed by the tuple of ``key``'s fields (the last line of a key wins)."""
    cells = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                cells[tuple(c[k] for k in key)] = c
    return cells


def run(args):
    import intrafusion_viz as ifv

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cells = load_cache()
    theirs = _theirs_runner() if "theirs" in args.methods else None
    if "theirs" in args.methods and theirs is None:
        print("Model Folding's own code: runner benchmarks/model_folding not available here; column skipped",
              flush=True)
    for dataset in args.datasets:
        try:
            (x_train, _), (x_test, y_test) = ifv.reference_data(dataset=dataset)
        except FileNotFoundError as err:
            print(f"{dataset}: data not found, skipped ({err})", flush=True)
            continue
        if args.n_test:
            x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
        calib = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:512]]
        for arch in args.arch:
            for seed in args.seeds:
                try:
                    model = ifv.reference_model(arch, seed, train_if_missing=False, dataset=dataset)
                except FileNotFoundError:
                    print(f"{dataset} {arch} s{seed}: no checkpoint yet, skipped", flush=True)
                    continue
                base_key = (dataset, arch, seed, 0.0, "original")
                if base_key not in cells:
                    _append(cells, base_key, ifv.accuracy(model, (x_test, y_test)), 0.0)
                synthetic = None  # made (or loaded) when a +syn cell first needs it
                for s in args.sparsity:
                    for method in args.methods:
                        key = (dataset, arch, seed, s, method)
                        if key in cells and not args.force:
                            continue
                        if method == "theirs" and theirs is None:
                            continue
                        if method.endswith("+syn") and synthetic is None:
                            synthetic = _synthetic(ifv, model, x_test[:1], dataset, arch, seed)
                        start = time.perf_counter()
                        try:
                            if method == "theirs":
                                pruned = theirs(model, arch, s, seed, n_jobs=1)
                            else:
                                pruned = _prune_cell(ifv, model, x_test[:1], s, method, seed, calib, synthetic)
                            acc = ifv.accuracy(pruned, (x_test, y_test))
                        except Exception as err:  # noqa: BLE001 - recorded, the sweep goes on
                            print(f"{key}: FAILED {type(err).__name__}: {err}", flush=True)
                            continue
                        _append(cells, key, acc, time.perf_counter() - start)
                        print(f"{dataset} {arch} s{seed} {s:.0%} {method}: {acc:.2f} % "
                              f"({cells[key]['seconds']:.0f} s)", flush=True)
    return cells


def _append(cells, key, acc, seconds):
    dataset, arch, seed, s, method = key
    cell = dict(dataset=dataset, arch=arch, seed=seed, sparsity=s, method=method, accuracy=round(acc, 3),
                seconds=round(seconds, 2))
    cells[key] = cell
    with CACHE.open("a") as f:
        f.write(json.dumps(cell) + "\n")


def summary(cells, dataset, arch, s, method):
    """(mean, spread = max - min, per-seed values) over the seeds measured."""
    vals = [c["accuracy"] for (d, a, _, sp, m), c in sorted(cells.items(), key=lambda kv: kv[0][2])
            if d == dataset and a == arch and sp == s and m == method]
    if not vals:
        return None
    return statistics.fmean(vals), max(vals) - min(vals), vals


def tables(cells, args) -> str:
    out = []
    for dataset in args.datasets:
        for arch in args.arch:
            methods = [m for m in args.methods if any(summary(cells, dataset, arch, s, m) for s in args.sparsity)]
            if not methods:
                continue
            orig = summary(cells, dataset, arch, 0.0, "original")
            seeds = len(orig[2]) if orig else 0
            out.append(f"\n#### {arch}, {DATASET_LABEL.get(dataset, dataset)}: every group pruned, no fine-tuning "
                       f"(mean over {seeds} seeds, spread max - min in brackets; unpruned "
                       f"{orig[0]:.2f} %)\n" if orig else f"\n#### {arch}, {dataset}\n")
            out.append("| removed | " + " | ".join(LABELS.get(m, m) for m in methods) + " |")
            out.append("|---|" + "---:|" * len(methods))
            for s in args.sparsity:
                row = []
                for m in methods:
                    r = summary(cells, dataset, arch, s, m)
                    row.append(f"{r[0]:.1f} ({r[1]:.1f}, n={len(r[2])})" if r else "")
                out.append(f"| {s:.0%} | " + " | ".join(row) + " |")
    return "\n".join(out)


def figure(cells, args):
    """One panel per (data set, network), rows = data sets: accuracy against sparsity, mean over seeds,
    bars = min-max; sized for a laptop screen (responsive width)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    datasets = [d for d in args.datasets if any(k[0] == d for k in cells)]
    archs = [a for a in args.arch if any(k[1] == a for k in cells)]
    seeds = {(d, a): len(summary(cells, d, a, 0.0, "original")[2]) for d in datasets for a in archs
             if summary(cells, d, a, 0.0, "original")}
    fig = make_subplots(rows=len(datasets), cols=len(archs), shared_yaxes=True, vertical_spacing=0.12,
                        subplot_titles=[f"{a}, {DATASET_LABEL.get(d, d)} ({seeds.get((d, a), 0)} seed"
                                        f"{'s' if seeds.get((d, a), 0) != 1 else ''})" for d in datasets for a in archs])
    colors = ["#636efa", "#00cc96", "#ef553b", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#222222"]
    for row, d in enumerate(datasets, start=1):
        for col, a in enumerate(archs, start=1):
            for i, m in enumerate(args.methods):
                pts = [(s, summary(cells, d, a, s, m)) for s in args.sparsity]
                pts = [(s, r) for s, r in pts if r]
                if not pts:
                    continue
                fig.add_trace(go.Scatter(
                    x=[100 * s for s, _ in pts], y=[r[0] for _, r in pts], mode="lines+markers",
                    name=SHORT.get(m, LABELS.get(m, m)), legendgroup=m, showlegend=(row, col) == (1, 1),
                    line=dict(color=colors[i % len(colors)], width=3 if m == "capped-2-hart-euc+syn" else 1.5),
                    error_y=dict(type="data", symmetric=False, array=[max(r[2]) - r[0] for _, r in pts],
                                 arrayminus=[r[0] - min(r[2]) for _, r in pts])), row=row, col=col)
            fig.update_xaxes(title_text="channels removed in every group (%)" if row == len(datasets) else None,
                             tickvals=[100 * s for s in args.sparsity], row=row, col=col)
        fig.update_yaxes(title_text="test accuracy (%)", range=[0, 100], row=row, col=1)
    fig.update_layout(title=dict(text="Accuracy without fine-tuning, every group pruned (importance l1): "
                                      "mean over seeds, bars min-max", font=dict(size=15)),
                      height=300 * len(datasets) + 120, margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="v", x=1.02, y=1, font=dict(size=11),
                                  title=dict(text="no data, unless it says images")))
    return fig


def one_group(args):
    """One group pruned at a time (each prunable group in turn), every method: mean accuracy over the groups.

    Methods: the labels of ``configs`` below (each prune's own repair, ``repair="auto"``); ``<label>+syn``
    (``capped+syn``, ``fold+syn``, ``default+syn``): then ``ifv.repair(..., mode="bn")`` on the model's 64
    synthetic inputs (:func:`_synthetic`).

    Cached in benchmarks/results/no_finetune_one_group.jsonl; prints one table per network.
    """
    import intrafusion_viz as ifv

    torch.set_num_threads(args.threads)
    path = RESULTS / "no_finetune_one_group.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            c = json.loads(line)
            done[(c["dataset"], c["arch"], c["seed"], c["sparsity"], c["method"], c["group"])] = c
    configs = {"intra-fusion (OTConfig())": ("intra-fusion", lambda: ifv.OTConfig()),
               "paper": ("intra-fusion", lambda: ifv.OTConfig.paper()),
               "default": ("default", lambda: None), "fold": ("fold", lambda: None),
               "cfold-3": ("fold", lambda: ifv.OTConfig(target_mass="capped", capacity=3.0)),
               "capped-2": ("intra-fusion", lambda: ifv.OTConfig.data_free(target_mass="capped", capacity=2.0)),
               "capped": ("intra-fusion", lambda: ifv.OTConfig.capped())}
    # "<label>+syn": that method, then BatchNorm statistics re-estimated on the model's synthetic inputs (_synthetic)
    configs.update({f"{label}+syn": configs[label] for label in ("capped", "fold", "default")})
    for dataset in args.datasets:
        (_, _), (x_test, y_test) = ifv.reference_data(dataset=dataset)
        if args.n_test:
            x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
        for arch in args.arch:
            for seed in args.seeds:
                try:
                    model = ifv.reference_model(arch, seed, train_if_missing=False, dataset=dataset)
                except FileNotFoundError:
                    continue
                groups = [g.index for g in ifv.find_groups(model, x_test[:1]) if g.mergeable and g.size > 1]
                synthetic = None  # made (or loaded) when a +syn method first needs it
                for s in args.sparsity:
                    for label in args.methods:
                        method, cfg = configs[label]
                        for gi in groups:
                            key = (dataset, arch, seed, s, label, gi)
                            if key in done:
                                continue
                            res = ifv.prune(model, x_test[:1], s, method=method, config=cfg(), groups=[gi],
                                            seed=seed, on_unmergeable="skip")
                            pruned = res.model
                            if label.endswith("+syn"):
                                if synthetic is None:
                                    synthetic = _synthetic(ifv, model, x_test[:1], dataset, arch, seed)
                                pruned = ifv.repair(res, model, synthetic, mode="bn")
                            acc = ifv.accuracy(pruned, (x_test, y_test))
                            done[key] = dict(dataset=dataset, arch=arch, seed=seed, sparsity=s, method=label,
                                             group=gi, accuracy=round(acc, 3))
                            with path.open("a") as f:
                                f.write(json.dumps(done[key]) + "\n")
                        vals = [c["accuracy"] for k, c in done.items() if k[:5] == (dataset, arch, seed, s, label)]
                        print(f"{dataset} {arch} s{seed} one group at {s:.0%}, {label}: mean over {len(vals)} groups "
                              f"{statistics.fmean(vals):.2f} %, worst {min(vals):.2f} %", flush=True)


def drift(args):
    """Why: per-layer drift (``ifv.layer_drift``) and cluster sizes of free vs capped clusters, one model.

    Writes benchmarks/results/no_finetune_drift.json and no_finetune_drift_<dataset>_<arch>.html.
    """
    import intrafusion_viz as ifv
    from intrafusion_viz.figures._diagnostics import drift_figure

    torch.set_num_threads(args.threads)
    out_json = RESULTS / "no_finetune_drift.json"
    saved = json.loads(out_json.read_text()) if out_json.exists() else {}
    for dataset in args.datasets:
        (x_train, _), (x_test, y_test) = ifv.reference_data(dataset=dataset)
        if args.n_test:
            x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
        for arch in args.arch:
            seed, s = args.seeds[0], args.sparsity[-1]
            try:
                model = ifv.reference_model(arch, seed, train_if_missing=False, dataset=dataset)
            except FileNotFoundError:
                continue
            variants = {}
            for method in args.methods:
                if method in ("theirs", "default+bn", "ifv+bn"):
                    continue
                key = f"{dataset}|{arch}|{seed}|{s}|{method}"
                if key not in saved:
                    res = _result(ifv, model, x_test[:1], s, method, seed)  # its own repair included
                    fixed = res.model
                    rows = ifv.layer_drift(model, res, x_test[:256], model=fixed)
                    sizes = [int(torch.bincount(torch.as_tensor(g.plan).argmax(1), minlength=g.k).max())
                             for g in res.groups if g.k < g.n]
                    saved[key] = dict(drift=rows, max_cluster=sizes, accuracy=ifv.accuracy(fixed, (x_test, y_test)))
                    out_json.write_text(json.dumps(saved))
                entry = saved[key]
                variants[f"{LABELS.get(method, method)}: {entry['accuracy']:.1f} %"] = entry["drift"]
                last = [r for r in entry["drift"] if r.get("pruned")][-1]
                print(f"{key}: accuracy {entry['accuracy']:.1f} %, largest cluster per layer {entry['max_cluster']}, "
                      f"last pruned layer corr {last['corr']:.2f} std ratio {last['std_ratio']:.2f}, "
                      f"top-1 agreement {entry['drift'][-1]['agreement']:.1f} %", flush=True)
            if variants:
                fig = drift_figure(variants, model_name=f"{arch} ({DATASET_LABEL.get(dataset, dataset)}, seed {seed})",
                                   method="every group", importance="l1", sparsity=s, metric="corr")
                fig.write_html(RESULTS / f"no_finetune_drift_{dataset}_{arch}.html", include_plotlyjs="cdn")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--arch", nargs="+", default=["vgg11_bn", "resnet18"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n-test", type=int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="recompute cached cells")
    parser.add_argument("--tables-only", action="store_true", help="print the tables from the cache")
    parser.add_argument("--one-group", action="store_true",
                        help="prune one group at a time (methods: default, fold, cfold-3, capped-2, capped (OTConfig.capped()), "
                             "paper, 'intra-fusion (OTConfig())', capped+syn, fold+syn, default+syn) instead of "
                             "every group")
    parser.add_argument("--drift", action="store_true",
                        help="per-layer drift of each method (first seed, last sparsity) instead of accuracy")
    args = parser.parse_args(argv)
    if args.drift:
        return drift(args)
    if args.one_group:
        return one_group(args)
    cells = load_cache() if args.tables_only else run(args)
    print(tables(cells, args))
    if cells:
        fig = figure(cells, args)
        fig.write_html(RESULTS / "no_finetune_accuracy.html", include_plotlyjs="cdn")
        print(f"figure: {RESULTS / 'no_finetune_accuracy.html'}")


if __name__ == "__main__":
    main()
