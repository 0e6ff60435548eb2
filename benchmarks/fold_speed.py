"""Speed of ``prune(method="fold")`` (Model Folding, faithful): a whole torchvision model, and Hartigan's k-means.

``method="fold"`` clusters every group as Model Folding does (RobustScaler, PCA, Hartigan's k-means with 10
runs of at most 20 iterations: ``intrafusion_viz/plan/_hartigan.py``) and merges and repairs group by group
(``intrafusion_viz/repair/_fold_repair.py``).  Two tables:

* whole model: ``prune(model, x, sparsity, method="fold")`` on random weights, time in total and inside the
  channel vectors, the clustering and the surgery + repair;
* ``--hartigan N``: one N-channel group of a random VGG11-BN (VGG11's 512-channel groups for N = 512), clustered
  at 30/50/70 % removed by the ``hartigan-kmeans`` package as Model Folding calls it (RobustScaler, PCA,
  ``HKMeans(n_init=10, max_iter=20, n_jobs=1)``) and by ours (C kernel, numpy path), with the k-means
  objective of each on the same vectors.

    nice -n 10 python benchmarks/fold_speed.py                         # resnet50, 30 %
    nice -n 10 python benchmarks/fold_speed.py --models resnet50 resnext50_32x4d --sparsity 0.5
    nice -n 10 python benchmarks/fold_speed.py --hartigan 512
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import header, markdown_table, save_text  # noqa: E402


@contextmanager
def _timed(module, name: str, totals: dict, key: str):
    """Wrap ``module.name`` so its calls add their time to totals[key]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def whole_model(names, sparsity: float, size: int, argv) -> None:
    import torch
    import torchvision

    import intrafusion_viz as ifv
    from intrafusion_viz.plan import _hartigan
    from intrafusion_viz.repair import _fold_repair

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(2, 3, size, size)
        totals = {}
        with _timed(_fold_repair, "fold_vectors", totals, "vectors"), \
                _timed(_hartigan, "fold_labels", totals, "clustering"), \
                _timed(_fold_repair, "fold_surgery", totals, "surgery"):
            t = time.perf_counter()
            res = ifv.prune(model, x, sparsity, method="fold")
            total = time.perf_counter() - t
        rows.append([name, f"{sparsity:.0%}", len(res.groups), f"{total:.1f}", f"{totals.get('vectors', 0):.1f}",
                     f"{totals.get('clustering', 0):.1f}", f"{totals.get('surgery', 0):.1f}",
                     f"{res.params_before / 1e6:.2f}M -> {res.params_after / 1e6:.2f}M", _hartigan.hartigan_backend()])
        print(rows[-1], file=sys.stderr, flush=True)
    cols = ["model", "removed", "groups", "prune s", "vectors s", "clustering s", "surgery + repair s", "params",
            "Hartigan"]
    text = header("python benchmarks/fold_speed.py " + " ".join(argv)) \
        + f"\nprune(model, x, {sparsity:g}, method='fold'), random weights, input {size}x{size}, batch 2, one torch " \
        "thread (vectors: also read again for the repair's correlations)\n\n" + markdown_table(cols, rows)
    save_text("fold_speed.md", text + "\n")
    print(text)


def hartigan_group(n: int, argv) -> None:
    """Ours (C, numpy) vs the hartigan-kmeans package on one n-channel group of a random VGG11-BN."""
    import numpy as np
    import torch

    import intrafusion_viz as ifv
    from intrafusion_viz.plan import _hartigan
    from intrafusion_viz.repair._fold_repair import fold_vectors

    torch.manual_seed(0)
    model = ifv.models.vgg11_bn(num_classes=10).eval()
    groups = ifv.find_groups(model, torch.randn(1, 3, 32, 32))
    group = next(g for g in groups if g.size == n)
    vec = fold_vectors(model, group)
    gram = _hartigan.scaled_gram(vec)
    try:
        from hkmeans import HKMeans
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import RobustScaler
    except ImportError:
        HKMeans = None
    rows = []
    for removed in (0.3, 0.5, 0.7):
        k = int(n * (1.0 - removed))
        seeds = _hartigan.FoldSeeds(0).next()
        results = {}
        if HKMeans is not None:  # Model Folding's WeightClustering, in float32 as theirs
            t = time.perf_counter()
            z = PCA(n_components=n).fit_transform(RobustScaler().fit_transform(vec.float().numpy()))
            km = HKMeans(n_clusters=k, random_state=0, n_init=10, n_jobs=1, max_iter=20).fit(z)
            results["hartigan-kmeans 0.0.6 (C++), + scaler and PCA"] = (time.perf_counter() - t, km.labels_)
        for backend in ("c", "numpy"):
            t = time.perf_counter()
            labels, _ = _hartigan.hartigan_kmeans(_hartigan.scaled_gram(vec), k, seeds, backend=backend)
            results[f"ours ({backend}), + scaler and Gram"] = (time.perf_counter() - t, labels)
        ref = next(iter(results.values()))[1]
        for label, (secs, labels) in results.items():
            rows.append([n, f"{removed:.0%}", k, label, f"{secs:.2f}", f"{_hartigan.kmeans_objective(gram, labels, k):.2f}",
                         "yes" if np.array_equal(labels, ref) else "no"])
            print(rows[-1], file=sys.stderr, flush=True)
    cols = ["channels", "removed", "k", "clustering", "s (10 runs)", "k-means objective", "labels = first row's"]
    text = header("python benchmarks/fold_speed.py " + " ".join(argv)) \
        + f"\nVGG11-BN (random weights) group {group.name!r}: Model Folding's vectors, seed 0 (the same run seeds)\n\n" \
        + markdown_table(cols, rows)
    save_text(f"fold_speed_hartigan_{n}.md", text + "\n")
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["resnet50"], help="torchvision model names")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--input", type=int, default=32, help="input size (pixels)")
    parser.add_argument("--hartigan", type=int, metavar="N", help="instead: one N-channel group, package vs ours")
    args = parser.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    import torch

    torch.set_num_threads(1)
    if args.hartigan:
        return hartigan_group(args.hartigan, argv)
    whole_model(args.models, args.sparsity, args.input, argv)


if __name__ == "__main__":
    main()
