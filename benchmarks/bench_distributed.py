"""The same per-layer sweep in process and on executors: wall time, speed-up, overhead per cell.

A VGG-style CNN with BatchNorm trained on MNIST (8,000 images split from MNIST's test set at
``--mnist-root``), every group x 3 sparsities x 3 methods with l1 importance, evaluated on 2,000 images,
run by ``ifv.sweeps.layer_sweep`` with ``executor=`` None (1 torch thread; ``--threads2``: also 2), a
``ProcessPoolExecutor``, and Dask ``LocalCluster`` s of 1 and N worker processes (1 thread each).
Every table is checked equal to the one-thread in-process table.  Prints a markdown table and writes
``benchmarks/results/bench_distributed.md``.

    python benchmarks/bench_distributed.py                 # 2 workers
    python benchmarks/bench_distributed.py --workers 4 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import DEFAULT_MNIST, header, load_mnist, markdown_table, mnist_vgg, save_text  # noqa: E402


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def trained_model(args):
    train, test = load_mnist(args.mnist_root, args.n_train, args.n_test)
    path = Path(args.checkpoint)
    model = mnist_vgg(16)
    if path.is_file():
        ifv.load_checkpoint(path, model)
    else:
        ifv.train(model, train, epochs=args.epochs, lr=0.05, seed=0, progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        ifv.save_checkpoint(model, path, arch="mnist_vgg16", epochs=args.epochs)
    return model.eval(), test, train[0][:1]


def timed(run, repeats):
    """(first run s, best later run s, table): the first includes shipping and worker warm-up."""
    times, table = [], None
    for _ in range(1 + repeats):
        start = time.perf_counter()
        table = run()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:]) if repeats else times[0], table


def _noop(shared, cell):
    return cell


def task_overhead(n_cells=200):
    """ms per cell that the executors add to a task that does nothing (submit, ship, collect, progress)."""
    from distributed import Client, LocalCluster

    from intrafusion_viz.evaluation._distributed import map_cells

    shared = torch.zeros(1000, 1000)  # 4 MB of shared inputs, sent once per worker
    rows = []

    def measure(label, executor):
        map_cells(_noop, shared, range(4), executor, progress=False)  # warm: workers started, inputs shipped
        start = time.perf_counter()
        out = map_cells(_noop, shared, range(n_cells), executor, progress=True, desc=label)
        assert [o.value for o in out] == list(range(n_cells))
        rows.append([label, f"{1000 * (time.perf_counter() - start) / n_cells:.1f}", load()])

    measure("in process", None)
    with ProcessPoolExecutor(1) as pool:
        measure("ProcessPoolExecutor(1)", pool)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        measure("Dask LocalCluster, 1 worker", client)
    return markdown_table(["executor", f"ms per no-op cell ({n_cells} cells, 4 MB shared)", "load 1/5/15 min"],
                          rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the first (best is reported)")
    p.add_argument("--mnist-root", default=str(DEFAULT_MNIST))
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads2", action="store_true",
                   help="also in process with 2 torch threads (spin-waits badly on a loaded machine)")
    p.add_argument("--checkpoint", default=str(Path(tempfile.gettempdir()) / "intrafusion_viz_bench_distributed.pt"),
                   help="the trained model is kept here between runs")
    p.add_argument("--overhead-only", action="store_true", help="only the per-cell overhead of no-op tasks")
    args = p.parse_args(argv)
    if args.overhead_only:
        text = task_overhead()
        print(text)
        return text
    import pandas as pd
    from distributed import Client, LocalCluster

    torch.set_num_threads(1)
    model, test, example = trained_model(args)
    kw = dict(sparsities=(0.3, 0.5, 0.7), methods=ifv.sweeps.SWEEP_METHODS, importance="l1", cache=False,
              progress=False)
    sweep = lambda executor=None: ifv.sweeps.layer_sweep(model, test, example, executor=executor, **kw)  # noqa: E731
    cells = len(ifv.find_groups(model, example)) * 3 * len(ifv.sweeps.SWEEP_METHODS) + 1
    rows, reference = [], None

    def record(label, startup, run, stop=lambda: None):
        nonlocal reference
        before = load()
        first, best, table = timed(run, args.repeats)
        stop()
        if reference is None:
            reference = (best, table)
        same = table.equals(reference[1])
        rows.append([label, f"{startup:.1f}" if startup is not None else "-", f"{first:.1f}", f"{best:.1f}",
                     f"{1000 * best / cells:.0f}", f"{reference[0] / best:.2f}x", "yes" if same else "NO",
                     f"{before} -> {load()}"])
        print(rows[-1], flush=True)

    record("in process, 1 torch thread", None, sweep)
    if args.threads2:
        torch.set_num_threads(2)
        record("in process, 2 torch threads", None, sweep)
        torch.set_num_threads(1)
    start = time.perf_counter()
    pool = ProcessPoolExecutor(args.workers)
    record(f"ProcessPoolExecutor({args.workers})", time.perf_counter() - start, lambda: sweep(pool), pool.shutdown)
    for n in (1, args.workers):
        start = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster)
        client.wait_for_workers(n)
        startup = time.perf_counter() - start
        record(f"Dask LocalCluster, {n} worker{'s' if n > 1 else ''} x 1 thread", startup, lambda: sweep(client),
               lambda: (client.close(), cluster.close()))
    one = float(rows[0][3])
    dask1 = float(next(r for r in rows if r[0].startswith("Dask LocalCluster, 1 "))[3])
    columns = ["run", "startup s", "first sweep s", "sweep s (best of later)", "ms per cell", "speed-up",
               "same table", "load 1/5/15 min before -> after"]
    command = "python benchmarks/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ("## Sweeps on executors (`benchmarks/bench_distributed.py`)\n\n" + header(command.strip())
            + f"- sweep: mnist-vgg-bn (4 groups), {cells} cells (original + every group x 3 sparsities x "
              f"{len(ifv.sweeps.SWEEP_METHODS)} methods, l1), {args.n_test} test images\n"
            + f"- Dask overhead per cell (1-worker cluster vs in process, warm): "
              f"{1000 * (dask1 - one) / cells:.0f} ms\n\n"
            + markdown_table(columns, rows) + "\n\nOverhead of the executors alone (no-op cells):\n\n"
            + task_overhead() + "\n")
    save_text("bench_distributed.md", text)
    print(text)
    return pd.DataFrame(rows, columns=columns)


if __name__ == "__main__":
    main()
