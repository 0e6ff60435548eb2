"""Datasets for the experiments: offline digits, MNIST and CIFAR-10/100.

``load_digits_tensors`` uses the 8x8 digits bundled with scikit-learn, so it
works without internet. MNIST and CIFAR use the real torchvision dataset
classes; when their files are absent and ``download=False`` a
``FileNotFoundError`` names the files and folders that are needed.

Examples
--------
>>> from intrafusion_viz.data import load_digits_tensors
>>> digits = load_digits_tensors(seed=0)
>>> digits.x_train.shape, digits.y_train.dtype
(torch.Size([1347, 1, 8, 8]), torch.int64)
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ._fashion import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, default_fashion_root,
                       fashion_mnist_datasets)
from ._shared import SHARED_ENV, shared_dir, shared_path

__all__ = [
    "shared_dir",
    "shared_path",
    "SHARED_ENV",
    "DigitsData",
    "load_digits_tensors",
    "digits_loaders",
    "make_loader",
    "mnist_datasets",
    "mnist_test_split",
    "cifar_datasets",
    "fashion_mnist_datasets",
    "default_fashion_root",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
]

PathLike = Union[str, os.PathLike]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# The CIFAR-10 statistics used by kuangliu/pytorch-cifar and the Intra-Fusion code.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True, eq=False)
class DigitsData:
    """Normalised scikit-learn digits split into train and test tensors.

    Attributes
    ----------
    x_train : Tensor, shape (n_train, 1, 8, 8) or (n_train, 64), float32
    y_train : Tensor, shape (n_train,), int64 in ``[0, 9]``
    x_test : Tensor, shape (n_test, 1, 8, 8) or (n_test, 64), float32
    y_test : Tensor, shape (n_test,), int64
    mean, std : float
        Statistics of the train pixels (after scaling to ``[0, 1]``) used to
        normalise both splits: ``x = (pixel / 16 - mean) / std``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    @property
    def num_classes(self) -> int:
        return 10


def _import_sklearn_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The digits data needs scikit-learn: pip install scikit-learn") from err
    return load_digits, train_test_split


def _import_torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("MNIST and CIFAR need torchvision: pip install torchvision") from err
    return datasets, transforms


def load_digits_tensors(test_fraction: float = 0.25, seed: int = 0, flatten: bool = False) -> DigitsData:
    """Load scikit-learn's 1,797 8x8 digits as a stratified, seeded train/test split.

    Parameters
    ----------
    test_fraction : float
        Share of samples in the test split, in ``(0, 1)``.
    seed : int
        Seed of the split; the same seed gives the same split.
    flatten : bool
        Return images as ``(N, 64)`` instead of ``(N, 1, 8, 8)``.

    Returns
    -------
    DigitsData
        float32 images normalised with the train mean/std, int64 labels.

    Examples
    --------
    >>> d = load_digits_tensors(flatten=True)
    >>> d.x_test.shape
    torch.Size([450, 64])
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    load_digits, train_test_split = _import_sklearn_digits()
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    x_train, x_test = images[train_idx], images[test_idx]
    mean, std = float(x_train.mean()), float(x_train.std())
    shape = (-1, 64) if flatten else (-1, 1, 8, 8)
    return DigitsData(
        x_train=((x_train - mean) / std).reshape(shape).contiguous(),
        y_train=labels[train_idx],
        x_test=((x_test - mean) / std).reshape(shape).contiguous(),
        y_test=labels[test_idx],
        mean=mean,
        std=std,
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: Optional[int] = None,
    num_workers: int = 0,
) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader whose shuffling is reproducible under ``seed``.

    Parameters
    ----------
    dataset : Dataset
        Any map-style dataset.
    batch_size : int
        Samples per batch.
    shuffle : bool
        Reshuffle every epoch.
    seed : int, optional
        Seeds a private ``torch.Generator`` for the shuffle order (and worker
        seeds), so the global RNG is neither used nor changed.
    num_workers : int
        Background loading processes.
    """
    _check_dataset(dataset, batch_size)
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
    )


def digits_loaders(
    batch_size: int = 64,
    seed: int = 0,
    flatten: bool = False,
    test_fraction: float = 0.25,
    test_batch_size: int = 1024,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled, seeded) and test loaders over :func:`load_digits_tensors`.

    Returns
    -------
    train_loader, test_loader : DataLoader
        Batches ``(x, y)`` with ``x`` of shape ``(B, 1, 8, 8)`` (or ``(B, 64)``) and ``y`` of shape ``(B,)``.
    """
    data = load_digits_tensors(test_fraction=test_fraction, seed=seed, flatten=flatten)
    train = make_loader(TensorDataset(data.x_train, data.y_train), batch_size, shuffle=True, seed=seed)
    test = make_loader(TensorDataset(data.x_test, data.y_test), test_batch_size, shuffle=False)
    return train, test


# ----------------------------------------------------------------------------- MNIST


def _find_file(root: Path, name: str) -> Optional[Path]:
    """First of ``root/MNIST/raw``, ``root/raw``, ``root`` that holds ``name`` or ``name.gz``."""
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing_mnist_error(root: Path, names: list[str]) -> FileNotFoundError:
    listed = ", ".join(names)
    return FileNotFoundError(
        f"MNIST files not found: {listed}. Put them (plain or .gz) in '{root / 'MNIST' / 'raw'}' "
        f"(torchvision's layout) or directly in '{root}', or pass download=True to fetch them "
        "into that folder when internet is available."
    )


def _load_mnist_split(root: PathLike, train: bool, download: bool, transform):
    """Read one MNIST split; files that are truncated or not MNIST are reported as such, with what to do."""
    from ._mnist import MNIST_FILES

    root = _check_root(root, "MNIST")  # None or a non-path: our error
    root = Path(root).expanduser()
    present = all(_find_file(root, name) is not None for name in MNIST_FILES[train])
    try:
        dataset = _read_mnist_split(root, train, download, transform)
    except (OSError, EOFError, RuntimeError, ValueError, AssertionError, IndexError, TypeError) as err:
        if not present:  # missing files (our message) or a failed download: not a corrupt file
            raise
        raise RuntimeError(
            f"torchvision could not read the MNIST {'training' if train else 'test'} files "
            f"({', '.join(MNIST_FILES[train])}) under '{root}' ({type(err).__name__}: {err}); they are probably "
            "corrupted or partly downloaded. Delete them and copy or download them again.") from err
    images, labels = dataset.data, dataset.targets
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or len(images) != len(labels) or len(images) == 0:
        raise RuntimeError(
            f"the MNIST {'training' if train else 'test'} files under '{root}' hold {tuple(images.shape)} images "
            f"and {len(labels)} labels, not N 28x28 images with N labels; they are probably corrupted or "
            "mismatched. Delete them and copy or download them again.")
    return dataset


def _read_mnist_split(root: Path, train: bool, download: bool, transform):
    from ._mnist import MNIST_FILES, SplitMNIST

    names = MNIST_FILES[train]
    found = {name: _find_file(root, name) for name in names}
    standard = all(path is not None and path.parent == root / "MNIST" / "raw" and path.name == name
                   for name, path in found.items())
    if standard or (download and None in found.values()):
        return SplitMNIST(str(root), train=train, transform=transform, download=download)
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise _missing_mnist_error(root, missing)
    # torchvision reads only plain files from <root>/MNIST/raw; stage them in a temporary
    # folder (the shared copy may be read-only). The data is read into memory on construction,
    # so the folder can go right after.
    with tempfile.TemporaryDirectory(prefix="intrafusion_mnist_") as staging:
        raw = Path(staging) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, path in found.items():
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as src, open(raw / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(path, raw / name)
        dataset = SplitMNIST(staging, train=train, transform=transform)
    dataset.root = str(root)
    return dataset


def _mnist_transform(transform):
    if transform is not None:
        return transform
    _, transforms = _import_torchvision()
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])


def _random_subset(dataset: Dataset, size: Optional[int], seed: int) -> Dataset:
    if size is None:
        return dataset
    if not 0 < size <= len(dataset):
        raise ValueError(f"subset size must be in [1, {len(dataset)}], got {size}.")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:size].tolist())


def mnist_datasets(
    root: PathLike,
    download: bool = False,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
    seed: int = 0,
    transform=None,
) -> tuple[Dataset, Dataset]:
    """MNIST train and test sets via ``torchvision.datasets.MNIST``.

    Parameters
    ----------
    root : path
        Folder holding the IDX files either in torchvision's layout
        (``root/MNIST/raw/train-images-idx3-ubyte`` ...) or directly
        (``root/train-images-idx3-ubyte.gz`` ...); ``.gz`` files are read too.
    download : bool
        Download missing files into ``root/MNIST/raw`` (needs internet).
    train_subset, test_subset : int, optional
        Keep a seeded random subset of this many samples.
    seed : int
        Seed of the subsets.
    transform : callable, optional
        Image transform; default ``ToTensor()`` then ``Normalize((0.1307,), (0.3081,))``,
        giving ``x`` of shape ``(1, 28, 28)``.

    Returns
    -------
    train, test : Dataset
        Items ``(image, label)``.

    Raises
    ------
    FileNotFoundError
        When files are missing and ``download=False``; names the files and folder.
    """
    transform = _mnist_transform(transform)
    train = _load_mnist_split(root, True, download, transform)
    test = _load_mnist_split(root, False, download, transform)
    return _random_subset(train, train_subset, seed), _random_subset(test, test_subset, seed)


def mnist_test_split(
    root: PathLike,
    n_train: int = 8000,
    n_test: int = 2000,
    seed: int = 0,
    download: bool = False,
    transform=None,
) -> tuple[Subset, Subset]:
    """Split MNIST's 10,000-image test set into disjoint train and test subsets.

    For when only ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)``
    are available. File layout, ``download`` and ``transform`` are as in :func:`mnist_datasets`.

    Parameters
    ----------
    n_train, n_test : int
        Sizes of the two subsets; ``n_train + n_test`` must not exceed the test-set size.
    seed : int
        Seed of the random assignment.

    Returns
    -------
    train, test : Subset
        Disjoint subsets of ``torchvision.datasets.MNIST(train=False)``.

    Examples
    --------
    >>> train, test = mnist_test_split("data/mnist", download=True)  # doctest: +SKIP
    >>> len(train), len(test)  # doctest: +SKIP
    (8000, 2000)
    """
    full = _load_mnist_split(root, False, download, _mnist_transform(transform))
    if n_train < 1 or n_test < 1 or n_train + n_test > len(full):
        raise ValueError(
            f"n_train and n_test must be >= 1 with n_train + n_test <= {len(full)}, got {n_train} and {n_test}."
        )
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(full, order[:n_train]), Subset(full, order[n_train:n_train + n_test])


# ----------------------------------------------------------------------------- CIFAR


def _cifar_files(cls) -> list[str]:
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def cifar_datasets(
    root: PathLike,
    name: str = "cifar10",
    download: bool = False,
    augment: bool = True,
) -> tuple[Dataset, Dataset]:
    """CIFAR-10 or CIFAR-100 train and test sets via torchvision.

    Parameters
    ----------
    root : path
        Folder containing ``cifar-10-batches-py/`` (or ``cifar-100-python/``),
        i.e. the extracted official archive; that folder itself is accepted too.
    name : {"cifar10", "cifar100"}
        Which dataset.
    download : bool
        Download and extract the archive into ``root`` (needs internet).
    augment : bool
        Apply ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip`` to the train set.

    Returns
    -------
    train, test : Dataset
        Items ``(image, label)`` with images of shape ``(3, 32, 32)``, normalised with
        :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD` (or the CIFAR-100 statistics).

    Raises
    ------
    FileNotFoundError
        When files are missing and ``download=False``; names the files and folder.
    """
    datasets, transforms = _import_torchvision()
    key = name.lower().replace("-", "")
    choices = {
        "cifar10": (datasets.CIFAR10, CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (datasets.CIFAR100, CIFAR100_MEAN, CIFAR100_STD),
    }
    if key not in choices:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}.")
    cls, mean, std = choices[key]
    root = _check_root(root, "cifar_datasets")
    root = Path(root).expanduser()
    if root.name == cls.base_folder:
        root = root.parent
    folder = root / cls.base_folder
    missing = [f for f in _cifar_files(cls) if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"{key.upper()} files not found in '{folder}': missing {', '.join(missing)}. "
            f"Extract the official {cls.filename} into '{root}', or pass download=True "
            "to fetch it when internet is available."
        )
    normalize = transforms.Normalize(mean, std)
    test_transform = transforms.Compose([transforms.ToTensor(), normalize])
    train_steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    train_transform = transforms.Compose(train_steps + [transforms.ToTensor(), normalize])
    try:
        train = cls(str(root), train=True, transform=train_transform, download=download)
        test = cls(str(root), train=False, transform=test_transform, download=False)
    except RuntimeError as err:
        raise RuntimeError(
            f"torchvision rejected the files in '{folder}' ({err}); they are probably corrupted or "
            "partly downloaded. Delete that folder and extract or download the archive again."
        ) from err
    return train, test


# Your own images (an image folder, a torchvision dataset by name): intrafusion_viz/data/_folders.py
from ._folders import (IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_DATASETS, _check_dataset,  # noqa: E402
                       _check_root, eval_transform, example_batch, image_folder, loader_for, torchvision_dataset)

__all__ += ["IMAGENET_MEAN", "IMAGENET_STD", "TORCHVISION_DATASETS", "eval_transform", "image_folder",
            "torchvision_dataset", "example_batch", "loader_for"]
