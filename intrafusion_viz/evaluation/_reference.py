"""Converged reference models: wide VGG11-BN, ResNet18 and a ViT trained on the real MNIST 8,000-image split.

The accuracy evidence (``benchmarks/whole_model.py``), the notebooks' full mode and the dashboards use
these instead of tiny under-trained nets. Checkpoints live outside git, in
``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference/<arch>_s<seed>.pt``, and are
trained (minutes on a CPU) when missing.

Example
-------
>>> import intrafusion_viz as ifv  # doctest: +SKIP
>>> model = ifv.reference_model("vgg11_bn", seed=0)  # doctest: +SKIP
>>> (x_train, y_train), (x_test, y_test) = ifv.reference_data()  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

PathLike = Union[str, os.PathLike]

REFERENCE_ARCHS = ("vgg11_bn", "resnet18", "vit")
# Training recipe (SGD + momentum, cosine schedule, batch 64, weight decay 5e-4), per architecture.
RECIPES = {
    "vgg11_bn": dict(epochs=8, lr=0.05),
    "resnet18": dict(epochs=6, lr=0.05),
    # torchvision VisionTransformer: AdamW (weight decay 0.05), batch 128, random shifts of up to 2 pixels.
    "vit": dict(epochs=30, lr=1e-3, optimizer="adamw", weight_decay=0.05, batch_size=128, shift=2),
}


def reference_dir() -> Path:
    """Folder of the cached checkpoints: ``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference``."""
    env = os.environ.get("INTRAFUSION_VIZ_REFERENCE")
    return Path(env) if env else Path.home() / ".cache" / "intrafusion_viz_reference"


def build_reference(arch: str) -> nn.Module:
    """An untrained reference architecture for 1-channel 32x32 inputs.

    ``"vgg11_bn"``: VGG11 with BatchNorm, width 0.5 (32-256 channels); ``"resnet18"``: ResNet18, width 32;
    ``"vit"``: torchvision's ``VisionTransformer`` (patch 4, 4 layers, hidden 128, 4 heads, MLP 256; 0.54 M
    parameters) with a 1-channel ``conv_proj``.
    """
    from .. import models

    if arch == "vgg11_bn":
        return models.vgg11_bn(num_classes=10, width_mult=0.5, in_channels=1)
    if arch == "resnet18":
        return models.resnet18(num_classes=10, width=32, in_channels=1)
    if arch == "vit":
        from torchvision.models import VisionTransformer

        vit = VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128,
                                mlp_dim=256, num_classes=10)
        vit.conv_proj = nn.Conv2d(1, 128, kernel_size=4, stride=4)
        return vit
    raise ValueError(f"Unknown reference architecture {arch!r}; choose one of {REFERENCE_ARCHS}.")


def default_mnist_root() -> Path:
    """Where :func:`reference_data` looks for MNIST: ``$INTRAFUSION_VIZ_MNIST``, the shared folder's
    ``data/mnist`` (see :func:`intrafusion_viz.data.shared_dir`), else ``~/.cache/intrafusion_viz_data/mnist``."""
    from ..data._shared import shared_path

    env = os.environ.get("INTRAFUSION_VIZ_MNIST")
    if env:
        return Path(env).expanduser()
    shared = shared_path("data", "mnist")
    return shared if shared is not None else Path.home() / ".cache" / "intrafusion_viz_data" / "mnist"


def reference_data(root: Optional[PathLike] = None, n_train: int = 8000, n_test: int = 2000, download: bool = False):
    """``((x_train, y_train), (x_test, y_test))`` tensors of the MNIST split, padded to 32x32.

    The split is :func:`intrafusion_viz.data.mnist_test_split` with seed 0 (disjoint train/test images of
    MNIST's 10,000-image test set). Images are normalised and edge-padded by 2 pixels (VGG's five
    max-pools need 32x32).

    Parameters
    ----------
    root : path, optional
        Folder with MNIST's test-set files (torchvision's layout); default :func:`default_mnist_root`.
    download : bool
        Let torchvision download MNIST's test set into ``root`` when it is missing (needs internet).
    """
    import torch.nn.functional as F

    from ..data import mnist_test_split

    root = Path(root) if root is not None else default_mnist_root()
    train, test = mnist_test_split(root, n_train=n_train, n_test=n_test, seed=0, download=download)

    def tensors(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        x = F.pad(torch.stack(xs), (2, 2, 2, 2), mode="replicate")
        return x, torch.as_tensor(ys, dtype=torch.long)

    return tensors(train), tensors(test)


class _ShiftedBatches:
    """Shuffled batches of ``(x, y)``, each image shifted by up to ``shift`` pixels (edge padding), anew each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shift: int, seed: int):
        self.x, self.y, self.batch_size, self.shift = x, y, batch_size, shift
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        import torch.nn.functional as F

        s, (h, w) = self.shift, self.x.shape[-2:]
        padded = F.pad(self.x, (s, s, s, s), mode="replicate")
        order = torch.randperm(len(self.y), generator=self.generator)
        offsets = torch.randint(0, 2 * s + 1, (len(self.y), 2), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in zip(idx.tolist(), offsets[idx].tolist())])
            yield xb, self.y[idx]


def train_reference(arch: str, seed: int = 0, data=None, progress: bool = True, path: Optional[PathLike] = None,
                    download: bool = False):
    """Train a reference model from scratch with the fixed recipe and save it; returns ``(model, test_accuracy)``.

    ``download``: let :func:`reference_data` download MNIST when it is not found (needs internet).
    """
    from ._train import accuracy, save_checkpoint, train

    (x_train, y_train), (x_test, y_test) = data if data is not None else reference_data(download=download)
    recipe = RECIPES[arch]
    torch.manual_seed(seed)
    model = build_reference(arch)
    batch_size = recipe.get("batch_size", 64)
    train_data = (x_train, y_train)
    if recipe.get("shift"):
        train_data = _ShiftedBatches(x_train, y_train, batch_size, recipe["shift"], seed)
    optimizer = "sgd"
    if recipe.get("optimizer") == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    history = train(model, train_data, epochs=recipe["epochs"], lr=recipe["lr"], seed=seed, optimizer=optimizer,
                    progress=progress, scheduler="cosine", batch_size=batch_size, eval_data=(x_test, y_test))
    acc = accuracy(model, (x_test, y_test))
    path = Path(path) if path is not None else reference_dir() / f"{arch}_s{seed}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, arch=arch, seed=seed, test_accuracy=acc,
                    eval_curve=[round(a, 2) for a in history.eval_accuracy], **recipe)
    return model, acc


def reference_model(arch: str = "vgg11_bn", seed: int = 0, train_if_missing: bool = True,
                    progress: bool = True, download: bool = False) -> nn.Module:
    """A converged reference model (eval mode), loaded from the cache or trained (and cached) when missing.

    Parameters
    ----------
    arch : {"vgg11_bn", "resnet18", "vit"}
    seed : int
        Training seed (0, 1, 2 are the ones the benchmarks use).
    train_if_missing : bool
        Train when no checkpoint is cached (minutes on a CPU); otherwise raise FileNotFoundError.
    download : bool
        When training, let torchvision download MNIST if it is not found (needs internet).
    """
    from ._train import load_checkpoint

    if arch not in REFERENCE_ARCHS:
        raise ValueError(f"Unknown reference architecture {arch!r}; choose one of {REFERENCE_ARCHS}.")
    path = reference_dir() / f"{arch}_s{seed}.pt"
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(
                f"No reference checkpoint at {path}; run `python benchmarks/train_reference.py --arch {arch} "
                f"--seeds {seed}` or pass train_if_missing=True.")
        model, _ = train_reference(arch, seed, progress=progress, path=path, download=download)
        return model
    model = build_reference(arch)
    load_checkpoint(path, model)
    return model.eval()
