"""Which layers of a group can be merged, and how they constrain the merge.

One home for the per-layer-type rules that :func:`find_groups` reports (``Group.mergeable``) and
:func:`intrafusion_viz.prune` obeys:

* a depthwise conv's kernel and bias are its channel's own row (merged like a producer row);
* LayerNorm / GroupNorm / RMSNorm / InstanceNorm / PReLU hold one affine value per channel, merged
  like BatchNorm parameters (role ``"affine"``);
* a grouped conv (``1 < groups < channels``) lets channels merge only inside their own conv group,
  and every conv group keeps the same number of channels (Torch-Pruning's rule); a GroupNorm
  likewise splits the channels into ``num_groups`` blocks of its statistics.  Both are *blocks*:
  the selection and the transport plan are made per block (a block-diagonal plan).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch.nn as nn

__all__ = ["AFFINE_TYPES", "is_affine", "conv_blocks", "norm_blocks", "merge_problem", "kept_count",
           "GroupNormCountError"]

_RMSNORM = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
AFFINE_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU) + _RMSNORM


class GroupNormCountError(ValueError):
    """The kept channel count of a group is not a multiple of a GroupNorm's ``num_groups``."""


def is_affine(module) -> bool:
    """A normalisation (or PReLU) layer with at most one value per channel in each of its tensors."""
    if not isinstance(module, AFFINE_TYPES):
        return False
    for attr in ("weight", "bias"):
        t = getattr(module, attr, None)
        if t is not None and t.dim() != 1:  # LayerNorm over several dims: not a per-channel affine
            return False
    if isinstance(module, nn.PReLU) and module.num_parameters == 1:
        return False  # one shared slope: no channel to merge (and nothing to prune)
    return True


def _identity(member, n: int) -> bool:
    return member.local_idxs == tuple(range(n)) and member.root_idxs == tuple(range(n))


def conv_blocks(members, modules: Dict[str, nn.Module], n: int) -> int:
    """Number of conv groups the group's channels fall into (1 without a grouped conv)."""
    blocks = 1
    for m in members:
        g = getattr(m, "conv_groups", 1)
        if m.role == "grouped":
            g = modules[m.name].groups
        if g > 1 and n % g == 0:
            blocks = blocks * g // math.gcd(blocks, g)
    return blocks


def norm_blocks(members, modules: Dict[str, nn.Module]) -> int:
    """Least common multiple of the ``num_groups`` of the group's GroupNorms (1 without one)."""
    blocks = 1
    for m in members:
        module = modules.get(m.name)
        if m.role == "affine" and isinstance(module, nn.GroupNorm):
            blocks = blocks * module.num_groups // math.gcd(blocks, module.num_groups)
    return blocks


def merge_problem(members: Sequence, modules: Dict[str, nn.Module], n: int, selection: bool = False,
                  index: Optional[int] = None, name: str = "") -> Optional[str]:
    """Why the group cannot be merged (``selection=False``) or pruned by selection, or ``None``."""
    where = f"group {index} ({name!r})" if index is not None else f"group {name!r}"
    for m in members:
        module = modules.get(m.name)
        if m.layer_type == "Parameter" and m.role not in ("shift", "scale") and not selection:
            return (f"{where} contains a bare nn.Parameter, {m.name!r}, used outside a layer in an operation "
                    "other than adding, concatenating or multiplying it per channel, which Intra-Fusion cannot merge")
        if m.role == "other" and not selection:
            if isinstance(module, nn.MultiheadAttention):  # merged with per-head plans (_attention.py)

                why = attention_problem(module, n) or (None if _identity(m, n) else "its channels are reordered")
                if why is None:
                    continue
                return (f"{where} contains a MultiheadAttention layer, {m.name!r}, that Intra-Fusion cannot "
                        f"merge: {why}")
            return f"{where} contains a {m.layer_type} layer, {m.name!r}, whose channels Intra-Fusion cannot merge"
        counts = {}
        for r in m.root_idxs:
            counts[r] = counts.get(r, 0) + 1
        if len(counts) != n or len(set(counts.values())) != 1:
            return f"{where}: layer {m.name!r} ({m.layer_type}) maps the group's channels unevenly"
        g = getattr(m, "conv_groups", 1) if m.role != "grouped" else getattr(module, "groups", 1)
        if g > 1:
            if n % g or not _identity(m, n):
                return (f"{where}: the channels of {m.name!r} (a convolution with groups={g}) are not "
                        f"split into {g} equal conv groups by the group")
            if g == n:
                what = (f"a depthwise conv with channel multiplier {module.out_channels // module.in_channels}"
                        if m.role == "grouped" and module.in_channels == g else f"a conv with groups={g}")
                return (f"{where}: each of its {n} channels is a conv group of its own in {m.name!r} ({what}), "
                        "so no channel can be removed without removing a whole conv group")
    return None


def kept_count(n: int, sparsity: float, conv: int, norm: int, num_kept, where: str = "",
               gn_names: Sequence[str] = ()) -> int:
    """Channels a group keeps: every conv group loses ``floor(removed / conv)`` channels, where
    ``removed = n - num_kept(n, sparsity)`` (Torch-Pruning's rule for grouped convs: never more than
    the requested fraction), refused unless the count is also a multiple of its GroupNorms' groups."""
    k = n - conv * ((n - num_kept(n, sparsity)) // conv)
    if k % norm:
        step = conv * norm // math.gcd(conv, norm)
        ok = [c for c in range(step, n + 1, step)]
        shown = ", ".join(f"{c} (sparsity {1 - c / n:.3g})" for c in ok[:8]) + (", ..." if len(ok) > 8 else "")
        raise GroupNormCountError(
            f"{where} would keep {k} of {n} channels, which the GroupNorm {', '.join(map(repr, gn_names))} "
            f"(num_groups={norm}) cannot split into equal groups; pick a sparsity for this group that keeps "
            f"a multiple of {step} channels: {shown} (a per-group sparsity dict sets it for this group "
            "alone), or leave the group out with groups=[...]")
    return k


def head_multiple(members: Sequence, modules: Dict[str, nn.Module]) -> int:
    """The number of attention heads a group's kept count must be a multiple of (1 without attention).

    ``nn.MultiheadAttention`` splits its embedding into ``num_heads`` equal heads, so a group holding
    its embedding channels keeps a multiple of them (Torch-Pruning's ``round_to=num_heads``).
    """
    step = 1
    for m in members:
        module = modules.get(m.name)
        if isinstance(module, nn.MultiheadAttention):
            step = step * module.num_heads // math.gcd(step, module.num_heads)
    return step


def round_up_to(k: int, n: int, step: int) -> int:
    """``k`` rounded up to a multiple of ``step`` (never above ``n``): never more removed than asked."""
    return min(n, -(-k // step) * step)


def attention_problem(module: nn.Module, n: Optional[int] = None) -> Optional[str]:
    """Why Intra-Fusion cannot merge this ``nn.MultiheadAttention`` (``None``: it can).

    Supported: one packed ``in_proj_weight`` (``kdim == vdim == embed_dim``), no ``bias_k`` /
    ``bias_v``, no ``add_zero_attn``, and (when ``n`` is given) all of its ``embed_dim`` channels in
    the group.
    """
    if not isinstance(module, nn.MultiheadAttention):
        return "it is not an nn.MultiheadAttention"
    if not module._qkv_same_embed_dim or module.in_proj_weight is None:
        return "it has separate q/k/v projection weights (kdim or vdim differs from embed_dim)"
    if module.bias_k is not None or module.bias_v is not None:
        return "it has bias_k / bias_v (add_bias_kv=True)"
    if module.add_zero_attn:
        return "it has add_zero_attn=True"
    if n is not None and n != module.embed_dim:
        return f"the group holds {n} of its {module.embed_dim} embedding channels"
    return None
