"""Training, evaluation and checkpoints for the models being pruned.

Examples
--------
>>> import torch
>>> from intrafusion_viz.models import MLP
>>> x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
>>> model = MLP()
>>> history = train(model, (x, y), epochs=2, seed=0, progress=False)
>>> len(history.loss), 0.0 <= accuracy(model, (x, y)) <= 100.0
(2, True)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._state import model_device, saved_modes

__all__ = [
    "CheckpointError",
    "TrainHistory",
    "accuracy",
    "train",
    "save_checkpoint",
    "load_checkpoint",
]

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]

_EVAL_CHUNK = 1024
_DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
_FORMAT = "intrafusion_viz.checkpoint"
_RESAVE_HINT = "Re-save it with intrafusion_viz.save_checkpoint(model, path)."


class CheckpointError(ValueError):
    """A file is not a valid intrafusion_viz checkpoint, or does not fit the given model."""


@dataclass
class TrainHistory:
    """Per-epoch record of :func:`train`.

    Attributes
    ----------
    loss : list of float
        Mean cross-entropy over the epoch's training batches.
    train_accuracy : list of float
        Accuracy (percent) on the training batches while they were trained on.
    eval_accuracy : list of float
        Accuracy (percent) on ``eval_data`` after each epoch; empty without ``eval_data``.
    lr : list of float
        Learning rate used during each epoch.
    """

    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)


def _is_tensor_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )


def _iter_batches(data: Any, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from a ``(x, y)`` tensor pair (in chunks) or an iterable of batches."""
    if _is_tensor_pair(data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}.")
        for start in range(0, len(x), chunk):
            yield x[start:start + chunk], y[start:start + chunk]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"Expected a DataLoader, an iterable of (x, y) batches or an (x, y) tuple, got {type(data)}.")
    for batch in data:
        yield batch[0], batch[1]


def accuracy(
    model: nn.Module,
    data: Any,
    device: DeviceLike = None,
    max_batches: Optional[int] = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``data``, in percent.

    Runs in eval mode under ``torch.no_grad()`` and afterwards puts every
    submodule back in the train/eval mode it had.

    Parameters
    ----------
    model : nn.Module
        Maps ``x`` of shape ``(B, ...)`` to logits ``(B, num_classes)``.
    data : DataLoader, iterable of (x, y), or tuple (x, y)
        Labels ``y`` of shape ``(B,)``; a tensor pair is evaluated in chunks of 1024.
    device : str or torch.device, optional
        Where inputs go; default is the device of the model's first parameter.
    max_batches : int, optional
        Stop after this many batches.

    Returns
    -------
    float
        Percentage of correct predictions, in ``[0, 100]``.

    Examples
    --------
    >>> from intrafusion_viz.models import MLP
    >>> accuracy(MLP(), (torch.randn(10, 64), torch.zeros(10, dtype=torch.long))) <= 100
    True
    """
    device = (model_device(model) or torch.device("cpu")) if device is None else torch.device(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with saved_modes(model), torch.no_grad():
        model.eval()
        for index, (x, y) in enumerate(_iter_batches(data, _EVAL_CHUNK)):
            if max_batches is not None and index >= max_batches:
                break
            logits = model(x.to(device))
            correct += (logits.argmax(dim=1) == y.to(device)).sum()
            total += y.numel()
    if total == 0:
        raise ValueError("accuracy() got no samples to evaluate.")
    return 100.0 * float(correct) / total


def _make_optimizer(model: nn.Module, optimizer, lr, weight_decay: float, momentum: float):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    name = str(optimizer).lower()
    if name not in _DEFAULT_LR:
        raise ValueError(f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {optimizer!r}.")
    lr = _DEFAULT_LR[name] if lr is None else lr
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def _training_batches(train_data, batch_size: int, seed: Optional[int]):
    if not _is_tensor_pair(train_data):
        return train_data
    from torch.utils.data import DataLoader, TensorDataset

    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*train_data), batch_size=batch_size, shuffle=True, generator=generator)


def train(
    model: nn.Module,
    train_data: Any,
    epochs: int = 10,
    lr: Optional[float] = None,
    optimizer: Union[str, torch.optim.Optimizer] = "sgd",
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    device: DeviceLike = None,
    eval_data: Any = None,
    seed: Optional[int] = None,
    progress: bool = True,
    scheduler: Optional[str] = "cosine",
    batch_size: int = 64,
) -> TrainHistory:
    """Train ``model`` in place with cross-entropy; it ends in eval mode.

    Parameters
    ----------
    model : nn.Module
        Maps ``x`` of shape ``(B, ...)`` to logits ``(B, num_classes)``.
    train_data : DataLoader, iterable of (x, y), or tuple (x, y)
        A tensor pair ``x: (N, ...)``, ``y: (N,)`` is batched here with ``batch_size``
        and reshuffled every epoch.
    epochs : int
        Passes over ``train_data``.
    lr : float, optional
        Learning rate; default 0.05 for SGD and 1e-3 for Adam.
    optimizer : {"sgd", "adam"} or torch.optim.Optimizer
        SGD uses ``momentum``; both use ``weight_decay``.
    weight_decay, momentum : float
        Optimiser settings.
    device : str or torch.device, optional
        Move the model and batches there; default is where the model is.
    eval_data : optional
        Evaluated with :func:`accuracy` after every epoch.
    seed : int, optional
        Makes shuffling and any randomness in the model reproducible; the global
        RNG state is restored afterwards.
    progress : bool
        Show tqdm progress bars.
    scheduler : {"cosine", None}
        Cosine annealing of the learning rate to 0 over ``epochs``, or constant.
    batch_size : int
        Batch size for a tensor-pair ``train_data``.

    Returns
    -------
    TrainHistory
        Per-epoch loss and accuracies.

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite (try a lower ``lr``).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}.")
    if scheduler not in ("cosine", None):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}.")
    if device is None:
        device = (model_device(model) or torch.device("cpu"))
    else:
        device = torch.device(device)
        model.to(device)
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        history = _fit(model, train_data, epochs, lr, optimizer, weight_decay, momentum,
                       device, eval_data, seed, progress, scheduler, batch_size)
    model.eval()
    return history


def _fit(model, train_data, epochs, lr, optimizer, weight_decay, momentum,
         device, eval_data, seed, progress, scheduler, batch_size) -> TrainHistory:
    from tqdm.auto import tqdm

    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)) if scheduler else None
    batches = _training_batches(train_data, batch_size, seed)
    history = TrainHistory()
    epoch_bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in epoch_bar:
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        batch_bar = tqdm(_iter_batches(batches, batch_size), desc=f"epoch {epoch + 1}", leave=False,
                         disable=not progress, total=_length(batches))
        for step, (x, y) in enumerate(batch_bar):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; try a lower lr."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += len(y)
        if seen == 0:
            raise ValueError("train_data yielded no batches.")
        history.lr.append(opt.param_groups[0]["lr"])
        history.loss.append(float(loss_sum) / seen)
        history.train_accuracy.append(100.0 * float(correct) / seen)
        if schedule is not None:
            schedule.step()
        postfix = {"loss": f"{history.loss[-1]:.3f}", "acc": f"{history.train_accuracy[-1]:.1f}"}
        if eval_data is not None:
            history.eval_accuracy.append(accuracy(model, eval_data, device=device))
            postfix["eval"] = f"{history.eval_accuracy[-1]:.1f}"
        epoch_bar.set_postfix(postfix)
    epoch_bar.close()
    return history


def _length(batches) -> Optional[int]:
    try:
        return len(batches)
    except TypeError:
        return None


def _check_meta_loadable(meta: dict) -> None:
    buffer = io.BytesIO()
    torch.save(meta, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise TypeError(
            "Checkpoint meta must hold plain Python values (str, int, float, bool, None, lists, dicts) "
            f"or tensors so it can be loaded safely; got {sorted(meta)} with an unsupported value ({err})."
        ) from err


def save_checkpoint(model: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike, **meta) -> Path:
    """Save a model's ``state_dict`` and ``meta`` with ``torch.save``.

    The file holds ``{"format", "version", "state_dict", "meta"}``; it is written to a
    temporary name first and then renamed, so an interrupted save leaves no half file.

    Parameters
    ----------
    model : nn.Module or mapping of str to Tensor
        The model, or a state dict.
    path : path
        Target file; parent folders are created.
    **meta
        Plain values (numbers, strings, lists, dicts, tensors), e.g. ``arch="vgg11_bn", epoch=3``.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> from intrafusion_viz.models import MLP
    >>> import tempfile, os
    >>> path = save_checkpoint(MLP(), os.path.join(tempfile.mkdtemp(), "mlp.pt"), arch="mlp")
    >>> load_checkpoint(path)[1]
    {'arch': 'mlp'}
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {name: value.detach().cpu() if isinstance(value, torch.Tensor) else value for name, value in state.items()}
    _check_meta_loadable(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": _FORMAT, "version": 1, "state_dict": state, "meta": meta}, partial)
    os.replace(partial, path)
    return path


def _invalid(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"'{path}' is not a valid intrafusion_viz checkpoint: {reason}. {_RESAVE_HINT}")


# keys other tools keep a model's weights under (timm, Lightning, torchvision references, many training scripts)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "ema", "model_ema")


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(("constants.pkl", "/code/")) or "/code/__torch__" in name
                   for name in archive.namelist())


def _is_state(value) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _strip_prefix(state: dict) -> dict:
    """``module.`` (DataParallel / DDP) or ``_orig_mod.`` (torch.compile) on every key: drop it."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _torch_load(path: Path, weights_only: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        if weights_only and "Unsupported global" in str(err):
            raise CheckpointError(
                f"'{path}' holds pickled Python objects (probably a whole model saved with torch.save(model)); "
                "loading it runs code from the file, so it is refused by default. Only if you trust the file, "
                "pass weights_only=False (--trust-pickle on the command line); or re-save it as "
                "torch.save(model.state_dict(), path).") from err
        raise _invalid(path, f"torch.load failed ({type(err).__name__}: {detail})") from err


def _read_payload(path: Path, weights_only: bool = True) -> tuple[Any, dict]:
    """(state dict or whole nn.Module, meta) from our format, a plain state dict, a wrapper dict or a pickled model."""
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at '{path}'.")
    if _is_torchscript(path):
        raise CheckpointError(
            f"'{path}' is a TorchScript archive (torch.jit.save): it holds compiled code, not the nn.Module that "
            "pruning rewrites. Save the eager model's weights instead: torch.save(model.state_dict(), path).")
    payload = _torch_load(path, weights_only)
    if isinstance(payload, nn.Module):
        return payload, {}
    if isinstance(payload, dict) and payload.get("format") == _FORMAT and "state_dict" in payload:
        state, meta = payload["state_dict"], payload.get("meta", {})
        if not _is_state(state):
            raise _invalid(path, "'state_dict' is not a mapping of names to tensors")
        if not isinstance(meta, dict):
            raise _invalid(path, f"'meta' is a {type(meta).__name__}, not a dict")
        return dict(state), meta
    if _is_state(payload):
        return _strip_prefix(dict(payload)), {}
    if isinstance(payload, dict):
        for key in _WRAPPER_KEYS:
            inner = payload.get(key)
            if isinstance(inner, nn.Module):
                return inner, {}
            if _is_state(inner):
                return _strip_prefix(dict(inner)), {}
    found = type(payload).__name__
    if isinstance(payload, dict):
        keys = [str(k) for k in list(payload)[:5]]
        found += f" with keys {keys}{' ...' if len(payload) > 5 else ''}"
    raise _invalid(path, f"expected a state dict (names -> tensors), a dict holding one under one of "
                         f"{list(_WRAPPER_KEYS)}, a whole model, or the dict save_checkpoint writes; found a {found}")


def _mismatches(state: dict, model: nn.Module, limit: int = 5) -> list[str]:
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(v, torch.Tensor) and state[k].shape != v.shape
    ]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            problems.append(f"{len(items)} {label} ({', '.join(items[:limit])}{more})")
    return problems


def load_checkpoint(path: PathLike, model: Optional[nn.Module] = None, weights_only: bool = True) -> tuple[Any, dict]:
    """Load a checkpoint: ours, a plain ``torch.save(model.state_dict())`` file, or a whole pickled model.

    Reads, in this order: the file :func:`save_checkpoint` writes; a plain state dict (names -> tensors;
    a ``module.`` prefix from DataParallel is dropped); a dict holding one under ``"state_dict"``,
    ``"model_state_dict"``, ``"model"``, ``"net"``, ... (training scripts, Lightning, timm); and a whole
    model saved with ``torch.save(model)``.  TorchScript archives are refused (they hold compiled code,
    not an ``nn.Module`` that can be pruned).

    Safety: by default ``torch.load(path, map_location="cpu", weights_only=True)`` runs no code from the
    file, which is enough for every format above except a whole pickled model.  Unpickling a model runs
    code from the file: pass ``weights_only=False`` only for files you trust.

    Parameters
    ----------
    path : path
        Checkpoint file.
    model : nn.Module, optional
        If given, the weights are loaded into it (strict); it is only changed when every key and shape matches.
    weights_only : bool
        ``False`` allows a whole pickled model (trusting the file).

    Returns
    -------
    (state_dict or model, meta) : tuple
        Without ``model``: the state dict (CPU tensors), or the whole ``nn.Module`` when the file holds one;
        with ``model``: ``model`` with the weights loaded.  ``meta`` is the dict :func:`save_checkpoint`
        stored (empty for other formats).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        A ``ValueError``: the file is unreadable, TorchScript, a pickled model while ``weights_only=True``,
        or it does not fit ``model`` (the message lists missing/unexpected keys and shape mismatches).
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module to load the weights into (or None), got {type(model).__name__}")
    if not isinstance(weights_only, bool):
        raise TypeError(f"weights_only must be True or False, got {weights_only!r}")
    path = Path(path)
    state, meta = _read_payload(path, weights_only)
    if isinstance(state, nn.Module):
        if model is None:
            return state, meta
        state = state.state_dict()
    if model is None:
        return state, meta
    problems = _mismatches(state, model)
    if problems:
        raise CheckpointError(
            f"Checkpoint '{path}' does not fit {type(model).__name__}: {'; '.join(problems)}. "
            "It was probably saved from another architecture or width (or another number of classes); "
            "the model was left unchanged."
        )
    model.load_state_dict(state, strict=True)
    return model, meta
