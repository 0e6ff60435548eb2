"""Model Folding (``prune(method="fold")``) on grouped convs: where the time goes, before and after.

``method="fold"`` clusters every conv group of a grouped conv on its own (k-means, best of 10 starts,
after Model Folding's ``RobustScaler``).  Each call's ``RobustScaler`` took its percentiles one column
at a time (scikit-learn's Python loop: 0.7 s for a 32 x 2,337 block of ResNeXt50's layer4), which
made ResNeXt50 take tens of minutes; :func:`intrafusion_viz.plan._kmeans.robust_scale` takes them all at
once, bit for bit the same.  And k-means on a wide ungrouped group (2,048 channels, k = 1,434) spent
minutes in k-means++ seeding at O(n d) per drawn centre; :func:`intrafusion_viz.plan._kmeans.kmeans` now reads
distances off the Gram matrix (O(n) per draw, O(n^2) per Lloyd step), with the same draws.

Per model: ``prune(model, x, sparsity, method="fold")`` timed with the old scaler and k-means (scikit-learn's
scaler and the direct k-means, put back for the "before" row) and the new ones, the time inside ``cluster_plan`` / the scaler / k-means,
and whether the two pruned models are identical (every tensor of the state dict equal).

    nice -n 10 python benchmarks/fold_speed.py                            # resnext50_32x4d, 30 %
    nice -n 10 python benchmarks/fold_speed.py --models resnext50_32x4d regnet_x_400mf --skip-before
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
def _timed(module, name: str, totals: dict, key: str, replace=None):
    """Wrap ``module.name`` (optionally replaced by ``replace``) so its calls add their time to totals[key]."""
    original = getattr(module, name)
    inner = replace or original

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t
            totals[key + " calls"] = totals.get(key + " calls", 0) + 1

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def _kmeans_direct(x, k, n_init=10, max_iter=20, seed=0, spherical=False):
    """The k-means before the Gram-matrix distances: explicit centres, O(n d) per k-means++ step."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = x.double()
    n = x.shape[0]
    sq = (x * x).sum(1)
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        first = int(torch.randint(n, (1,), generator=gen))
        centers = [x[first]]
        d2 = ((x - x[first]) ** 2).sum(1)
        for _ in range(1, k):
            total = float(d2.sum())
            idx = (int(torch.randint(n, (1,), generator=gen)) if total <= 0
                   else int(torch.multinomial(d2 / total, 1, generator=gen)))
            centers.append(x[idx])
            d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
        c = torch.stack(centers)
        labels = None
        for _ in range(max_iter):
            dist = sq[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).double()
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            filled = counts > 0
            c[filled] = sums[filled] / counts[filled, None]
            if spherical:
                c[filled] = c[filled] / c[filled].norm(dim=1, keepdim=True).clamp_min(1e-12)
        inertia = float(dist.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _sklearn_scale(x):
    from sklearn.preprocessing import RobustScaler

    return RobustScaler().fit_transform(x)


def run(model, x, sparsity: float, old: bool, groups=None):
    import intrafusion_viz as ifv
    from intrafusion_viz.plan import _kmeans as _fold

    totals = {}
    with _timed(_fold, "robust_scale", totals, "scaler", _sklearn_scale if old else None), \
            _timed(_fold, "kmeans", totals, "k-means", _kmeans_direct if old else None), \
            _timed(_fold, "cluster_plan", totals, "cluster_plan"):
        t = time.perf_counter()
        res = ifv.prune(model, x, sparsity, method="fold", groups=groups)
        totals["total"] = time.perf_counter() - t
    return res, totals


def kmeans_only(n: int, k: int, argv) -> None:
    """One k-means start (k-means++ seeding and up to 20 Lloyd steps), direct vs Gram-matrix distances."""
    import torch

    from intrafusion_viz.plan import _kmeans as _fold

    x = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times, labels = {}, {}
    for label, fn in (("after (Gram matrix)", _fold.kmeans), ("before (direct)", _kmeans_direct)):
        t = time.perf_counter()
        labels[label] = fn(x, k, n_init=1)
        times[label] = time.perf_counter() - t
        print(label, f"{times[label]:.1f} s", file=sys.stderr, flush=True)
    same = torch.equal(*labels.values())
    rows = [[f"{n} x {n}", k, label, f"{t:.2f}", "identical" if same else "DIFFERENT"] for label, t in times.items()]
    text = header("python benchmarks/fold_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])) \
        + "\n" + markdown_table(["points", "k", "k-means", "s (one start)", "labels"], rows)
    save_text(f"fold_speed_kmeans_{n}.md", text + "\n")
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["resnext50_32x4d"], help="torchvision model names")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--input", type=int, default=32, help="input size (pixels)")
    parser.add_argument("--groups", nargs="*", type=int, help="only these group indices (default: every group)")
    parser.add_argument("--kmeans", nargs=2, type=int, metavar=("N", "K"),
                        help="instead: k-means alone (one start) on N random points in N dimensions, K clusters")
    parser.add_argument("--skip-before", action="store_true", help="only the new scaler (the old one takes minutes)")
    args = parser.parse_args(argv)
    import torch
    import torchvision

    torch.set_num_threads(1)
    if args.kmeans:
        return kmeans_only(*args.kmeans, argv)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(2, 3, args.input, args.input)
        results = {}
        for label, old in ([] if args.skip_before else [("before (scikit-learn scaler, direct k-means)", True)]) \
                + [("after", False)]:
            res, tot = run(model, x, args.sparsity, old, args.groups)
            results[label] = res
            rows.append([name, "all" if args.groups is None else " ".join(map(str, args.groups)), label, f"{tot['total']:.1f}", f"{tot.get('cluster_plan', 0):.1f}",
                         tot.get("cluster_plan calls", 0), f"{tot.get('scaler', 0):.1f}", f"{tot.get('k-means', 0):.1f}",
                         f"{res.params_before / 1e6:.2f}M -> {res.params_after / 1e6:.2f}M", ""])
            print(rows[-1], file=sys.stderr, flush=True)
        if len(results) == 2:
            a, b = (r.model.state_dict() for r in results.values())
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            rows[-1][-1] = "identical" if same else "DIFFERENT"
    cols = ["model", "groups", "k-means and scaler", "prune s", "cluster_plan s", "calls", "scaler s", "k-means s", "params",
            "pruned model vs before"]
    text = header("python benchmarks/fold_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])) \
        + f"\nprune(model, x, {args.sparsity:g}, method='fold'), random weights, input {args.input}x{args.input}, " \
        "batch 2, one torch thread\n\n" + markdown_table(cols, rows)
    save_text("fold_speed.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
