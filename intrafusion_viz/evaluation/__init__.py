"""Evaluation: accuracy, training and checkpoints, reference models, layer drift, sweeps.

Owns ``accuracy`` / ``train`` / checkpoints (``_train``), the converged reference models
(``_reference``), per-layer drift diagnostics (``_diagnostics``), and sweeps of prune-and-evaluate
cells (``sweeps``) on any executor (``_distributed``).  ``sweeps`` imports pandas, so it is not
imported here: use ``intrafusion_viz.sweeps`` (or ``intrafusion_viz.evaluation.sweeps``).

May import: ``pruning`` and everything below it, ``models`` and ``data``.
"""
from ._diagnostics import layer_drift
from ._train import CheckpointError, TrainHistory, accuracy, load_checkpoint, save_checkpoint, train

__all__ = ["CheckpointError", "TrainHistory", "accuracy", "load_checkpoint", "save_checkpoint", "train",
           "layer_drift"]
