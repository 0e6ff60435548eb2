"""``prune``: groups -> importance -> transport plan -> fusion (or plain pruning), on a copy of the model.

:func:`prune` reads as its list of steps; each step is a function of :mod:`._steps`, testable alone.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..groups._trace import Group
from ..merge._memo import fold_memo
from ..plan._config import OTConfig, resolve_default
from . import _steps as steps
from ._result import GroupResult, PruneResult, num_kept
from ._steps import METHODS

__all__ = ["prune", "PruneResult", "GroupResult", "num_kept", "METHODS"]

Sparsity = Union[float, Mapping[Union[int, str], float]]


@fold_memo()  # each BatchNorm fold is computed once per call (vectors, scores and surgery share it)
def prune(model: nn.Module, example_inputs, sparsity: Sparsity, *, method: Optional[str] = None,
          importance: Union[str, Callable] = "l1", groups: Optional[Sequence[Union[int, str]]] = None,
          config: Optional[OTConfig] = None, batch=None, loss_fn: Optional[Callable] = None,
          features: Optional[Callable[[nn.Module, Group], torch.Tensor]] = None,
          seed: int = 0, inplace: bool = False, progress: bool = False, repair: Optional[str] = "auto",
          sequential: bool = False, on_unmergeable: Optional[str] = None) -> PruneResult:
    """Prune ``model`` by merging channels along an optimal-transport plan (or by dropping them).

    Parameters
    ----------
    model : nn.Module
        CPU or CUDA, train or eval mode.  Not modified unless ``inplace=True``.
    example_inputs : Tensor or tuple of Tensor
        A batch shaped like the model's inputs, on the model's device (used to trace groups once).
    sparsity : float in [0, 1) or mapping
        Fraction of channels to remove from each group, or ``{group index or name: sparsity}``.
    method : {"intra-fusion", "default", "fold"}
        Merge every channel into the kept ones (Intra-Fusion), drop the unkept ones, or fold as Model
        Folding (ICLR 2025) does: Hartigan k-means clusters of its channel vectors merged to their means,
        with its data-free repair (``plan/_hartigan.py``, ``repair/_fold_repair.py``; checked against its
        own code in ``tests/test_model_folding_golden.py``).  ``None`` (default) with no ``config``:
        the best measured without data (``docs/defaults.md``): on a model with BatchNorm statistics
        and one floating-point input, Intra-Fusion with capacities (``OTConfig.capped()``) and, for
        ``repair="auto"``, the synthetic-input repair (when its cost fits
        ``repair._synthetic.SYNTHETIC_FLOP_BUDGET`` on the device); otherwise ``"fold"``.  ``None`` with a
        ``config``: ``"intra-fusion"`` (``intrafusion_viz.plan._config.resolve_default``).
    importance : str or callable
        ``"l1"``, ``"l2"``, ``"taylor"`` (needs ``batch``), ``"lamp"``, ``"random"``, a Torch-Pruning
        importance object, or any callable ``group -> Tensor[group.size]`` (higher = keep).
    groups : int, str, or list of int or str, optional
        Prune only these groups (indices, root-layer names or paper labels ``"G1"``; see
        :func:`resolve_group_keys`); default: all.
    config : OTConfig, optional
        Optimal-transport settings (cost, masses, solver, fusion rule).
    batch : (inputs, targets), optional
        Data for data-driven importance (Taylor).
    loss_fn : callable, optional
        Loss for Taylor importance; default cross-entropy.
    features : callable, optional
        ``features(model, group) -> Tensor (group.size, d)``: the vectors the transport cost compares
        (default :func:`channel_features`, the channels' weights with BatchNorm folded).  Called on
        the caller's model, read only.
    seed : int
        Seed of the random importance, and of the k-means clusterings (``method="fold"``, and
        ``OTConfig(centroid_init="k-means++")`` such as :meth:`OTConfig.data_free`).  At high
        sparsity the clusters, and the accuracy after merging, can change a lot from seed to seed
        (``docs/results.md``, "The k-means draw decides at 70 %"): try a few.
    inplace : bool
        Prune ``model`` itself.
    progress : bool
        Show a tqdm progress bar over groups.
    repair : {"auto", "none", "data-free", "synthetic"} or None
        Statistics repair after merging, without data: ``"data-free"`` predicts every merged
        channel's mean and variance from the stored BatchNorm statistics and weight correlations of
        the channels it merged and corrects it (see :func:`intrafusion_viz.repair`).  ``"synthetic"``:
        that, then every BatchNorm's statistics re-estimated on inputs synthesised from the unpruned
        model's BatchNorm statistics (:func:`intrafusion_viz.synthetic_inputs`, 64 inputs, 200 Adam
        steps, once per model: the last two models' inputs are remembered); it follows the layers
        after a merged one too.  ``"auto"``: ``"synthetic"`` for the default call on a model with
        BatchNorm; ``"data-free"`` for ``method="fold"`` and hard Intra-Fusion plans (``target_mass``
        ``"free"`` or ``"capped"``: ``OTConfig.auto_repair``); none otherwise.  Repairs that need
        data: :func:`intrafusion_viz.repair` on the result.
    sequential : bool
        Plan and merge group by group, each plan made on the network with the previous groups
        already merged (default: every plan from the untouched model).
    on_unmergeable : {"skip", "raise", "default"} or None
        What to do with a selected group whose channels cannot be merged (``Group.mergeable`` is
        False, e.g. a layer type we cannot merge) or, for ``method="default"``, pruned.  ``"skip"``:
        leave it as it is, record it in ``PruneResult.skipped`` and warn once; ``"raise"``: refuse
        the whole call with an :class:`UnsupportedLayerError` before anything changes; ``"default"``:
        prune it by selection (default pruning) where that is possible, else skip it.  ``None``
        (default): ``"raise"`` when you named the groups (``groups=[...]`` or a per-group sparsity
        dict), else ``"skip"``; when *no* selected group could be pruned it raises too.

    Notes
    -----
    Grouped convs keep the same number of channels in every conv group (Torch-Pruning's rule: each
    conv group loses ``floor(removed / groups)`` channels; ``GroupResult.k`` is the count kept) and
    channels merge only inside their conv group (a block-diagonal plan).  A GroupNorm's
    ``num_groups`` must divide the kept count, else a ``ValueError`` names the counts that work.
    A group holding an ``nn.MultiheadAttention`` keeps a multiple of its ``num_heads``; Intra-Fusion
    and ``"fold"`` merge its q/k/v dims with per-head plans of their own (importance ``"l2"`` if asked,
    else l1, on those dims' weights; ``GroupResult.attention``; see ``intrafusion_viz/merge/_attention.py``).

    Returns
    -------
    PruneResult
        ``.model`` (the pruned model, in the caller's train/eval mode) and ``.groups``.

    Examples
    --------
    >>> import torch, intrafusion_viz as ifv
    >>> model = ifv.models.vgg11_bn(width_mult=0.25)
    >>> res = ifv.prune(model, torch.randn(1, 3, 32, 32), sparsity=0.5)   # the default call (docs/defaults.md)
    >>> res.method, res.model.features[0].out_channels
    ('intra-fusion', 8)
    """
    # no method and no config: the measured default (docs/defaults.md); a config alone means Intra-Fusion
    synthesizable = method is None and config is None and steps.synthesizable(model, example_inputs, repair)
    method, config, repair = resolve_default(method, config, repair, synthesizable=synthesizable)
    request = steps.check_arguments(method, importance, config, seed, inplace, progress, repair, sequential,
                                    on_unmergeable, features, batch, loss_fn)
    selection = steps.resolve(model, example_inputs, sparsity, groups, request)
    scored = steps.score(model, example_inputs, request, selection)
    records, plans = steps.plan(request, selection, scored)
    sources = steps.repair_sources(model, example_inputs, request, selection)  # read before anything is merged
    params_before = sum(p.numel() for p in model.parameters())
    work = steps.work_copy(model, request, selection, scored)
    with steps.undo_on_failure(work):
        fold_scales = steps.merge(work, example_inputs, request, selection, scored, plans, records)
        result = PruneResult(work.model, records, method, request.config, params_before, 0,
                             selection.skipped)
        steps.repair(result, sources, request, fold_scales)
        steps.sync_widths(work.model)  # last: nothing after it can fail and leave the attribute changed
    return steps.record(result, request, selection)
