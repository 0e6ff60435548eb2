"""intrafusion_viz: optimal-transport pruning (Intra-Fusion, ICLR 2024) you can run, see and teach.

The pipeline, one subpackage a stage (each may import only the stages above it in this list)::

    groups/      coupled channel groups: tracing (Torch-Pruning), per-layer-type merge rules
    plan/        importance, channel cost, transport plans, k-means clusters, compact plan records
    merge/       BatchNorm folding and the surgery that merges (or cuts) channels along a plan; attention
    repair/      statistics repair after a merge: with data (BatchNorm, REPAIR), data-free, synthetic inputs
    pruning/     prune(): resolve, score, plan, merge, repair, record
    evaluation/  accuracy, training, checkpoints, reference models, layer drift, sweeps
    fusion/      fuse(): OTFusion of several models; the paper's PaF / FaP pipelines
    figures/     plotly figures;  widgets/  ipywidgets dashboards;  cli.py  the command line

``models.py`` (architectures), ``data/`` (datasets) and ``_state.py`` (the caller's state) sit below all of them.

Example
-------
>>> import torch, intrafusion_viz as ifv
>>> model = ifv.models.SmallCNN()
>>> res = ifv.prune(model, torch.randn(1, 1, 8, 8), sparsity=0.5)
>>> [g.k for g in res.groups]
[8, 16]
"""
import sys
import types
from importlib import import_module

__version__ = "0.1.0"

# Submodules and names that pull in heavier dependencies load on first use.
_LAZY_MODULES = {
    "models": "models", "data": "data", "figures": "figures", "widgets": "widgets", "cli": "cli",
    "evaluation": "evaluation", "sweeps": "evaluation.sweeps", "pipelines": "fusion.pipelines",
}
# Every name loads on first use, so `import intrafusion_viz` (and the CLI's --help) does not import torch.
_EAGER_STAGES = {
    "fusion": ("FUSE_METHODS", "FusedGroup", "FuseResult", "fuse", "permute_neurons"),
    "groups": ("Group", "Member", "TracerError", "UnsupportedLayerError", "find_groups"),
    "merge": ("apply_merge", "channel_features", "fold_batchnorm"),
    "plan": ("IMPORTANCES", "OTConfig", "cost_matrix", "group_importance", "masses", "merge_matrices",
             "resolve_importance", "selection_plan", "transport_plan"),
    "pruning": ("METHODS", "GroupResult", "PruneResult", "num_kept", "prune"),
    "repair": ("REPAIR_MODES", "activation_features", "repair"),
}
_LAZY_NAMES = {
    **{name: stage for stage, names in _EAGER_STAGES.items() for name in names},
    "accuracy": "evaluation._train",
    "train": "evaluation._train",
    "save_checkpoint": "evaluation._train",
    "load_checkpoint": "evaluation._train",
    "CheckpointError": "evaluation._train",
    "TrainHistory": "evaluation._train",
    "reference_model": "evaluation._reference",
    "reference_data": "evaluation._reference",
    "layer_drift": "evaluation._diagnostics",
    "synthetic_inputs": "repair._synthetic",
    "finetune": "evaluation._finetune",
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
        return import_module(f".{_LAZY_MODULES[name]}", __name__)
    if name in _LAZY_NAMES:
        value = getattr(import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``intrafusion_viz.repair`` the function when the ``repair`` subpackage is imported.

    Importing a subpackage binds it on its parent; ``repair`` is both a subpackage and a function (as
    ``from .repair import repair`` had it before the names became lazy), and the function wins.
    """

    def __setattr__(self, name, value):
        if (isinstance(value, types.ModuleType) and name in _LAZY_NAMES
                and value.__name__ == f"{__name__}.{name}" and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
