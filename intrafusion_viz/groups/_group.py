"""What a traced group is: :class:`Member` (one layer's share of the channels), :class:`Group`, the errors.

A member's role comes from the Torch-Pruning handler that prunes it (``_OUT_FNS`` ...); :class:`Group`
is also a read-only sequence of ``(dependency, indices)`` items that Torch-Pruning's importance
objects accept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
import torch_pruning as tp
from torch_pruning._helpers import GroupItem
from torch_pruning.pruner import function as tpf



class UnsupportedLayerError(ValueError):
    """A layer in a group cannot be merged (or pruned) by this toolkit."""


class TracerError(RuntimeError):
    """Torch-Pruning's dependency tracer cannot follow an operation of the model (a limit of the tracer,
    not a fault of the model or of its inputs)."""


# role of a group member, from the Torch-Pruning handler that prunes it
_OUT_FNS = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels)
_IN_FNS = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels)
_DW_FNS = (tpf.prune_depthwise_conv_out_channels, tpf.prune_depthwise_conv_in_channels)
_NORM_FNS = (tpf.prune_batchnorm_out_channels, tpf.prune_batchnorm_in_channels)


@dataclass(frozen=True)
class Member:
    """One layer of a group and how its tensors hold the group's channels.

    Attributes
    ----------
    name : str
        Module name in ``model.named_modules()``.
    role : str
        ``"out"`` (a conv/linear producing the channels: rows and bias), ``"in"`` (a conv/linear
        consuming them: columns), ``"norm"`` (BatchNorm), ``"depthwise"`` (a depthwise conv: its
        kernel and bias are the channel's row), ``"affine"`` (LayerNorm, GroupNorm, RMSNorm,
        InstanceNorm, PReLU: one scale/shift per channel, merged like BatchNorm parameters),
        ``"grouped"`` (a grouped conv consuming the channels: channels merge only inside their own
        conv group), ``"shift"`` / ``"scale"`` (a bare per-channel ``nn.Parameter`` added to or
        concatenated with the channels, e.g. ``pos_embedding``, ``class_token``, or multiplying them,
        e.g. ``layer_scale``), or ``"other"`` (a layer type we can prune by selection but not merge).
    layer_type : str
        Class name of the module, for messages and figures.
    dim : int
        Weight dimension that indexes the channels.
    local_idxs : tuple of int
        Positions along ``dim`` that belong to the group (several per channel after a flatten).
    root_idxs : tuple of int
        For each local position, the group channel (0..n-1) it belongs to.
    fold_from : str or None
        For ``"norm"`` members, the conv/linear whose output feeds only this BatchNorm, so the
        BatchNorm can be folded into it exactly.
    """

    name: str
    role: str
    layer_type: str
    dim: int
    local_idxs: Tuple[int, ...]
    root_idxs: Tuple[int, ...]
    fold_from: Optional[str] = None
    handler_name: str = ""
    pruning_dim: int = -1
    conv_groups: int = 1  # ``groups`` of a producing grouped conv (its channels merge per conv group)


class _DependencyView:
    """What Torch-Pruning's importance objects read from a dependency, without its pruning ``__call__``."""

    __slots__ = ("trigger", "handler", "source", "target", "index_mapping")

    def __init__(self, handler, node):
        self.trigger = self.handler = handler
        self.source = self.target = node
        self.index_mapping = [None, None]

    @property
    def layer(self):
        return self.target.module

    @property
    def pruning_fn(self):
        return self.handler

    def __repr__(self) -> str:
        return f"[{self.target.name}] ({getattr(self.handler, '__name__', self.handler)})"


class Group:
    """A set of coupled layers whose ``size`` channels are removed (or merged) together.

    It reads like a Torch-Pruning ``Group`` (a sequence of ``(dep, idxs)`` items with ``root_idxs``),
    so Torch-Pruning's importance objects accept it directly, but it has none of its pruning methods:
    it holds the caller's modules, and only :func:`intrafusion_viz.prune` changes a model.  The recipe
    it was built from is in ``members``.

    Attributes
    ----------
    index : int
        Position in the list returned by :func:`find_groups` (forward order of the root layers).
    paper_index : int
        The Intra-Fusion paper's numbering, counted from the output backwards as its code walks the
        modules (``G1`` of VGG11-BN is ``features.22``; of ResNet18, ``layer4.1.conv1``; ``G0`` is
        the group feeding the classifier).  ``-1`` for output groups (``include_outputs=True``).
    name : str
        Name of the group's first producing layer (its root).
    size : int
        Number of channels ``n``.
    members : list of Member
        Every parametrised layer in the group with its role.
    mergeable : bool
        Whether Intra-Fusion (and ``method="fold"``) can merge this group's channels.
    unmergeable_reason : str or None
        Why not (``None`` when mergeable); :func:`intrafusion_viz.prune` skips such a group when
        pruning the whole model and records the reason in ``PruneResult.skipped``.
    """

    def __init__(self, index: int, paper_index: int, name: str, size: int,
                 members: Sequence[Member], model: nn.Module, fold_pairs: Optional[Dict[str, str]] = None,
                 modules: Optional[Dict[str, object]] = None,
                 unmergeable_reason: Optional[str] = None, blocked: Optional[str] = None):
        self.unmergeable_reason = unmergeable_reason
        self.blocked = blocked  # why no method can prune it (None: default pruning can)
        self.mergeable = unmergeable_reason is None
        self.fold_pairs = dict(fold_pairs or {})  # conv/linear name -> BatchNorm folded into it
        self.index = index
        self.paper_index = paper_index
        self.name = name
        self.size = size
        self.members = list(members)
        self.model = model
        if modules is None:  # name -> module table (bind_groups builds it once for all groups)
            modules = _module_table(model)
        self._table, self._built = modules, None  # the items are built on first use (most groups never are)

    @property
    def _items(self) -> tuple:
        if self._built is None:
            items = []
            for m in self.members:
                node = tp.dependency.Node(self._table[m.name], None, m.name)
                node.pruning_dim = m.pruning_dim
                item = GroupItem(_DependencyView(_handler(m.handler_name), node), list(m.local_idxs))
                item.root_idxs = list(m.root_idxs)
                items.append(item)
            self._built, self._table = tuple(items), None
        return self._built

    def __getitem__(self, k):
        return self._items[k]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    @property
    def items(self) -> tuple:
        return self._items

    @property
    def layers(self) -> List[Tuple[str, str, nn.Module]]:
        """``(name, role, module)`` for every member."""
        modules = dict(self.model.named_modules())
        modules.update(self.model.named_parameters())
        return [(m.name, m.role, modules[m.name]) for m in self.members]

    def __repr__(self) -> str:
        roles = ", ".join(f"{m.name}:{m.role}" for m in self.members)
        why = "" if self.mergeable else f", unmergeable_reason={self.unmergeable_reason!r}"
        return (f"Group(index={self.index}, name={self.name!r}, size={self.size}, members=[{roles}], "
                f"mergeable={self.mergeable}{why})")

    __str__ = __repr__


def _module_table(model: nn.Module) -> Dict[str, object]:
    modules = dict(model.named_modules())
    modules.update(model.named_parameters())  # bare nn.Parameters are members too
    return modules


def _handler(name: str):
    return getattr(tpf, name) if name else None


_HANDLER_NAMES = {
    v: k for k, v in vars(tpf).items() if k.startswith("prune_") and callable(v)
}


def _handler_name(fn) -> str:
    for f, name in _HANDLER_NAMES.items():
        if f == fn:
            return name
    return ""
