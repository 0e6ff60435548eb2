"""The work copy of a model: ``copy.deepcopy`` without its per-object overhead, optionally sharing
the tensors that the surgery replaces (rather than writes into)."""
from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn

from ._memo import _local

__all__ = ["private_copy", "unshare"]


def private_copy(model: nn.Module, share: Optional[Dict[int, torch.Tensor]] = None) -> nn.Module:
    """``copy.deepcopy(model)``, faster: every plain ``nn.Parameter`` is cloned up front.

    The result shares no tensor with ``model`` (exactly as deepcopy: a Parameter becomes
    ``nn.Parameter(p.data.clone(), p.requires_grad)``; buffers and everything else go through deepcopy),
    except the tensors in ``share`` (``{id: tensor}``, from :func:`intrafusion_viz.merge._surgery.shared_tensors`):
    the copy holds new tensor objects on their storage, which the surgery replaces without writing
    into them (:func:`unshare` clones whatever it left).
    """
    memo: Dict[int, object] = {}
    for key, t in (share or {}).items():
        view = t.detach()  # the same storage and version counter: the fold memo knows it as t
        memo[key] = nn.Parameter(view, t.requires_grad) if isinstance(t, nn.Parameter) else view
    aliases = getattr(_local, "aliases", None)
    buffers = list(model.buffers())
    storages: Dict[int, int] = {}
    for b in buffers:
        if b.layout == torch.strided and b.device.type != "meta":
            key = b.untyped_storage().data_ptr()
            storages[key] = storages.get(key, 0) + 1
    with torch.no_grad():
        for p in model.parameters():
            if type(p) is nn.Parameter and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.data.clone(memory_format=torch.preserve_format), p.requires_grad)
        for b in buffers:  # plain buffers alone in their storage; the rest (views, subclasses) go to deepcopy
            if (type(b) is torch.Tensor and id(b) not in memo and b.layout == torch.strided and b.is_leaf
                    and not b.requires_grad and b.grad is None and not b.__dict__ and not b.is_quantized
                    and b.device.type != "meta" and b.is_contiguous() and b.storage_offset() == 0
                    and b.untyped_storage().nbytes() == b.numel() * b.element_size()
                    and storages.get(b.untyped_storage().data_ptr()) == 1):
                memo[id(b)] = b.clone()
    if aliases is not None:  # inside fold_memo: a fold of an untouched copy is the original's fold
        originals = {id(t): t for t in list(model.parameters()) + buffers}
        for key, clone in list(memo.items()):
            original = originals.get(key)
            if original is not None:
                aliases[id(clone)] = (clone._version, clone, original, original._version)
    return _module_copy(model, memo)


@torch.no_grad()
def unshare(copied: nn.Module, model: nn.Module) -> None:
    """Give ``copied`` its own clone of every tensor that still shares storage with ``model``'s."""
    theirs = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())
              if t.numel() and t.layout == torch.strided}
    clones: Dict[int, torch.Tensor] = {}
    for module in copied.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or not t.numel() or t.layout != torch.strided \
                        or t.untyped_storage().data_ptr() not in theirs:
                    continue
                if id(t) not in clones:
                    clone = t.detach().clone(memory_format=torch.preserve_format)
                    clones[id(t)] = nn.Parameter(clone, t.requires_grad) if isinstance(t, nn.Parameter) else clone
                table[name] = clones[id(t)]


_ATOMIC = (type(None), bool, int, float, complex, str, bytes, type)
_EMPTY_HOOKS = (dict, OrderedDict)


def _module_copy(module: nn.Module, memo: Dict[int, object]) -> nn.Module:
    """``copy.deepcopy(module, memo)`` with the module tree walked here instead of by ``copy``.

    What deepcopy does with an ``nn.Module`` (``cls.__new__``, a deep copy of ``__getstate__()``,
    ``__setstate__``), done directly for the parts every module has: attributes that deepcopy
    returns as they are (numbers, strings, tuples of them), the ``_modules`` / ``_parameters`` /
    ``_buffers`` tables (their entries through this function or the memo), empty hook tables and
    the set of non-persistent buffer names; the class's own ``__setstate__`` is called, as deepcopy
    calls it.  Any other attribute, and any module class that changes how it is copied or pickled
    (``__deepcopy__``, ``__reduce__``, ``__getstate__``, slots), goes to ``copy.deepcopy`` with the
    same memo.
    """
    key = id(module)
    if key in memo:
        return memo[key]
    cls = type(module)
    if (not isinstance(module, nn.Module) or getattr(cls, "__deepcopy__", None) is not None
            or cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__
            or cls.__getstate__ is not nn.Module.__getstate__ or copyreg._slotnames(cls)):
        return copy.deepcopy(module, memo)
    state = module.__getstate__()
    new = cls.__new__(cls)
    memo[key] = new
    memo.setdefault(id(memo), []).append(module)  # as deepcopy: keep the original alive while memo lives
    copied = {}
    for name, value in state.items():
        kind = type(value)
        if kind in _ATOMIC or (kind is tuple and all(type(v) in _ATOMIC for v in value)):
            copied[name] = value
        elif id(value) in memo:
            copied[name] = memo[id(value)]
        elif name == "_modules" and kind in _EMPTY_HOOKS:
            table = kind()
            memo[id(value)] = table
            for child_name, child in value.items():
                table[child_name] = None if child is None else _module_copy(child, memo)
            copied[name] = table
        elif name in ("_parameters", "_buffers") and kind in _EMPTY_HOOKS and all(
                t is None or id(t) in memo for t in value.values()):
            table = kind((k, None if t is None else memo[id(t)]) for k, t in value.items())
            memo[id(value)] = table
            copied[name] = table
        elif kind in _EMPTY_HOOKS and not value:
            copied[name] = memo[id(value)] = kind()
        elif kind is set and all(type(v) in _ATOMIC for v in value):
            copied[name] = memo[id(value)] = set(value)
        else:
            copied[name] = copy.deepcopy(value, memo)
    new.__setstate__(copied)
    return new
