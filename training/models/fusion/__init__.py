"""Multispectral fusion modules, one file per method (METHODS.md §4).

Fusion modules take ``(f_v, f_t)`` of shape (N, C, H, W) and return ``(fused, extras)``,
``extras`` a dict of named tensors the losses need (attention masks, refined mono features).
CFL is different: it keeps two streams and returns ``(o_v, o_t)``; see ``cfl.py``.
"""
from ms_perception_training.models.fusion.cfl import CFL  # noqa: F401
from ms_perception_training.models.fusion.cfr import CFR  # noqa: F401
from ms_perception_training.models.fusion.gaff import GAFF, gaff_inter_labels  # noqa: F401
from ms_perception_training.models.fusion.maf import MAF  # noqa: F401
from ms_perception_training.models.fusion.psfuse import PSFuse  # noqa: F401
from ms_perception_training.models.fusion.simple import SimpleFusion  # noqa: F401
