"""Intra-Fusion through ``nn.MultiheadAttention``: the residual plan and per-head plans of the q/k/v dims.

``nn.MultiheadAttention(E, h)`` ties two widths to one number: the residual width it reads and writes
(``in_proj_weight`` columns, ``out_proj`` rows and bias) and the width of its queries, keys and values
(``in_proj_weight`` rows, ``out_proj`` columns), split into ``h`` heads of ``E / h`` dims.  Pruning the
residual stream to ``k`` therefore forces the q/k/v width to ``k`` too, but merging residual channels
``i`` and ``j`` says nothing about q/k/v dims ``i`` and ``j``.  So the module is merged with two plans:

* the residual plan (the group's own, ``n -> k``): ``in_proj_weight`` columns take the group's
  ``in_map`` (summed, as a consumer's columns) and ``out_proj`` rows and bias its ``out_map``
  (averaged, as a producer's rows).  The q/k/v rows are no residual channels: they never enter the
  residual cost (:func:`residual_vectors` gives the residual channels' columns and rows only);
* per head, a plan over the head's own dims (block diagonal over heads, like a grouped conv's plan),
  keeping ``k / h`` dims of each head:

  - scores ``q . k``: dim ``d``'s vector is ``[q row d, q bias d, k row d, k bias d]``; q rows and bias
    are averaged (``out_map``), k rows and bias summed (``in_map``).  Exact on duplicates: if
    ``q_d = q_d'`` and ``k_d = k_d'``, then ``q_d k_d + q_d' k_d' = q_d (k_d + k_d')``;
  - values: dim ``d``'s vector is ``[v row d, v bias d, out_proj column d]``; v rows and bias are
    averaged, ``out_proj`` columns summed (like an MLP's fc1 rows and fc2 columns).

  The head plans are made from the module's weights as they are (columns in the original residual
  coordinates): every q/k/v row lives in the same input space, so distances between them mean the
  same before or after the residual merge, and the plan of the dims does not depend on the plan of the
  residual stream (nor on the order in which groups are merged).  A linear merge of the columns keeps
  equal rows equal, so duplicates found before are duplicates after.
* the softmax temperature: attention divides the scores by ``sqrt(head_dim)``, and ``head_dim``
  shrinks from ``E / h`` to ``k / h``; the merged q rows and bias are multiplied by
  ``sqrt((k / h) / (E / h))`` so the scores keep their scale (without it, merging exact duplicates
  changes the function).  ``OTConfig(q_scale="none")`` leaves q as merged instead (measured to keep
  more accuracy on converged ViTs; not exact on duplicates).

The importance of a head's dims is the call's magnitude kind (``"l2"``: sum of squares, otherwise
``"l1"``: sum of absolute values) of the weights in its vector (rows and columns, biases left out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..groups._layer_rules import attention_problem
from ..plan._blocks import per_block, top_per_block

__all__ = ["AttentionPlan", "attention_problem", "residual_vectors", "attention_plan", "merge_heads", "merge_attention"]


@dataclass
class AttentionPlan:
    """The per-head plans of one ``nn.MultiheadAttention`` (``n`` = its ``embed_dim`` before, ``k`` after).

    Attributes
    ----------
    name : str
        The module's name.
    num_heads : int
    n, k : int
        q/k/v dims before and after (``k / num_heads`` kept in each head).
    qk_kept, v_kept : Tensor, shape (k,)
        Kept q/k dims and kept v dims, ascending (``k / num_heads`` in each head).
    qk_plan, v_plan : Tensor, shape (n, k)
        Block-diagonal transport plans (one block per head).
    qk_out_map, qk_in_map : Tensor, shape (n, k)
        Applied to q rows (averaged) and k rows (summed).
    v_out_map, v_in_map : Tensor, shape (n, k)
        Applied to v rows (averaged) and ``out_proj`` columns (summed).
    qk_importance, v_importance : Tensor, shape (n,)
    q_scale : float
        ``sqrt(k / n)`` (``OTConfig.q_scale="exact"``, default) or 1 (``"none"``): multiplies the merged
        q rows and bias (softmax temperature).
    """

    name: str
    num_heads: int
    n: int
    k: int
    qk_kept: torch.Tensor
    qk_plan: torch.Tensor
    qk_out_map: torch.Tensor
    qk_in_map: torch.Tensor
    qk_importance: torch.Tensor
    v_kept: torch.Tensor
    v_plan: torch.Tensor
    v_out_map: torch.Tensor
    v_in_map: torch.Tensor
    v_importance: torch.Tensor
    q_scale: float


@torch.no_grad()
def residual_vectors(module: nn.MultiheadAttention, slots: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Each residual channel's part of the cost: its ``in_proj_weight`` column and ``out_proj`` row (+ bias).

    Parameters
    ----------
    module : nn.MultiheadAttention
    slots : Tensor, shape (n,)
        Position of each of the group's channels in the module's embedding.
    bias : bool
        Append the ``out_proj`` bias (a producer's bias).

    Returns
    -------
    Tensor, shape (n, 3E + E (+ 1)), in the module's dtype
    """
    slots = slots.to(module.in_proj_weight.device)
    parts = [module.in_proj_weight.detach().index_select(1, slots).T,
             module.out_proj.weight.detach().index_select(0, slots)]
    if bias and module.out_proj.bias is not None:
        parts.append(module.out_proj.bias.detach().index_select(0, slots)[:, None])
    return torch.cat(parts, 1).cpu()


def _qkv(module: nn.MultiheadAttention):
    """q, k, v weights (E, E each), their biases (zeros without in_proj_bias) and out_proj's weight, float64 CPU."""
    w = module.in_proj_weight.detach().double().cpu()
    e = module.embed_dim
    b = (module.in_proj_bias.detach().double().cpu() if module.in_proj_bias is not None
         else torch.zeros(3 * e, dtype=torch.float64))
    return (w[:e], w[e:2 * e], w[2 * e:]), (b[:e], b[e:2 * e], b[2 * e:]), \
        module.out_proj.weight.detach().double().cpu()


def _magnitude(parts, kind: str) -> torch.Tensor:
    if kind == "l2":
        return sum(p.pow(2).sum(1) for p in parts)
    return sum(p.abs().sum(1) for p in parts)


@torch.no_grad()
def attention_plan(module: nn.MultiheadAttention, k: int, config=None, importance: str = "l1", seed: int = 0,
                   method: str = "intra-fusion", name: str = "") -> AttentionPlan:
    """The per-head plans of ``module``'s q.k and v dims for keeping ``k`` of its ``embed_dim`` dims.

    Parameters
    ----------
    module : nn.MultiheadAttention
        Read only (see :func:`attention_problem` for what is supported).
    k : int
        Dims to keep, a multiple of ``num_heads``.
    config : OTConfig, optional
        Cost, masses, solver and fusion rule, as for the group (default ``OTConfig()``).
    importance : {"l1", "l2"}
        Magnitude of each dim's weights (its rows and columns; biases left out); anything else is l1.
    seed : int
        Seed of the k-means of ``method="fold"`` and of a centroid cost.
    method : {"intra-fusion", "fold"}
        Transport plans per head, or k-means clusters per head (Model Folding).
    """
    from ..plan._config import OTConfig
    from ..plan._transport import cost_matrix, masses, merge_matrices, transport_plan

    config = config if config is not None else OTConfig()
    problem = attention_problem(module)
    if problem is not None:
        raise ValueError(f"cannot merge the MultiheadAttention {name!r}: {problem}")
    n, h = module.embed_dim, module.num_heads
    if not (0 < k <= n) or k % h:
        raise ValueError(f"the MultiheadAttention {name!r} has {h} heads: keep a multiple of {h} of its {n} "
                         f"dims (got k={k})")
    (wq, wk, wv), (bq, bk, bv), wo = _qkv(module)
    with_bias = config.cost_bias and module.in_proj_bias is not None
    kind = importance if importance == "l2" else "l1"

    def plans(vec, imp):
        if k == n:
            kept = torch.arange(n)
            plan = torch.eye(n, dtype=torch.float64) / n
        elif method == "fold":
            from ..plan._kmeans import cluster_plan

            kept, plan = per_block(n, k, h, lambda rows, kb: cluster_plan(vec[rows], imp[rows], kb, seed=seed))
        else:
            a = masses(config.source_mass, imp, n)

            def solve(rows, kb):
                local = top_per_block(imp[rows], kb, 1)
                sub_a = a[rows] / a[rows].sum()
                sub_b = masses(config.target_mass, imp[rows][local], kb)
                cost = cost_matrix(vec[rows], local, config, seed=seed)
                return local, transport_plan(cost, sub_a, sub_b, config, kept=local)

            kept, plan = per_block(n, k, h, solve, weights=a)
        out_map, in_map = merge_matrices(plan, config.fusion if method != "fold" else "barycentric")
        return kept, plan, out_map, in_map

    def column(b):
        return [b[:, None]] if with_bias else []

    qk_imp = _magnitude([wq, wk], kind)
    v_imp = _magnitude([wv, wo.T], kind)
    qk = plans(torch.cat([wq, *column(bq), wk, *column(bk)], 1), qk_imp)
    v = plans(torch.cat([wv, *column(bv), wo.T], 1), v_imp)
    q_scale = math.sqrt(k / n) if config.q_scale == "exact" else 1.0  # softmax temperature (OTConfig.q_scale)
    return AttentionPlan(name, h, n, k, *qk, qk_imp, *v, v_imp, q_scale)


def _parameter(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new.to(old.device, old.dtype).contiguous(), requires_grad=old.requires_grad)


def merge_heads(weights, biases, out_weight: torch.Tensor, plan: AttentionPlan):
    """The q/k/v dims merged by the per-head plan, the residual side left as it is.

    Parameters
    ----------
    weights : (Tensor, Tensor, Tensor), each shape (n, E)
        q, k and v rows (``E``: residual width, untouched here).
    biases : (Tensor, Tensor, Tensor), each shape (n,)
    out_weight : Tensor, shape (E, n)
        ``out_proj.weight``: its columns are the v dims.
    plan : AttentionPlan

    Returns
    -------
    (q, k, v) each (k, E), (bq, bk, bv) each (k,), out_weight (E, k); float64.  q and its bias carry
    ``plan.q_scale`` (softmax temperature of the smaller heads).
    """
    (wq, wk, wv), (bq, bk, bv) = [[t.double() for t in ts] for ts in (weights, biases)]
    q = plan.q_scale * (plan.qk_out_map.T @ wq)
    bq = plan.q_scale * (plan.qk_out_map.T @ bq)
    return ((q, plan.qk_in_map.T @ wk, plan.v_out_map.T @ wv),
            (bq, plan.qk_in_map.T @ bk, plan.v_out_map.T @ bv),
            out_weight.double() @ plan.v_in_map)


@torch.no_grad()
def merge_attention(module: nn.MultiheadAttention, slots: torch.Tensor, out_map: torch.Tensor,
                    in_map: torch.Tensor, plan: AttentionPlan) -> None:
    """Merge ``module`` with the residual maps and its per-head plan, in place.

    Parameters
    ----------
    module : nn.MultiheadAttention
        Its ``embed_dim`` is ``plan.n``; afterwards it is ``plan.k`` (``num_heads`` kept,
        ``head_dim = k / num_heads``).
    slots : Tensor, shape (n,)
        Current position of each of the group's residual channels in the module's embedding.
    out_map, in_map : Tensor, shape (n, k)
        The group's residual maps: ``out_proj`` rows and bias take ``out_map``, ``in_proj_weight``
        columns take ``in_map``.
    plan : AttentionPlan
        From :func:`attention_plan` on this module (before any change to it).
    """
    n, k = plan.n, plan.k
    if module.embed_dim != n or tuple(out_map.shape) != (n, k) or tuple(in_map.shape) != (n, k):
        raise ValueError(f"the attention plan of {plan.name!r} is for {n} -> {k} dims; the module has "
                         f"embed_dim {module.embed_dim} and the group's maps have shape {tuple(out_map.shape)}")
    order = torch.as_tensor(slots, dtype=torch.long).cpu()
    weights, biases, wo = _qkv(module)
    out_map, in_map = out_map.double().cpu(), in_map.double().cpu()
    (q, kk, v), (bq, bk, bv), wo = merge_heads(weights, biases, wo, plan)  # rows: q/k/v dims; columns: residual
    module.in_proj_weight = _parameter(module.in_proj_weight, torch.cat([q, kk, v], 0)[:, order] @ in_map)
    if module.in_proj_bias is not None:
        module.in_proj_bias = _parameter(module.in_proj_bias, torch.cat([bq, bk, bv]))
    out = module.out_proj
    out.weight = _parameter(out.weight, out_map.T @ wo[order])
    if out.bias is not None:
        out.bias = _parameter(out.bias, out_map.T @ out.bias.detach().double().cpu()[order])
    out.in_features = out.out_features = k
    module.embed_dim = module.kdim = module.vdim = k
    module.head_dim = k // module.num_heads
