"""Fine-tuning after pruning: the paper's Table 1 flow (prune the whole model, fine-tune, compare).

:func:`finetune` trains a copy of a pruned model (or of any model) for a number of epochs and returns
its accuracy after every epoch, epoch 0 being the model as given, as tidy records.  It can stop and
resume from a checkpoint folder, with the same record as an uninterrupted run: each epoch's
shuffling and random state come from ``(seed, epoch)``, not from the process's history.

Example
-------
>>> import torch, intrafusion_viz as ifv
>>> model = ifv.models.MLP()
>>> x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
>>> res = ifv.prune(model, x[:1], sparsity=0.5)
>>> tuned = ifv.finetune(res, (x, y), epochs=2, progress=False)
>>> list(tuned.records.epoch), tuned.records.method.iloc[0]
([0, 1, 2], 'fold')
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._train import _is_tensor_pair, _iter_batches, _make_optimizer, accuracy

__all__ = ["FinetuneResult", "finetune"]

PathLike = Union[str, os.PathLike]
_STATE_FILE = "finetune_state.pt"


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model : nn.Module
        The fine-tuned copy (eval mode); the model passed in is untouched.
    records : pandas.DataFrame
        One row per epoch 0..``epochs`` (epoch 0: before fine-tuning), tidy columns ``epoch``,
        ``accuracy`` (percent on ``eval_data``), ``train_loss`` (mean over the epoch; NaN at epoch 0),
        ``lr``, ``method``, ``importance``, ``sparsity``, ``group`` (-1: whole model), ``group_name``,
        ``paper_group``, ``params``, ``seed``, ``label``.
    complete : bool
        False when ``stop_after`` ended the call early (call again with the same ``checkpoint_dir``).
    """

    model: nn.Module
    records: Any
    complete: bool = True

    @property
    def accuracy(self) -> list:
        """Accuracy after each epoch, epoch 0 first."""
        return [float(a) for a in self.records.accuracy]


def _describe(result_or_model) -> tuple[nn.Module, dict]:
    """The model to fine-tune and the labels of its record (method, importance, sparsity)."""
    from ..pruning import PruneResult

    if isinstance(result_or_model, PruneResult):
        res = result_or_model
        sparsities = sorted({round(g.sparsity, 6) for g in res.groups})
        sparsity = sparsities[0] if len(sparsities) == 1 else float("nan")
        importance = getattr(res, "importance", None)
        return res.model, dict(method=res.method, sparsity=sparsity,
                               importance=importance if isinstance(importance, str) else "",
                               params=res.params_after)
    if isinstance(result_or_model, nn.Module):
        return result_or_model, dict(method="", sparsity=float("nan"), importance="",
                                     params=sum(p.numel() for p in result_or_model.parameters()))
    raise TypeError(f"finetune() takes an ifv.prune() result or an nn.Module, got {type(result_or_model).__name__}; "
                    "pass res (or res.model)")


def _epoch_batches(data, batch_size: int, seed: int, epoch: int, epoch_size: Optional[int]):
    """This epoch's batches: a tensor pair shuffled by ``(seed, epoch)`` (first ``epoch_size`` samples of
    the permutation), or the iterable as it is."""
    if not _is_tensor_pair(data):
        return data
    x, y = data
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(y), generator=g)
    if epoch_size is not None:
        order = order[:epoch_size]
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(order), batch_size)]


def _settings(epochs, lr, optimizer, weight_decay, momentum, scheduler, batch_size, seed, epoch_size, model):
    return dict(epochs=epochs, lr=lr, optimizer=str(optimizer), weight_decay=weight_decay, momentum=momentum,
                scheduler=scheduler, batch_size=batch_size, seed=seed, epoch_size=epoch_size,
                shapes=[tuple(v.shape) for v in model.state_dict().values()])


def _resume(state_path: Optional[Path], settings: dict, model: nn.Module, opt, schedule, dev):
    """``(rows, epoch)`` of a run saved in ``state_path`` (model, optimiser and schedule loaded), else ``(None, 0)``."""
    if state_path is None or not state_path.is_file():
        return None, 0
    state = torch.load(state_path, map_location=dev, weights_only=False)
    if state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise ValueError(f"{state_path} was saved with other settings or another model ({', '.join(changed)}); "
                         "pass a fresh checkpoint_dir or the same settings")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["scheduler"])
    return state["rows"], state["epoch"]


def _train_epoch(model: nn.Module, opt, batches, batch_size: int, dev, epoch: int, progress: bool):
    """One epoch of cross-entropy training; returns ``(summed loss, samples seen)``."""
    from tqdm.auto import tqdm

    model.train()
    loss_sum, seen = 0.0, 0
    for x, y in tqdm(_iter_batches(batches, batch_size), desc=f"epoch {epoch + 1}", leave=False,
                     disable=not progress, total=len(batches) if hasattr(batches, "__len__") else None):
        x, y = x.to(dev), y.to(dev)
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss became {loss.item()} at epoch {epoch + 1}; try a lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
    return loss_sum, seen


def finetune(result_or_model, data, epochs: int, eval_data=None, *, lr: float = 0.01,
             optimizer: str = "sgd", weight_decay: float = 5e-4, momentum: float = 0.9,
             scheduler: Optional[str] = "cosine", batch_size: int = 64, epoch_size: Optional[int] = None,
             seed: int = 0, device=None, checkpoint_dir: Optional[PathLike] = None,
             stop_after: Optional[int] = None, label: str = "", progress: bool = True) -> FinetuneResult:
    """Fine-tune a copy of a pruned model and record its accuracy after every epoch.

    Parameters
    ----------
    result_or_model : PruneResult or nn.Module
        What :func:`intrafusion_viz.prune` returned (its ``method``, sparsity and parameter count label
        the record), or a model.  Neither is changed.
    data : tuple (x, y) or iterable of (x, y) batches
        Training data; ``x: (N, ...)``, ``y: (N,)``.  A tensor pair is reshuffled every epoch from
        ``(seed, epoch)``, so a resumed run sees the same batches; a DataLoader is used as it is.
    epochs : int
        Epochs of fine-tuning (the cosine schedule spans them); ``0`` only measures.
    eval_data : tuple (x, y) or iterable, optional
        Where accuracy is measured after every epoch; default ``data``.
    lr, optimizer, weight_decay, momentum, scheduler
        SGD with momentum (or ``"adam"``), cosine annealing to 0 over ``epochs`` (or ``None``: constant).
    batch_size : int
        Batch size for a tensor pair.
    epoch_size : int, optional
        Samples per epoch drawn from a tensor pair (a fresh random subset each epoch); default all.
    seed : int
        Seeds shuffling and every epoch's random state (dropout); the global RNG is restored after.
    device : str or torch.device, optional
        Where to train; default where the model is.
    checkpoint_dir : path-like, optional
        After every epoch the state (model, optimiser, schedule, record) is saved here; a call with the
        same folder and settings resumes from it (the record equals an uninterrupted run's).
    stop_after : int, optional
        Train at most this many epochs in this call, then return with ``complete=False`` (resume later
        with the same ``checkpoint_dir``).
    label : str
        Copied into the record's ``label`` column (e.g. ``"IF (paper)"``).
    progress : bool
        tqdm progress bars (epochs, and batches within an epoch).

    Returns
    -------
    FinetuneResult
        ``.model`` (the fine-tuned copy), ``.records`` (accuracy per epoch, epoch 0 = before).

    Raises
    ------
    ValueError
        Bad ``epochs`` / ``lr`` / ``stop_after``, or a checkpoint folder saved with other settings or
        another model (pass a fresh folder).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be an int >= 1 or None, got {stop_after!r}")
    if scheduler not in ("cosine", None):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}")
    source, labels = _describe(result_or_model)
    model = copy.deepcopy(source)
    if device is not None:
        model.to(torch.device(device))
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    eval_data = data if eval_data is None else eval_data
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)) if scheduler else None
    settings = _settings(epochs, lr, optimizer, weight_decay, momentum, scheduler, batch_size, seed, epoch_size, model)
    base = dict(labels, group=-1, group_name="all", paper_group="", seed=seed, label=label)

    state_path = Path(checkpoint_dir) / _STATE_FILE if checkpoint_dir is not None else None
    rows, start = _resume(state_path, settings, model, opt, schedule, dev)
    if rows is None:
        rows = [dict(base, epoch=0, accuracy=accuracy(model, eval_data, device=dev), train_loss=float("nan"),
                     lr=float("nan"))]
    end = epochs if stop_after is None else min(epochs, start + stop_after)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    bar = tqdm(range(start, end), desc=f"fine-tune {label or labels['method'] or 'model'}", unit="epoch",
               initial=start, total=epochs, disable=not progress)
    with torch.random.fork_rng(devices=cuda):
        for epoch in bar:
            torch.manual_seed(seed * 100_003 + epoch)
            lr_now = opt.param_groups[0]["lr"]
            loss_sum, seen = _train_epoch(model, opt, _epoch_batches(data, batch_size, seed, epoch, epoch_size),
                                          batch_size, dev, epoch, progress)
            if seen == 0:
                raise ValueError("finetune() got no training batches from data")
            if schedule is not None:
                schedule.step()
            acc = accuracy(model, eval_data, device=dev)
            rows.append(dict(base, epoch=epoch + 1, accuracy=acc, train_loss=loss_sum / seen, lr=lr_now))
            bar.set_postfix(acc=f"{acc:.2f}")
            if state_path is not None:
                state_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = state_path.with_suffix(".tmp")
                torch.save(dict(settings=settings, model=model.state_dict(), optimizer=opt.state_dict(),
                                scheduler=schedule.state_dict() if schedule is not None else None,
                                rows=rows, epoch=epoch + 1), tmp)
                os.replace(tmp, state_path)
    bar.close()
    model.eval()
    return FinetuneResult(model=model, records=pd.DataFrame(rows), complete=end == epochs)
