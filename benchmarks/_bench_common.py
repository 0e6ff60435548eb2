"""Shared pieces of the benchmark scripts: small MNIST models, data as tensors, tables and result files."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

METHODS = (  # (record label, prune method, OTConfig fusion)
    ("default", "default", "barycentric"),
    ("intra-fusion (paper)", "intra-fusion", "paper"),
    ("intra-fusion", "intra-fusion", "barycentric"),
)


def mnist_vgg(width: int = 16) -> nn.Module:
    """VGG-style CNN with BatchNorm for 28x28 MNIST: conv+BN+ReLU widths (w, 2w, 2w, 2w), pools after the first two."""
    w = width
    layers: List[nn.Module] = []
    cin = 1
    for cout, pool in ((w, True), (2 * w, True), (2 * w, False), (2 * w, False)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def mnist_resnet(width: int = 8) -> nn.Module:
    """ResNet-10-style model (one BasicBlock per stage, widths w..8w) for 1-channel 28x28 inputs."""
    from intrafusion_viz.models import BasicBlock, ResNet

    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes=10, in_channels=1, width=width)


def dataset_tensors(dataset) -> tuple:
    """A map-style dataset of (image, label) -> (x: (N, ...), y: (N,)) tensors."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def load_mnist(root, n_train: int, n_test: int, seed: int = 0):
    """MNIST train/test tensors from the 10k test set at ``root`` (torchvision download when online).

    Exits with a clear message when neither the files nor the internet are there.
    """
    from intrafusion_viz.data import mnist_test_split

    try:
        train, test = mnist_test_split(root, n_train=n_train, n_test=n_test, seed=seed)
    except FileNotFoundError as err:
        try:
            train, test = mnist_test_split(root, n_train=n_train, n_test=n_test, seed=seed, download=True)
        except Exception:
            sys.exit(f"MNIST is needed and could not be found or downloaded.\n{err}\n"
                     "Put t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz into that folder "
                     "(or pass --mnist-root), or run where torchvision can download MNIST.")
    return dataset_tensors(train), dataset_tensors(test)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {cpu}, {os.cpu_count()} logical CPUs (torch threads {torch.get_num_threads()}), "
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def header(command: str) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n- machine: {machine()}\n"
            f"- load average (1, 5, 15 min) of the shared machine when this was written: {load}\n"
            f"- command: `{command}`\n")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def mean_spread(values) -> str:
    """'mean ± std' over seeds (std with ddof=1; just the mean for one value)."""
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def save_text(name: str, text: str, out: Optional[Path] = None) -> Path:
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(text)
    return path


def save_figure(fig, name: str, out: Optional[Path] = None, width: Optional[int] = None,
                height: Optional[int] = None) -> List[Path]:
    """HTML always (plotly from a CDN, small files); PNG too (``width`` x ``height`` pixels, plotly's
    default size when None) when kaleido is installed."""
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.html"]
    fig.write_html(paths[0], include_plotlyjs="cdn")
    try:
        import kaleido  # noqa: F401
        fig.write_image(out / f"{name}.png", width=width, height=height)
        paths.append(out / f"{name}.png")
    except Exception:
        pass
    return paths


def add_executor_options(parser) -> None:
    """``--workers`` / ``--scheduler``: where the prune-and-evaluate cells run (see :func:`executor_from_args`)."""
    parser.add_argument("--workers", type=int, default=0,
                        help="run the cells on this many local worker processes (0: in this process)")
    parser.add_argument("--scheduler", default=None,
                        help="'dask' (a LocalCluster of --workers processes, the default when dask is "
                             "installed), 'processes' (a ProcessPoolExecutor), or a running Dask scheduler: "
                             "its address (tcp://host:8786) or scheduler file (dask-jobqueue, dask-cuda, "
                             "`dask scheduler --scheduler-file`)")


@contextlib.contextmanager
def executor_from_args(args):
    """The executor for ``layer_sweep`` / ``evaluate_cells`` that ``--workers`` / ``--scheduler`` ask for
    (``None``: in process).  Local clusters and pools are shut down on exit; a remote cluster is left running."""
    scheduler, workers = args.scheduler, args.workers
    if scheduler is None and workers <= 0:
        yield None
        return
    if scheduler is None:
        try:
            import distributed  # noqa: F401
            scheduler = "dask"
        except ImportError:
            scheduler = "processes"
    if scheduler == "processes":
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max(workers, 1)) as pool:
            yield pool
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        sys.exit(f"--scheduler {scheduler} needs Dask: pip install -e '.[distributed]' (or use --scheduler processes)")
    if scheduler == "dask":
        with LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    kind = "scheduler_file" if os.path.isfile(scheduler) else "address"
    with Client(**{kind: scheduler}) as client:
        print(f"running on the Dask cluster at {scheduler}: {len(client.scheduler_info()['workers'])} workers",
              flush=True)
        yield client


def cache_key(*parts) -> str:
    """A results-cache key: the parts joined by ``|``."""
    return "|".join(str(p) for p in parts)


def save_cache(path: Path, cache: dict) -> None:
    """Merge ``cache`` into the JSON file at ``path`` under a lock, and ``cache`` with what is on disk.

    Several runs (other archs or seeds) may write the same file at once; each write re-reads it under the
    lock and replaces it atomically, so none loses the others' results.
    """
    import fcntl
    import json
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"ifv_{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(path.read_text()) if path.exists() else {}
        on_disk.update(cache)
        cache.update(on_disk)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(on_disk, indent=1, sort_keys=True))
        os.replace(tmp, path)
