"""Your own images: an image folder or a torchvision dataset, with the transforms your model expects.

The model decides the transforms: the input size it was trained at and the mean/std it normalises with
(ImageNet's by default, as for every torchvision and timm classifier).  Evaluation transforms only
(resize the short side, centre crop, tensor, normalise): pruning, repair and accuracy never augment.

Examples
--------
>>> from intrafusion_viz.data import eval_transform
>>> eval_transform(32, mean=(0.5,), std=(0.5,), channels=1)          # doctest: +ELLIPSIS
Compose(...)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TORCHVISION_DATASETS", "eval_transform", "image_folder",
           "torchvision_dataset", "example_batch", "loader_for"]

PathLike = Union[str, os.PathLike]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name (lower case, no dashes) -> (torchvision class name, channels, native size, mean, std)
TORCHVISION_DATASETS = {
    "mnist": ("MNIST", 1, 28, (0.1307,), (0.3081,)),
    "fashionmnist": ("FashionMNIST", 1, 28, (0.2860,), (0.3530,)),
    "kmnist": ("KMNIST", 1, 28, (0.1918,), (0.3483,)),
    "cifar10": ("CIFAR10", 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ("CIFAR100", 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ("SVHN", 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ("STL10", 3, 96, IMAGENET_MEAN, IMAGENET_STD),
}


def _torchvision():
    try:
        from torchvision import datasets, transforms
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Image folders and torchvision datasets need torchvision: pip install torchvision") from err
    return datasets, transforms


def _check_stats(mean, std, channels: int) -> Tuple[tuple, tuple]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(f"mean and std need 1 or {channels} values each (one per channel); "
                         f"got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {std}")
    return mean, std


def eval_transform(input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   channels: int = 3, resize: Optional[int] = None):
    """The evaluation transform of a classifier: resize, centre crop, to tensor, normalise.

    Parameters
    ----------
    input_size : int
        Side of the square crop the model sees (224 for ImageNet models, 32 for CIFAR ones).
    mean, std : sequence of float
        Per-channel normalisation the model was trained with (one value for all channels, or one each).
    channels : {1, 3}
        Grayscale (``1``) or RGB (``3``); images are converted to it.
    resize : int, optional
        Side the shorter image side is resized to before the crop; default ``input_size * 256 / 224``
        (the ImageNet recipe), or ``input_size`` itself for inputs of 64 px or less.

    Returns
    -------
    torchvision.transforms.Compose
        PIL image -> float tensor of shape ``(channels, input_size, input_size)``.
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive int (the side of the model's input), got {input_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    mean, std = _check_stats(mean, std, channels)
    _, transforms = _torchvision()
    if resize is None:
        resize = input_size if input_size <= 64 else int(round(input_size * 256 / 224))
    steps = [transforms.Grayscale(1)] if channels == 1 else [transforms.Lambda(_to_rgb)]
    steps += [transforms.Resize(resize), transforms.CenterCrop(input_size), transforms.ToTensor(),
              transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def _check_root(root, what: str) -> Path:
    if root is None:
        raise TypeError(f"{what} needs a folder (root=...), got None")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{what} needs a folder path (str or Path), got {type(root).__name__}")
    return Path(root).expanduser()


def _check_dataset(dataset, batch_size) -> None:
    if dataset is None:
        raise TypeError("a DataLoader needs a dataset (e.g. ifv.data.image_folder(...)), got None")
    if not hasattr(dataset, "__getitem__") and not hasattr(dataset, "__iter__"):
        raise TypeError(f"expected a torch Dataset (items (x, y)), got {type(dataset).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def image_folder(root: PathLike, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, channels: int = 3, transform=None):
    """Images sorted into one sub-folder per class (``root/cat/1.png``, ``root/dog/7.jpg``, ...).

    A ``torchvision.datasets.ImageFolder``: class indices follow the sorted sub-folder names, the order
    ``ImageFolder`` used when the model was trained on the same layout.

    Parameters
    ----------
    root : path
        The folder holding one sub-folder per class.
    input_size, mean, std, channels
        See :func:`eval_transform`; ignored when ``transform`` is given.
    transform : callable, optional
        Your own PIL image -> tensor transform.

    Returns
    -------
    torchvision.datasets.ImageFolder
        Items ``(image, label)``, image of shape ``(channels, input_size, input_size)``; ``.classes``
        names the classes.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist, or has no class sub-folder with an image in it.
    """
    root = _check_root(root, "image_folder")
    if not root.is_dir():
        raise FileNotFoundError(f"No image folder at '{root}': expected a folder with one sub-folder per class.")
    datasets, _ = _torchvision()
    transform = transform if transform is not None else eval_transform(input_size, mean, std, channels)
    try:
        return datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())[:5]
        raise FileNotFoundError(
            f"'{root}' is not an image folder: it needs one sub-folder per class holding images "
            f"(.png, .jpg, ...); found sub-folders {subdirs or 'none'} ({err})") from err


def torchvision_dataset(name: str, root: PathLike, train: bool = False, download: bool = False,
                        input_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None, channels: Optional[int] = None, transform=None):
    """A torchvision dataset by name (``"cifar10"``, ``"mnist"``, ``"fashion-mnist"``, ``"svhn"``, ...).

    Parameters
    ----------
    name : str
        One of :data:`TORCHVISION_DATASETS` (case and dashes ignored).
    root : path
        Where the dataset's files are (or go, with ``download=True``).
    train : bool
        The training split; default the test split.
    download : bool
        Download the files when missing (needs internet).
    input_size, mean, std, channels : optional
        What the model expects; defaults are the dataset's own size, statistics and channels.  A model
        trained on ImageNet-style inputs wants e.g. ``input_size=224, mean=IMAGENET_MEAN, channels=3``.
    transform : callable, optional
        Your own transform instead.

    Returns
    -------
    torch.utils.data.Dataset
        Items ``(image, label)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset name such as 'cifar10', got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)} "
                         "or use image_folder() for your own images")
    root = _check_root(root, "torchvision_dataset")
    cls_name, native_channels, native_size, native_mean, native_std = TORCHVISION_DATASETS[key]
    channels = native_channels if channels is None else channels
    if transform is None:
        same_space = channels == native_channels
        transform = eval_transform(
            input_size or native_size,
            mean if mean is not None else (native_mean if same_space else IMAGENET_MEAN[:channels]),
            std if std is not None else (native_std if same_space else IMAGENET_STD[:channels]),
            channels, resize=input_size or native_size)
    datasets, _ = _torchvision()
    cls = getattr(datasets, cls_name)
    split = {"split": "train" if train else "test"} if key in ("svhn", "stl10") else {"train": train}
    try:
        return cls(str(root), transform=transform, download=download, **split)
    except RuntimeError as err:
        hint = "" if download else " Pass download=True (--download on the command line) to fetch it."
        raise FileNotFoundError(f"{cls_name} not found in '{root}' ({err}).{hint}") from err


def example_batch(dataset, n: int = 32, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` random items of a map-style dataset stacked into ``(x, y)`` (``x``: ``(n, C, H, W)``).

    For repair, Taylor importance and activation features; seeded, the global RNG untouched.
    """
    if dataset is None:
        raise TypeError("example_batch needs a dataset (e.g. image_folder(...)), got None")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    try:
        size = len(dataset)
    except TypeError as err:
        raise TypeError(f"example_batch needs a map-style dataset with len(); got {type(dataset).__name__}") from err
    if size == 0:
        raise ValueError("the dataset is empty")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))[:n].tolist()
    items = [dataset[i] for i in order]
    xs = torch.stack([torch.as_tensor(x) for x, _ in items])
    ys = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
    return xs, ys


def loader_for(dataset, batch_size: int = 64, num_workers: int = 0, limit: Optional[int] = None):
    """An evaluation DataLoader (no shuffle) over ``dataset``, optionally its first ``limit`` items."""
    from torch.utils.data import DataLoader, Subset

    _check_dataset(dataset, batch_size)
    if limit is not None:
        dataset = Subset(dataset, range(min(int(limit), len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
