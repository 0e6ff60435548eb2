"""Speed on CPU (and CUDA when present): prune one group / the whole model, and OT solve scaling.

1. ``prune`` wall time for VGG11-BN and ResNet18 (CIFAR widths, 32x32 inputs): default pruning,
   Intra-Fusion (exact OT) and Intra-Fusion (Sinkhorn), for one group and for the whole model.
2. OT solve time for one group of ``n`` channels at 50% sparsity (k = n/2) with random 576-d
   channel vectors: the engine's exact solver (kept channels keep their mass; the rest is an
   assignment via scipy), plain ``ot.emd`` on the full n x k problem, and Sinkhorn (engine settings:
   log-domain, reg 0.05 of the largest cost).  Each solve runs in a child process killed after
   ``--budget`` seconds ("skipped (> X s)").

    python benchmarks/speed.py            # n = 256 ... 8192, 120 s budget per solve
    python benchmarks/speed.py --quick    # n = 256 ... 1024, 20 s budget
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import RESULTS, header, markdown_table, save_figure, save_text  # noqa: E402

SOLVERS = ("engine exact (reduced)", "plain ot.emd (full)", "sinkhorn (engine)")


def ot_problem(n: int, seed: int = 0, d: int = 576):
    """Cost (n, n/2), uniform masses and kept indices for n random channel vectors."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = ifv.num_kept(n, 0.5)
    importance = features.abs().sum(1)
    kept = torch.sort(torch.topk(importance, k).indices).values
    cost = ifv.cost_matrix(features, kept, ifv.OTConfig())
    return cost, ifv.masses("uniform", None, n), ifv.masses("uniform", None, k), kept


def solve_once(solver: str, n: int) -> float:
    cost, a, b, kept = ot_problem(n)
    start = time.perf_counter()
    if solver == "engine exact (reduced)":
        ifv.transport_plan(cost, a, b, ifv.OTConfig(), kept=kept)
    elif solver == "plain ot.emd (full)":
        import ot
        ot.emd(a.numpy(), b.numpy(), cost.numpy(), numItermax=max(100_000, 50 * cost.numel()))
    else:
        ifv.transport_plan(cost, a, b, ifv.OTConfig(solver="sinkhorn"))
    return time.perf_counter() - start


def _child(solver, n, queue):
    torch.set_num_threads(1)
    queue.put(solve_once(solver, n))


def timed(solver: str, n: int, budget: float):
    """Seconds of one solve in a child process, or None when it ran past ``budget``."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(solver, n, queue))
    proc.start()
    proc.join(budget + 30)  # the budget counts the solve; problem set-up is extra
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return queue.get() if not queue.empty() else None


def prune_times(repeats: int):
    """Rows (model, scope, method, seconds) of prune() wall time on CPU."""
    rows = []
    setups = [("vgg11_bn", ifv.models.vgg11_bn(), torch.randn(1, 3, 32, 32), "features.22"),
              ("resnet18", ifv.models.resnet18(), torch.randn(1, 3, 32, 32), "layer4.0.conv1")]
    methods = [("default", "default", ifv.OTConfig()), ("intra-fusion (exact)", "intra-fusion", ifv.OTConfig()),
               ("intra-fusion (sinkhorn)", "intra-fusion", ifv.OTConfig(solver="sinkhorn"))]
    for name, model, x, group in setups:
        model.eval()
        ifv.find_groups(model, x)  # tracing is cached per model: time it once, separately
        for scope, selection in ((f"one group ({group})", [group]), ("whole model", None)):
            for label, method, config in methods:
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    ifv.prune(model, x, sparsity=0.5, method=method, groups=selection, config=config)
                    times.append(time.perf_counter() - start)
                rows.append((name, scope, label, min(times)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per OT solve before it is skipped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.budget, args.repeats = [256, 512, 1024], 20.0, 1
    import pandas as pd

    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ["## Speed (CPU)\n", header(command.strip()),
            "- CUDA: " + ("available, " + torch.cuda.get_device_name(0) if torch.cuda.is_available()
                          else "not available on this machine: CPU numbers only") + "\n"]

    prune_rows = prune_times(args.repeats)
    text.append(f"\n### prune() wall time, sparsity 50% (min of {args.repeats}, seconds, tracing excluded)\n")
    text.append(markdown_table(["model", "scope", "method", "seconds"],
                               [(m, s, l, f"{t:.2f}") for m, s, l, t in prune_rows]))

    records, skipped = [], {}
    for n in args.sizes:
        for solver in SOLVERS:
            if skipped.get(solver):  # a smaller n already ran past the budget
                records.append(dict(n=n, solver=solver, seconds=None))
                continue
            seconds = timed(solver, n, args.budget)
            if seconds is not None and seconds > args.budget:
                seconds = None
            skipped[solver] = seconds is None
            records.append(dict(n=n, solver=solver, seconds=seconds))
            print(f"n={n} {solver}: " + (f"{seconds:.3f} s" if seconds is not None else "skipped"), flush=True)
    df = pd.DataFrame(records)
    df.to_csv(Path(args.out) / "speed_ot.csv", index=False) if Path(args.out).exists() else None
    text.append(f"\n### OT solve, one group of n channels -> k = n/2 (seconds, one run each, 1 thread)\n")
    rows = []
    for n, part in df.groupby("n", sort=True):
        cells = []
        for solver in SOLVERS:
            s = part[part.solver == solver].seconds.iloc[0]
            cells.append(f"{s:.3f}" if pd.notna(s) else f"skipped (> {args.budget:.0f} s)")
        rows.append([n, n // 2, *cells])
    text.append(markdown_table(["n", "k", *SOLVERS], rows))
    body = "\n".join(text) + "\n"
    save_text("speed.md", body, args.out)
    df.to_csv(Path(args.out) / "speed_ot.csv", index=False)

    import plotly.graph_objects as go
    fig = go.Figure()
    for solver in SOLVERS:
        part = df[(df.solver == solver) & df.seconds.notna()]
        fig.add_trace(go.Scatter(x=part.n, y=part.seconds, mode="lines+markers", name=solver))
    fig.update_layout(title="OT solve time vs group size (k = n/2, CPU)", xaxis_title="n (channels)",
                      yaxis_title="seconds", xaxis_type="log", yaxis_type="log", template="plotly_white")
    save_figure(fig, "speed_ot_scaling", args.out)
    print(body)
    return df


if __name__ == "__main__":
    main()
