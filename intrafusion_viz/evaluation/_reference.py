"""Converged reference models: VGG11-BN, ResNet18 and a ViT trained on MNIST (8,000-image split) or Fashion-MNIST.

The accuracy evidence (``benchmarks/whole_model.py``, ``benchmarks/no_finetune_accuracy.py``), the notebooks'
full mode and the dashboards use these instead of tiny under-trained nets. Checkpoints live outside git, in
``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference/``: ``<arch>_s<seed>.pt`` for MNIST,
``<arch>_fashion-mnist_s<seed>.pt`` for Fashion-MNIST, and are trained when missing. Measured on one thread of
a shared, loaded 2-core CPU: MNIST VGG11-BN 14-18 min; Fashion-MNIST VGG11-BN (2 epochs of 60,000 images)
27-33 min; a quiet machine takes about a third of that (Fashion VGG11-BN: 2.6 min per epoch on 2 threads).

Example
-------
>>> import intrafusion_viz as ifv  # doctest: +SKIP
>>> model = ifv.reference_model("vgg11_bn", seed=0)  # doctest: +SKIP
>>> (x_train, y_train), (x_test, y_test) = ifv.reference_data()  # doctest: +SKIP
>>> fashion = ifv.reference_model("vgg11_bn", dataset="fashion-mnist", seed=0)  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

PathLike = Union[str, os.PathLike]

REFERENCE_ARCHS = ("vgg11_bn", "resnet18", "vit")
REFERENCE_DATASETS = ("mnist", "fashion-mnist")
# Training recipe (SGD + momentum, cosine schedule, batch 64, weight decay 5e-4), per architecture.
RECIPES = {
    "vgg11_bn": dict(epochs=8, lr=0.05),
    "resnet18": dict(epochs=6, lr=0.05),
    # torchvision VisionTransformer: AdamW (weight decay 0.05), batch 128, random shifts of up to 2 pixels.
    "vit": dict(epochs=30, lr=1e-3, optimizer="adamw", weight_decay=0.05, batch_size=128, shift=2),
}
# Fashion-MNIST, all 60,000 training images: SGD (Nesterov momentum 0.9, weight decay 5e-4) with a one-cycle
# schedule stepped per batch (peak lr 0.1 after 20 % of the steps, then cosine to ~0), 2 epochs, batch 128,
# random horizontal flips. ResNet18 at width 16 (a quarter of width 32's cost; width 32 would take about half an
# hour per epoch on a loaded 2-core machine).
FASHION_RECIPES = {
    "vgg11_bn": dict(epochs=2, lr=0.1, batch_size=128, flip=True, schedule="onecycle"),
    "resnet18": dict(epochs=2, lr=0.1, batch_size=128, flip=True, schedule="onecycle", width=16),
}


def _check_dataset(dataset: str) -> str:
    key = str(dataset).lower().replace("_", "-")
    if key in ("fashion", "fashionmnist"):
        key = "fashion-mnist"
    if key not in REFERENCE_DATASETS:
        raise ValueError(f"Unknown reference dataset {dataset!r}; choose one of {REFERENCE_DATASETS}.")
    return key


def recipe(arch: str, dataset: str = "mnist") -> dict:
    """The training recipe of ``arch`` on ``dataset`` (a copy)."""
    dataset = _check_dataset(dataset)
    table = RECIPES if dataset == "mnist" else FASHION_RECIPES
    if arch not in table:
        raise ValueError(f"No reference {arch!r} for {dataset}; choose one of {tuple(table)}.")
    return dict(table[arch])


def checkpoint_name(arch: str, seed: int, dataset: str = "mnist") -> str:
    """``<arch>_s<seed>.pt`` for MNIST, ``<arch>_<dataset>_s<seed>.pt`` otherwise."""
    dataset = _check_dataset(dataset)
    return f"{arch}_s{seed}.pt" if dataset == "mnist" else f"{arch}_{dataset}_s{seed}.pt"


def reference_dir() -> Path:
    """Folder of the cached checkpoints: ``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference``."""
    env = os.environ.get("INTRAFUSION_VIZ_REFERENCE")
    return Path(env) if env else Path.home() / ".cache" / "intrafusion_viz_reference"


def build_reference(arch: str, dataset: str = "mnist") -> nn.Module:
    """An untrained reference architecture for 1-channel 32x32 inputs.

    ``"vgg11_bn"``: VGG11 with BatchNorm, width 0.5 (32-256 channels); ``"resnet18"``: ResNet18, width 32
    (width 16 for Fashion-MNIST, see :data:`FASHION_RECIPES`); ``"vit"``: torchvision's ``VisionTransformer``
    (patch 4, 4 layers, hidden 128, 4 heads, MLP 256; 0.54 M parameters) with a 1-channel ``conv_proj``.
    """
    from .. import models

    if arch not in REFERENCE_ARCHS:
        raise ValueError(f"Unknown reference architecture {arch!r}; choose one of {REFERENCE_ARCHS}.")
    width = recipe(arch, dataset).get("width", 32)
    if arch == "vgg11_bn":
        return models.vgg11_bn(num_classes=10, width_mult=0.5, in_channels=1)
    if arch == "resnet18":
        return models.resnet18(num_classes=10, width=width, in_channels=1)
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


def reference_data(root: Optional[PathLike] = None, n_train: int = 8000, n_test: int = 2000, download: bool = False,
                   dataset: str = "mnist"):
    """``((x_train, y_train), (x_test, y_test))`` tensors of the reference split, padded to 32x32.

    ``dataset="fashion-mnist"``: all 60,000 training and 10,000 test images of Fashion-MNIST
    (:func:`intrafusion_viz.data.fashion_mnist_datasets`, ``root`` defaults to
    :func:`intrafusion_viz.data.default_fashion_root`; ``n_train``/``n_test`` are ignored), normalised
    with its training statistics and edge-padded by 2 pixels.

    ``dataset="mnist"`` (default): the split is :func:`intrafusion_viz.data.mnist_test_split` with seed 0 (disjoint train/test images of
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

    if _check_dataset(dataset) == "fashion-mnist":
        return _fashion_tensors(root, download)
    root = Path(root) if root is not None else default_mnist_root()
    train, test = mnist_test_split(root, n_train=n_train, n_test=n_test, seed=0, download=download)

    def tensors(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        x = F.pad(torch.stack(xs), (2, 2, 2, 2), mode="replicate")
        return x, torch.as_tensor(ys, dtype=torch.long)

    return tensors(train), tensors(test)


def _fashion_tensors(root, download):
    import torch.nn.functional as F

    from ..data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist_datasets

    out = []
    for ds in fashion_mnist_datasets(root, download=download):
        # the same numbers as ToTensor + Normalize, computed on the whole array at once
        x = (ds.data.unsqueeze(1).float() / 255.0 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
        out.append((F.pad(x, (2, 2, 2, 2), mode="replicate"), ds.targets.clone().long()))
    return tuple(out)


class _ShiftedBatches:
    """Shuffled batches of ``(x, y)``, each image shifted by up to ``shift`` pixels (edge padding) and, with
    ``flip``, mirrored left-right with probability 1/2, anew each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shift: int, seed: int, flip: bool = False):
        self.x, self.y, self.batch_size, self.shift, self.flip = x, y, batch_size, shift, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        import torch.nn.functional as F

        s, (h, w) = self.shift, self.x.shape[-2:]
        padded = F.pad(self.x, (s, s, s, s), mode="replicate")
        order = torch.randperm(len(self.y), generator=self.generator)
        offsets = torch.randint(0, 2 * s + 1, (len(self.y), 2), generator=self.generator)
        flips = torch.rand(len(self.y), generator=self.generator) < 0.5
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if s:
                xb = torch.stack([padded[i, :, a:a + h, b:b + w]
                                  for i, (a, b) in zip(idx.tolist(), offsets[idx].tolist())])
            else:
                xb = self.x[idx]
            if self.flip:
                xb = torch.where(flips[idx].view(-1, 1, 1, 1), xb.flip(-1), xb)
            yield xb, self.y[idx]


def train_reference(arch: str, seed: int = 0, data=None, progress: bool = True, path: Optional[PathLike] = None,
                    download: bool = False, dataset: str = "mnist"):
    """Train a reference model from scratch with the fixed recipe and save it; returns ``(model, test_accuracy)``.

    ``download``: let :func:`reference_data` download the data set when it is not found (needs internet).
    """
    from ._train import train

    dataset = _check_dataset(dataset)
    if data is None:
        data = reference_data(download=download, dataset=dataset)
    (x_train, y_train), (x_test, y_test) = data
    recipe_ = recipe(arch, dataset)
    torch.manual_seed(seed)
    model = build_reference(arch, dataset)
    batch_size = recipe_.get("batch_size", 64)
    train_data = (x_train, y_train)
    if recipe_.get("shift") or recipe_.get("flip"):
        train_data = _ShiftedBatches(x_train, y_train, batch_size, recipe_.get("shift", 0), seed,
                                     flip=recipe_.get("flip", False))
    if recipe_.get("schedule") == "onecycle":
        curve, losses = _fit_onecycle(model, train_data, (x_test, y_test), recipe_, seed, progress)
        return _save(model, arch, seed, dataset, path, curve, losses, recipe_)
    optimizer = "sgd"
    if recipe_.get("optimizer") == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe_["lr"], weight_decay=recipe_["weight_decay"])
    history = train(model, train_data, epochs=recipe_["epochs"], lr=recipe_["lr"], seed=seed, optimizer=optimizer,
                    progress=progress, scheduler="cosine", batch_size=batch_size, eval_data=(x_test, y_test))
    return _save(model, arch, seed, dataset, path, history.eval_accuracy, history.loss, recipe_, (x_test, y_test))


def _save(model, arch, seed, dataset, path, curve, losses, recipe_, test=None):
    from ._train import save_checkpoint

    acc = curve[-1] if test is None else accuracy_of(model, test)
    path = Path(path) if path is not None else reference_dir() / checkpoint_name(arch, seed, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, arch=arch, seed=seed, test_accuracy=acc, dataset=dataset,
                    eval_curve=[round(a, 2) for a in curve], train_loss=[round(a, 4) for a in losses], **recipe_)
    return model.eval(), acc


def accuracy_of(model, data):
    from ._train import accuracy

    return accuracy(model, data)


def _fit_onecycle(model, batches, test, recipe_, seed, progress):
    """SGD with a per-batch one-cycle schedule; returns (test accuracy after each epoch, mean loss of each epoch)."""
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ._train import accuracy

    epochs = recipe_["epochs"]
    opt = torch.optim.SGD(model.parameters(), lr=recipe_["lr"], momentum=0.9, nesterov=True,
                          weight_decay=recipe_.get("weight_decay", 5e-4))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe_["lr"], total_steps=epochs * len(batches),
                                                pct_start=0.2, div_factor=10.0, final_div_factor=100.0)
    curve, losses = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            total, seen = 0.0, 0
            for x, y in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
                loss = F.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Training loss became {loss.item()} at epoch {epoch + 1}.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(y)
                seen += len(y)
            losses.append(total / seen)
            curve.append(accuracy(model, test))
            if not progress:
                print(f"  epoch {epoch + 1}: loss {losses[-1]:.4f}, test accuracy {curve[-1]:.2f} %", flush=True)
    model.eval()
    return curve, losses


def reference_model(arch: str = "vgg11_bn", seed: int = 0, train_if_missing: bool = True,
                    progress: bool = True, download: bool = False, dataset: str = "mnist") -> nn.Module:
    """A converged reference model (eval mode), loaded from the cache or trained (and cached) when missing.

    Parameters
    ----------
    arch : {"vgg11_bn", "resnet18", "vit"}
    seed : int
        Training seed (0, 1, 2 are the ones the benchmarks use).
    train_if_missing : bool
        Train when no checkpoint is cached (minutes on a CPU); otherwise raise FileNotFoundError.
    download : bool
        When training, let torchvision download the data set if it is not found (needs internet).
    dataset : {"mnist", "fashion-mnist"}
        The data set it was trained on (Fashion-MNIST: VGG11-BN and ResNet18 only).
    """
    from ._train import load_checkpoint

    if arch not in REFERENCE_ARCHS:
        raise ValueError(f"Unknown reference architecture {arch!r}; choose one of {REFERENCE_ARCHS}.")
    dataset = _check_dataset(dataset)
    recipe(arch, dataset)  # an unknown (arch, dataset) pair fails here, before any training
    path = reference_dir() / checkpoint_name(arch, seed, dataset)
    if not path.exists():
        if not train_if_missing:
            raise FileNotFoundError(
                f"No reference checkpoint at {path}; run `python benchmarks/train_reference.py --arch {arch} "
                f"--dataset {dataset} --seeds {seed}` or pass train_if_missing=True.")
        model, _ = train_reference(arch, seed, progress=progress, path=path, download=download, dataset=dataset)
        return model
    model = build_reference(arch, dataset)
    load_checkpoint(path, model)
    return model.eval()
