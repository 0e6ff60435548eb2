"""Model fusion (OTFusion, Singh & Jaggi, NeurIPS 2020) through the same coupled groups as ``prune``.

Every other model's neurons are aligned onto the first model's neurons group by group, in forward
order, by an optimal-transport plan between the two models' channels; the aligned weights are then
averaged.  A residual stream is one group, so it is aligned once for all of its layers; BatchNorm
parameters and running statistics are aligned with their channels.

The key step of OTFusion: when a group's weight-based cost is computed, the layers' incoming weights
have already been aligned by the plans of the groups that feed them, so model B's rows are written
in model A's input order and can be compared with model A's rows entry by entry.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..merge._surgery import _slots
from ..groups._trace import Group, UnsupportedLayerError, _trace, bind_groups, check_inputs
from ..plan._config import OTConfig
from ..plan._transport import merge_matrices, transport_plan

__all__ = ["fuse", "FuseResult", "FusedGroup", "permute_neurons", "FUSE_METHODS", "FUSE_COSTS"]

FUSE_METHODS = ("ot", "vanilla")
FUSE_COSTS = ("weight", "activation")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class FusedGroup:
    """How one group of model B was aligned onto model A (field names as :class:`GroupResult`).

    ``plan_heatmap(record)`` draws B's neurons (rows) against A's (columns);
    ``figures.fusion_embedding(record)`` puts both models' neurons in one picture.

    Attributes
    ----------
    index, paper_index, name : int, int, str
        As in :class:`Group`.
    n, k : int
        Channels of model B (sources) and of model A (targets).
    plan : Tensor, shape (n, k)
        Transport plan from B's channels to A's (float64, rows sum to ``1/n``, columns to ``1/k``).
    cost : Tensor, shape (n, k) or None
        Ground cost between B's and A's channel vectors (``None`` for ``method="vanilla"``).
    kept : Tensor, shape (k,)
        ``arange(k)``: every neuron of A is a target.
    importance : Tensor, shape (n,)
        Ones (fusion weighs every neuron the same); kept for the figure helpers.
    features_b, features_a : Tensor, shape (n, d) and (k, d), or None
        The vectors the cost compared (B's already aligned to A's inputs for the weight cost).
    out_map, in_map : Tensor, shape (n, k)
        Maps applied to B's producer rows (column-normalised plan) and consumer columns
        (row-normalised plan); both are the permutation itself for a permutation plan.
    model_index : int
        Which model (1, 2, ...) was aligned onto model 0.
    """

    index: int
    paper_index: int
    name: str
    n: int
    k: int
    plan: torch.Tensor
    cost: Optional[torch.Tensor]
    kept: torch.Tensor
    importance: torch.Tensor
    features_b: Optional[torch.Tensor]
    features_a: Optional[torch.Tensor]
    out_map: torch.Tensor
    in_map: torch.Tensor
    model_index: int = 1
    members: list = field(default_factory=list, repr=False)

    @property
    def sparsity(self) -> float:
        return 0.0

    @property
    def assignment(self) -> torch.Tensor:
        """A's neuron that each of B's neurons sends most of its mass to, shape (n,)."""
        return self.plan.argmax(1)

    @property
    def is_permutation(self) -> bool:
        """True when the plan matches every neuron of B to exactly one of A (hard, equal widths)."""
        p = self.plan * self.n
        return self.n == self.k and bool(((p == 0) | ((p - 1).abs() < 1e-9)).all()) and bool(
            ((p > 0.5).sum(0) == 1).all())


@dataclass
class FuseResult:
    """The fused model and, per aligned model, a record of every group's plan.

    Attributes
    ----------
    model : nn.Module
        New model with model 0's structure and widths (the callers' models are unchanged).
    groups : list of FusedGroup
        Model 1's groups aligned onto model 0 (what the figures show).
    aligned : list of list of FusedGroup
        ``aligned[m - 1]`` for model ``m`` (``aligned[0] is groups``).
    method : str
    cost : str
    weights : list of float
        Weight of each model in the average.
    config : OTConfig
    """

    model: nn.Module
    groups: List[FusedGroup]
    aligned: List[List[FusedGroup]]
    method: str
    cost: str
    weights: List[float]
    config: OTConfig

    def group(self, key) -> FusedGroup:
        """The record of model 1's group, by index or root-layer name."""
        for g in self.groups:
            if g.index == key or g.name == key:
                return g
        raise KeyError(f"no group {key!r}; groups: {[g.index for g in self.groups]}")

    def summary(self) -> List[dict]:
        """One dict per (model, group): sizes, mean transport cost and whether the plan is a permutation."""
        rows = []
        for records in self.aligned:
            for g in records:
                mean_cost = float((g.plan * g.cost).sum() * g.n) if g.cost is not None else float("nan")
                rows.append(dict(model=g.model_index, index=g.index, paper_group=f"G{g.paper_index}", name=g.name,
                                 n=g.n, k=g.k, mean_cost=mean_cost, permutation=g.is_permutation))
        return rows


def _state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().double().clone() for k, v in model.state_dict().items()
            if v.is_floating_point()}


def _check_groups(ga: Sequence[Group], gb: Sequence[Group], m: int) -> None:
    if len(ga) != len(gb):
        raise ValueError(f"model {m} has {len(gb)} channel groups, model 0 has {len(ga)}: fuse needs models "
                         "of the same architecture (widths may differ)")
    for a, b in zip(ga, gb):
        roles_a = [(x.name, x.role) for x in a.members]
        roles_b = [(x.name, x.role) for x in b.members]
        if a.name != b.name or roles_a != roles_b:
            raise ValueError(f"group {a.index} differs between model 0 ({a.name!r}) and model {m} ({b.name!r}): "
                             "fuse needs models of the same architecture")
        for x in a.members:
            if x.role not in ("out", "in", "norm") or x.conv_groups > 1:  # a grouped conv's rows stay in their conv group
                raise UnsupportedLayerError(
                    f"group {a.index} ({a.name!r}) contains {x.name!r} ({x.layer_type}, role {x.role!r}); "
                    "fuse can align conv, linear and BatchNorm layers only")


def _transform(t: torch.Tensor, dim: int, slots_b: torch.Tensor, slots_a: torch.Tensor, size_a: int,
               merge: torch.Tensor, where: str) -> torch.Tensor:
    """Rewrite ``t`` along ``dim`` into A's channel order: new[slot_a j] = sum_i merge[i, j] t[slot_b i]."""
    moved = t.movedim(dim, 0)
    n, r = slots_b.shape
    k = slots_a.shape[0]
    covers = moved.shape[0] == slots_b.numel() and size_a == slots_a.numel()
    if not covers and moved.shape[0] != size_a:
        raise UnsupportedLayerError(
            f"{where}: this dimension holds channels of several groups and the widths differ; fuse "
            "models of different widths only when each layer's channels belong to one group")
    new = moved.new_zeros((size_a,) + moved.shape[1:]) if covers else moved.clone()
    src = moved[slots_b.flatten()].reshape(n, -1)
    new[slots_a.flatten()] = (merge.T.to(src.dtype) @ src).reshape((k * r,) + moved.shape[1:])
    return new.movedim(0, dim)


def _weight_features(state: Dict[str, torch.Tensor], group: Group, usable: Sequence[str]) -> torch.Tensor:
    """Producer rows (BatchNorm folded) and biases of the usable producers, one row per channel."""
    parts = []
    for m in group.members:
        if m.role != "out" or m.name not in usable:
            continue
        w = state[f"{m.name}.weight"]
        b = state.get(f"{m.name}.bias")
        bn = group.fold_pairs.get(m.name)
        if bn is not None and f"{bn}.running_var" in state:
            var, mean = state[f"{bn}.running_var"], state[f"{bn}.running_mean"]
            scale = state.get(f"{bn}.weight", torch.ones_like(var)) / torch.sqrt(var + _bn_eps(group, bn))
            shift = state.get(f"{bn}.bias", torch.zeros_like(var)) - mean * scale
            w = w * scale.view([-1] + [1] * (w.dim() - 1)).movedim(0, m.dim)
            b = (b if b is not None else torch.zeros_like(scale)) * scale + shift
        slots = _slots(m, group.size)
        parts.append(w.movedim(m.dim, 0)[slots.flatten()].reshape(group.size, -1))
        if b is not None:
            parts.append(b[slots.flatten()].reshape(group.size, -1))
    return torch.cat(parts, 1)


def _bn_eps(group: Group, name: str) -> float:
    return float(getattr(dict(group.model.named_modules())[name], "eps", 1e-5))


def _activation_features(x: torch.Tensor, pool: Optional[int] = None):
    """``features(model, group) -> (n, d)``: each channel's activations on ``x``, whole maps or pooled.

    ``pool=None``: every position of every sample's map, as OTFusion's own code compares them
    (``activation_mode="raw"``); ``pool=p``: feature maps average-pooled to at most p x p first, which
    keeps where in the image a channel fires (a plain spatial mean does not) at a size a large model's
    transport cost can handle.  Read after the BatchNorm when one follows, before the ReLU.
    """
    import torch.nn.functional as F

    from ..repair._activations import _observed_module, _recording, _run

    def features(model: nn.Module, group: Group) -> torch.Tensor:
        producers = [m for m in group.members if m.role == "out"]
        observed = [_observed_module(group.members, m.name) for m in producers]
        with _recording(model, observed) as outputs:
            _run(model, x)
        parts = []
        for m, name in zip(producers, observed):
            out = outputs[name].double()
            if out.dim() == 4 and pool is not None:
                out = F.adaptive_avg_pool2d(out, (min(pool, out.shape[2]), min(pool, out.shape[3])))
            out = out.flatten(2) if out.dim() > 2 else out.unsqueeze(2)  # (B, C, positions)
            slots = _slots(m, group.size)  # (n, r)
            parts.append(out[:, slots.flatten()].reshape(out.shape[0], group.size, -1).transpose(0, 1)
                         .reshape(group.size, -1).cpu())
        return torch.cat(parts, 1)

    return features


def _input_groups(groups: Sequence[Group]) -> Dict[str, set]:
    """Layer name -> indices of the groups whose channels it consumes."""
    out: Dict[str, set] = {}
    for g in groups:
        for m in g.members:
            if m.role == "in":
                out.setdefault(m.name, set()).add(g.index)
    return out


def _align(model_a: nn.Module, model_b: nn.Module, groups_a, groups_b, state_b, method: str, cost_kind: str,
           config: OTConfig, batch_x, model_index: int, progress, pool: Optional[int] = None) -> List[FusedGroup]:
    """Rewrite ``state_b`` (model B's float tensors) in model A's channel order, in place; records per group."""
    state_a = _state(model_a)
    consumes = _input_groups(groups_a)
    records: List[FusedGroup] = []
    act_features = _activation_features(batch_x, pool) if cost_kind == "activation" and method == "ot" else None
    done = set()
    for ga, gb in progress(list(zip(groups_a, groups_b))):
        n, k = gb.size, ga.size
        cost = fb = fa = None
        if method == "vanilla":
            if n != k:
                raise ValueError(f"method='vanilla' averages channel i with channel i and needs equal widths; group "
                                 f"{ga.index} ({ga.name!r}) has {n} channels in model {model_index} and {k} in "
                                 "model 0. Use method='ot'")
            plan = torch.eye(n, dtype=torch.float64) / n
        else:
            if act_features is not None:
                fa, fb = act_features(model_a, ga).double(), act_features(model_b, gb).double()
            else:
                usable = [m.name for m in ga.members if m.role == "out" and consumes.get(m.name, set()) <= done]
                if not usable:  # every producer reads a group aligned later: compare what there is
                    usable = [m.name for m in ga.members if m.role == "out" and n == k]
                if not usable:
                    raise UnsupportedLayerError(
                        f"group {ga.index} ({ga.name!r}): no producer's inputs are aligned yet and the widths "
                        "differ; use cost='activation' with a batch")
                fa, fb = _weight_features(state_a, ga, usable), _weight_features(state_b, gb, usable)
            cost = torch.cdist(fb, fa, p=float(config.p))
            a = torch.full((n,), 1.0 / n, dtype=torch.float64)
            b = torch.full((k,), 1.0 / k, dtype=torch.float64)
            plan = transport_plan(cost, a, b, config)
        out_map, in_map = merge_matrices(plan)
        for mb, ma in zip(gb.members, ga.members):
            sb, sa = _slots(mb, n), _slots(ma, k)
            if mb.role == "out":
                keys, merge = [(f"{mb.name}.weight", mb.dim), (f"{mb.name}.bias", 0)], out_map
            elif mb.role == "in":
                keys, merge = [(f"{mb.name}.weight", mb.dim)], in_map
            else:
                keys, merge = [(f"{mb.name}.{t}", 0) for t in _NORM_TENSORS], out_map
            for key, d in keys:
                if key in state_b:
                    state_b[key] = _transform(state_b[key], d, sb, sa, state_a[key].shape[d], merge,
                                              f"{key} (group {ga.index})")
        done.add(ga.index)
        records.append(FusedGroup(ga.index, ga.paper_index, ga.name, n, k, plan, cost,
                                  torch.arange(k), torch.ones(n, dtype=torch.float64), fb, fa, out_map, in_map,
                                  model_index, members=list(ga.members)))
    for key, t in state_b.items():
        if t.shape != state_a[key].shape:
            raise UnsupportedLayerError(f"{key} of model {model_index} has shape {tuple(t.shape)} after alignment, "
                                        f"model 0's has {tuple(state_a[key].shape)}: a layer outside every group "
                                        "differs in width")
    return records


def _normalised_weights(weights, count: int) -> List[float]:
    """The models' averaging weights, summing to 1 (default: equal)."""
    w = [1.0] * count if weights is None else [float(x) for x in weights]
    if len(w) != count or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be {count} non-negative numbers with a positive sum, got {weights!r}")
    return [x / sum(w) for x in w]


def fuse(models: Sequence[nn.Module], example_inputs, *, method: str = "ot", cost: Optional[str] = None,
         batch=None, config: Optional[OTConfig] = None, weights: Optional[Sequence[float]] = None,
         reset_bn: bool = False, max_samples: int = 512, pool: Optional[int] = None,
         progress: bool = False) -> FuseResult:
    """Fuse models of one architecture into one with model 0's widths (OTFusion).

    For every coupled group in forward order: compare each model's channels with model 0's, solve the
    transport problem between them (uniform masses), rewrite that model's producer rows, biases and
    BatchNorm parameters/statistics with the column-normalised plan and its consumer columns with the
    row-normalised plan (so a permuted copy is un-permuted exactly), then average the aligned weights.

    Parameters
    ----------
    models : sequence of nn.Module
        Two or more models of the same architecture; model 0 sets the neuron order and the widths
        (others may be narrower or wider, e.g. pruned).  None is modified.
    example_inputs : Tensor or tuple of Tensor
        A batch shaped like the inputs (traces the groups once per model).
    method : {"ot", "vanilla"}
        Align by optimal transport, or average channel i with channel i without aligning
        (the baseline; equal widths only).
    cost : {"weight", "activation"}, optional
        Compare channels by their incoming weights (BatchNorm folded; previous alignment applied)
        or by their activations on ``batch`` (after BatchNorm, before the ReLU; whole feature maps, or
        pooled with ``pool``).  Default ``"activation"`` when ``batch`` is given, else ``"weight"``.
    batch : Tensor or (inputs, targets), optional
        Inputs on the models' device (a couple of hundred samples is enough); labels are not used.
    config : OTConfig, optional
        Uses ``solver`` (``"emd"`` exact or ``"sinkhorn"``), ``reg``, ``max_iter`` and ``p`` (the
        p-norm distance between raw channel vectors, OTFusion's ground metric).
    weights : sequence of float, optional
        Weight of each model in the average (default equal); normalised to sum to 1.
    reset_bn : bool
        Re-estimate every BatchNorm's running statistics on ``batch`` after averaging (the averaged
        weights change the statistics; recommended before evaluating without fine-tuning).
    max_samples : int
        Use at most this many samples of ``batch``.
    pool : int, optional
        ``cost="activation"`` only.  ``None`` (default) compares whole feature maps, every position of
        every sample, as OTFusion's own code does (github sidak/otfusion, ``--geom-ensemble-type acts
        --activation-mode raw``): on two MNIST models it gives their assignments
        (``tests/test_fuse.py``, ``benchmarks/otfusion_side_by_side.py``).  ``pool=p`` average-pools
        each map to at most p x p first: much less memory on large inputs (samples x channels x p^2
        numbers a group instead of samples x channels x H x W), at some cost in alignment (on a small
        MNIST VGG, 4 x 4 matched 42-75 % of OTFusion's assignments per layer and fused 2 points lower).
    progress : bool
        tqdm progress bar over groups.

    Returns
    -------
    FuseResult
        ``.model`` (new, model 0's train/eval mode) and ``.groups`` (model 1 onto model 0, per group).

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> a, b = ifv.models.SmallCNN(), ifv.models.SmallCNN()
    >>> res = ifv.fuse([a, b], torch.randn(1, 1, 8, 8))
    >>> [(g.n, g.k) for g in res.groups]
    [(16, 16), (32, 32)]
    """
    if method not in FUSE_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, FUSE_METHODS))}; got {method!r}")
    models = list(models)
    if len(models) < 2 or not all(isinstance(m, nn.Module) for m in models):
        raise ValueError(f"models must be a sequence of at least two nn.Modules, got {len(models)} items")
    cost = cost or ("activation" if batch is not None else "weight")
    if cost not in FUSE_COSTS:
        raise ValueError(f"cost must be one of {', '.join(map(repr, FUSE_COSTS))}; got {cost!r}")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise ValueError(f"pool must be None (whole feature maps, OTFusion's cost) or an int >= 1; got {pool!r}")
    batch_x = None
    if batch is not None or reset_bn or (cost == "activation" and method == "ot"):
        if batch is None:
            raise ValueError("cost='activation' and reset_bn=True need batch= (a couple of hundred inputs)")
        from ..repair._activations import _inputs_of
        batch_x = _inputs_of(batch, max_samples)
    config = config if config is not None else OTConfig()
    if not isinstance(config, OTConfig):
        raise TypeError(f"config must be an OTConfig, got {type(config).__name__}")
    w = _normalised_weights(weights, len(models))
    for m in models:
        check_inputs(m, example_inputs)
    traces = [_trace(m, example_inputs) for m in models]
    groups = [bind_groups(t.specs, m, t.fold_pairs) for t, m in zip(traces, models)]
    for i in range(1, len(models)):
        _check_groups(groups[0], groups[i], i)

    def bar(items):
        if not progress:
            return items
        from tqdm.auto import tqdm
        return tqdm(items, desc=f"fuse ({method}, {cost})", leave=False)

    state_a = _state(models[0])
    aligned_states, aligned = [state_a], []
    for i in range(1, len(models)):
        state_b = _state(models[i])
        if set(state_b) != set(state_a):
            extra = sorted(set(state_b) ^ set(state_a))[:4]
            raise ValueError(f"model {i} and model 0 differ in tensors {extra}: fuse needs one architecture. (A "
                             "model pruned by ifv.prune has its BatchNorms folded, which gives bias-free convs a "
                             "bias: fuse it with ifv.fold_batchnorm(other_model, example_inputs))")
        aligned.append(_align(models[0], models[i], groups[0], groups[i], state_b, method, cost, config,
                              batch_x, i, bar, pool))
        aligned_states.append(state_b)

    fused = copy.deepcopy(models[0])
    new_state = fused.state_dict()
    with torch.no_grad():
        for key in state_a:
            avg = sum(wi * s[key] for wi, s in zip(w, aligned_states))
            new_state[key].copy_(avg.to(new_state[key].dtype))
    if reset_bn:
        from ..repair._activations import _reset_bn_statistics
        _reset_bn_statistics(fused, batch_x)
    fused.train(models[0].training)
    return FuseResult(fused, aligned[0], aligned, method, cost, w, config)


@torch.no_grad()
def permute_neurons(model: nn.Module, example_inputs, *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose neurons are shuffled within every coupled group: same function, other weights.

    Every group gets its own random permutation, applied to its producers' rows and biases, its
    BatchNorms and its consumers' columns (a residual stream is permuted the same way in all its
    layers), so the copy computes what ``model`` computes (up to float rounding) while its weight
    matrices look unrelated: the situation :func:`fuse` has to undo.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    example_inputs : Tensor or tuple of Tensor
    seed : int
        Seed of the permutations.

    Returns
    -------
    nn.Module
        The permuted copy, in ``model``'s train/eval mode.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> model, x = ifv.models.SmallCNN().eval(), torch.randn(4, 1, 8, 8)
    >>> torch.allclose(ifv.permute_neurons(model, x[:1])(x), model(x), atol=1e-5)
    True
    """
    check_inputs(model, example_inputs)
    trace = _trace(model, example_inputs)
    groups = bind_groups(trace.specs, model, trace.fold_pairs)
    state = _state(model)
    gen = torch.Generator().manual_seed(seed)
    for g in groups:
        for m in g.members:
            if m.role not in ("out", "in", "norm") or m.conv_groups > 1:
                raise UnsupportedLayerError(f"group {g.index} ({g.name!r}) contains {m.name!r} "
                                            f"({m.layer_type}); only conv, linear and BatchNorm can be permuted")
        perm = torch.randperm(g.size, generator=gen)
        merge = torch.zeros(g.size, g.size, dtype=torch.float64)
        merge[perm, torch.arange(g.size)] = 1.0  # new channel j = old channel perm[j]
        for m in g.members:
            slots = _slots(m, g.size)
            names = (("weight", m.dim), ("bias", 0)) if m.role == "out" else (
                (("weight", m.dim),) if m.role == "in" else tuple((t, 0) for t in _NORM_TENSORS))
            for t, d in names:
                key = f"{m.name}.{t}"
                if key in state:
                    state[key] = _transform(state[key], d, slots, slots, state[key].shape[d], merge, key)
    copy_ = copy.deepcopy(model)
    target = copy_.state_dict()
    for key, t in state.items():
        target[key].copy_(t.to(target[key].dtype))
    return copy_
