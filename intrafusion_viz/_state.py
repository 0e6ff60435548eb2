"""The caller's model and global state: read them, change them only on purpose, put them back.

One home for the small helpers every entry point needs: the inputs as a tuple, the model's device
and dtype, per-module train/eval modes saved and restored, and a snapshot that undoes an in-place
change that failed half-way.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["as_tuple", "model_device", "saved_modes", "ModelSnapshot"]


def as_tuple(example_inputs) -> tuple:
    """``example_inputs`` as a tuple of positional inputs (a single tensor becomes a 1-tuple)."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def model_device(model: nn.Module) -> Optional[torch.device]:
    """Device of the model's first parameter (or buffer); ``None`` for a model without tensors."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def saved_modes(model: nn.Module) -> Iterator[None]:
    """Inside the block the model's modes may change; afterwards every submodule has its own mode back.

    ``model.train(flag)`` sets one mode on every submodule, which would turn a frozen eval-mode
    BatchNorm inside a train-mode model into a training one; this puts each module back as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class ModelSnapshot:
    """Enough of some submodules' state to undo an in-place surgery that fails half-way.

    Keeps, for each named module: its attributes (layer sizes such as ``out_channels``), which
    Parameter / buffer objects it holds, and a copy of their values, ``.grad`` and
    ``requires_grad``.  :meth:`restore` puts back the same objects with the same values, so the
    caller's references to parameters, optimizers and hook handles stay valid.

    Parameters
    ----------
    model : nn.Module
    names : iterable of str
        Module names (``model.named_modules()``) that the surgery may touch.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        modules = dict(model.named_modules())
        self._saved: List[Tuple[nn.Module, dict, dict, dict, list]] = []
        for name in sorted(set(names)):
            module = modules.get(name)
            if module is None or not isinstance(module, nn.Module):
                continue
            attrs = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
            params, buffers = dict(module._parameters), dict(module._buffers)
            values = [(t, t.detach().clone(), getattr(t, "grad", None), t.requires_grad)
                      for t in list(params.values()) + list(buffers.values()) if t is not None]
            self._saved.append((module, attrs, params, buffers, values))

    @torch.no_grad()
    def restore(self) -> None:
        """Put every saved module back: same attributes, same tensor objects, same values."""
        for module, attrs, params, buffers, values in self._saved:
            for key in [k for k in vars(module) if k not in attrs and k not in ("_parameters", "_buffers", "_modules")]:
                del module.__dict__[key]
            module.__dict__.update(attrs)
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            for tensor, value, grad, requires_grad in values:
                if tensor.shape != value.shape:
                    tensor.data = value
                else:
                    tensor.copy_(value)
                if isinstance(tensor, nn.Parameter):
                    tensor.grad = grad
                tensor.requires_grad_(requires_grad)


def dtype_problem(model: nn.Module, inputs: Iterable) -> Optional[str]:
    """Why the inputs' dtypes may not fit the model's parameters (a sentence), or ``None``.

    Meant to explain a forward pass that failed: integer inputs are fine for models that embed them.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        return None  # mixed-precision or parameter-free models: let the forward pass decide
    (dtype,) = dtypes
    for x in inputs:
        if torch.is_tensor(x) and x.dtype != dtype:
            if x.is_floating_point():
                return (f"inputs are {x.dtype} but the model's parameters are {dtype}; convert the inputs "
                        f"with x.to({dtype}) (or the model with model.to({x.dtype}))")
            if any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()):
                continue
            return (f"inputs are {x.dtype} (not floating point) but the model's parameters are {dtype}; "
                    f"convert the inputs with x.to({dtype})")
    return None

