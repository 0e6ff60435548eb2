"""intrafusion_viz: optimal-transport pruning (Intra-Fusion, ICLR 2024) you can run, see and teach.

The pipeline, one private module a step::

    model -> find_groups (_groups) -> importance (_importance) -> transport plan (_transport)
          -> fusion or plain pruning (_fusion, _prune) -> evaluation (_train) -> figures -> widgets

Example
-------
>>> import torch, intrafusion_viz as ifv
>>> model = ifv.models.SmallCNN()
>>> res = ifv.prune(model, torch.randn(1, 1, 8, 8), sparsity=0.5)
>>> [g.k for g in res.groups]
[8, 16]
"""
from importlib import import_module

from ._data_aware import REPAIR_MODES, activation_features, repair
from ._fusion import apply_merge, channel_features, fold_batchnorm
from ._groups import Group, Member, TracerError, UnsupportedLayerError, find_groups
from ._importance import IMPORTANCES, group_importance, resolve_importance
from ._otfusion import FUSE_METHODS, FusedGroup, FuseResult, fuse, permute_neurons
from ._prune import METHODS, GroupResult, PruneResult, num_kept, prune
from ._transport import OTConfig, cost_matrix, masses, merge_matrices, selection_plan, transport_plan

__version__ = "0.1.0"

# Submodules and names that pull in heavier dependencies load on first use.
_LAZY_MODULES = ("models", "data", "figures", "widgets", "sweeps", "cli", "pipelines")
_LAZY_NAMES = {
    "accuracy": "_train",
    "train": "_train",
    "save_checkpoint": "_train",
    "load_checkpoint": "_train",
    "CheckpointError": "_train",
    "TrainHistory": "_train",
    "reference_model": "_reference",
    "reference_data": "_reference",
    "layer_drift": "_diagnostics",
    "synthetic_inputs": "_synthetic",
}

__all__ = [
    "find_groups", "Group", "Member", "UnsupportedLayerError", "TracerError",
    "prune", "PruneResult", "GroupResult", "METHODS", "num_kept",
    "OTConfig", "cost_matrix", "masses", "transport_plan", "merge_matrices", "selection_plan",
    "IMPORTANCES", "resolve_importance", "group_importance",
    "fold_batchnorm", "channel_features", "apply_merge",
    "activation_features", "repair", "REPAIR_MODES",
    "fuse", "FuseResult", "FusedGroup", "FUSE_METHODS", "permute_neurons",
    *_LAZY_NAMES, *_LAZY_MODULES,
]


def __getattr__(name):
    if name in _LAZY_MODULES:
        return import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
