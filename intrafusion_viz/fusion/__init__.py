"""Model fusion: OTFusion of two or more models through the same coupled groups, and the paper's
fusion-in-the-training-loop pipelines (PaF, FaP).

Owns ``fuse`` and ``permute_neurons`` (``_otfusion``) and the split-data pipelines (``pipelines``,
imported on first use: ``intrafusion_viz.pipelines``).

May import: ``evaluation`` and everything below it.
"""
from ._otfusion import FUSE_METHODS, FusedGroup, FuseResult, fuse, permute_neurons

__all__ = ["FUSE_METHODS", "FusedGroup", "FuseResult", "fuse", "permute_neurons"]
