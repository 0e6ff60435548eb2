"""Engine speed on CPU: one group and the whole model, default vs Intra-Fusion; the exact OT solve.

    python benchmarks/bench_engine.py            # full table (about a minute)
    python benchmarks/bench_engine.py --quick    # fewer repeats, smaller OT sizes

Prints markdown tables. "first call" includes tracing the model; later calls reuse the cached trace.
"paper-style" re-traces the model for every group, as the paper's code does (a fresh Torch-Pruning
DependencyGraph each time), to show what the cache saves.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

import intrafusion_viz as ifv
from intrafusion_viz import models


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_models(repeats):
    import torch_pruning as tp

    rows = []
    x = torch.randn(1, 3, 32, 32)
    for name in ("vgg11_bn", "resnet18"):
        torch.manual_seed(0)
        model = models.build_model(name).eval()
        start = time.perf_counter()
        groups = ifv.find_groups(model, x)
        first = time.perf_counter() - start
        mid = max(groups, key=lambda g: (g.size, -abs(g.index - len(groups) // 2)))  # a 512-channel group
        retrace = timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), repeats)
        for method in ("default", "intra-fusion"):
            one = timed(lambda: ifv.prune(model, x, 0.5, method=method, groups=[mid.index]), repeats)
            whole = timed(lambda: ifv.prune(model, x, 0.5, method=method), repeats)
            rows.append((name, method, mid.name, mid.size, one, one + retrace, whole, first))
    print("| model | method | one group (n) | one group, cached | one group, paper-style re-trace | whole model (50%) | first trace |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, method, gname, n, one, paper, whole, first in rows:
        print(f"| {name} | {method} | {gname} ({n}) | {one:.3f} s | {paper:.3f} s | {whole:.3f} s | {first:.3f} s |")


def bench_ot(sizes, repeats):
    import ot

    print("\n| n | sparsity | k | ours (exact) | POT emd, full problem | Sinkhorn (reg 0.05) | same cost |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    rng = torch.Generator().manual_seed(0)
    for n in sizes:
        features = torch.randn(n, 256, generator=rng)
        for sparsity in (0.3, 0.5, 0.7):
            k = ifv.num_kept(n, sparsity)
            kept = torch.arange(k)
            cost = ifv.cost_matrix(features, kept)
            a, b = ifv.masses("uniform", None, n), ifv.masses("uniform", None, k)
            plan = ifv.transport_plan(cost, a, b, kept=kept)
            ours = timed(lambda: ifv.transport_plan(cost, a, b, kept=kept), repeats)
            start = time.perf_counter()
            full = ot.emd(a.numpy(), b.numpy(), cost.numpy(), numItermax=10**8)
            pot = time.perf_counter() - start
            sink = timed(lambda: ifv.transport_plan(cost, a, b, ifv.OTConfig(solver="sinkhorn")), 1)
            same = np.isclose(float((plan * cost).sum()), float((full * cost.numpy()).sum()), rtol=1e-9)
            print(f"| {n} | {sparsity:.0%} | {k} | {ours:.3f} s | {pot:.3f} s | {sink:.3f} s | {'yes' if same else 'NO'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); use 1 on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    bench_models(repeats)
    bench_ot((512, 1024) if args.quick else (512, 1024, 2048, 4096), 1 if args.quick else 3)


if __name__ == "__main__":
    main()
