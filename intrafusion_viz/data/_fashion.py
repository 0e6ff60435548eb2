"""Fashion-MNIST through ``torchvision.datasets.FashionMNIST``: 60,000 training and 10,000 test images.

Ten classes of clothing, 28x28 grey, the same file format as MNIST. A harder task than MNIST (a converged
small CNN reaches about 92-94 %), so pruning damage shows. The files are looked up in ``root`` in
torchvision's layout (``root/FashionMNIST/raw/train-images-idx3-ubyte``) or directly
(``root/train-images-idx3-ubyte.gz``); ``download=True`` lets torchvision fetch the official files.

Examples
--------
>>> from intrafusion_viz.data import fashion_mnist_datasets
>>> train, test = fashion_mnist_datasets(download=True)  # doctest: +SKIP
>>> len(train), len(test)  # doctest: +SKIP
(60000, 10000)
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES",
           "default_fashion_root", "fashion_mnist_datasets"]

PathLike = Union[str, os.PathLike]

#: Mean and standard deviation of the training pixels (scaled to [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
#: Uncompressed file names torchvision reads for each split (``train`` flag -> (images, labels)).
FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_fashion_root() -> Path:
    """``$INTRAFUSION_VIZ_FASHION_MNIST``, the shared folder's ``data/fashion-mnist`` (see
    :func:`intrafusion_viz.data.shared_dir`), else ``~/.cache/intrafusion_viz_data/fashion-mnist``."""
    from ._shared import shared_path

    env = os.environ.get("INTRAFUSION_VIZ_FASHION_MNIST")
    if env:
        return Path(env).expanduser()
    shared = shared_path("data", "fashion-mnist")
    return shared if shared is not None else Path.home() / ".cache" / "intrafusion_viz_data" / "fashion-mnist"


def _find(root: Path, name: str) -> Optional[Path]:
    for folder in (root / "FashionMNIST" / "raw", root / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _transform(transform):
    if transform is not None:
        return transform
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)])


def _read_split(root: Path, train: bool, download: bool, transform):
    from torchvision.datasets import FashionMNIST

    names = FASHION_MNIST_FILES[train]
    found = {name: _find(root, name) for name in names}
    standard = all(p is not None and p.parent == root / "FashionMNIST" / "raw" and p.name == n
                   for n, p in found.items())
    missing = [n for n, p in found.items() if p is None]
    if standard or (download and missing):
        return FashionMNIST(str(root), train=train, transform=transform, download=download)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Put them (plain or .gz) in "
            f"'{root / 'FashionMNIST' / 'raw'}' (torchvision's layout) or directly in '{root}', or pass "
            "download=True to fetch the official files into that folder when internet is available.")
    # torchvision reads plain files from <root>/FashionMNIST/raw (and wants both splits there); stage this
    # split's files in a temporary folder (the given one may be read-only). The data is read into memory.
    with tempfile.TemporaryDirectory(prefix="intrafusion_fashion_") as staging:
        raw = Path(staging) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for name, path in found.items():
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as src, open(raw / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(path, raw / name)
        for name in FASHION_MNIST_FILES[not train]:  # torchvision checks that all four files exist
            (raw / name).touch()
        dataset = FashionMNIST(staging, train=train, transform=transform)
    dataset.root = str(root)
    return dataset


def _load_split(root: Path, train: bool, download: bool, transform):
    present = all(_find(root, n) is not None for n in FASHION_MNIST_FILES[train])
    try:
        dataset = _read_split(root, train, download, transform)
    except (OSError, EOFError, RuntimeError, ValueError, AssertionError, IndexError, TypeError) as err:
        if not present:
            raise
        raise RuntimeError(
            f"torchvision could not read the Fashion-MNIST {'training' if train else 'test'} files under '{root}' "
            f"({type(err).__name__}: {err}); they are probably corrupted or partly downloaded. Delete them and "
            "copy or download them again.") from err
    images, labels = dataset.data, dataset.targets
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or len(images) != len(labels) or len(images) == 0:
        raise RuntimeError(
            f"the Fashion-MNIST {'training' if train else 'test'} files under '{root}' hold {tuple(images.shape)} "
            f"images and {len(labels)} labels, not N 28x28 images with N labels; they are probably corrupted or "
            "mismatched. Delete them and copy or download them again.")
    return dataset


def fashion_mnist_datasets(root: Optional[PathLike] = None, download: bool = False, transform=None):
    """Fashion-MNIST train (60,000) and test (10,000) sets via ``torchvision.datasets.FashionMNIST``.

    Parameters
    ----------
    root : path, optional
        Folder with the IDX files (torchvision's layout, or directly, plain or ``.gz``); default
        :func:`default_fashion_root`.
    download : bool
        Let torchvision download the official files into ``root`` when missing (needs internet).
    transform : callable, optional
        Image transform; default ``ToTensor()`` then ``Normalize((0.2860,), (0.3530,))``, giving
        ``x`` of shape ``(1, 28, 28)``.

    Returns
    -------
    train, test : Dataset
        Items ``(image, label)``, labels in ``[0, 9]`` (names in :data:`FASHION_MNIST_CLASSES`).

    Raises
    ------
    FileNotFoundError
        When files are missing and ``download=False``; names the files and the folder.
    """
    root = Path(root).expanduser() if root is not None else default_fashion_root()
    transform = _transform(transform)
    return _load_split(root, True, download, transform), _load_split(root, False, download, transform)
