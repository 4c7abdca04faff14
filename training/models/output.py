"""The structured output every model returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BranchOutput:
    """Predictions of one branch.

    cls_logits: per level (N, A*K, H, W) (SSD heads: K+1 with background first);
    box_deltas: per level (N, A*4, H, W); mask_logits: (N, K, H_in, W_in) for segmentation.
    """
    cls_logits: list[torch.Tensor] = field(default_factory=list)
    box_deltas: list[torch.Tensor] = field(default_factory=list)
    mask_logits: torch.Tensor | None = None


@dataclass
class ModelOutput:
    """branches: "fused" (the product output of a multispectral model), "visible", "thermal".
    main_branch names the product output ("visible" for an RGB-only model).
    attention: GAFF masks (``intra_v``, ``intra_t``, ``inter_v``, ``inter_t``, ``inter_logits``,
    prefixed by the fused level when several levels are fused), CFR mask logits, CFL β.
    aux: seg_logits (box-mask auxiliary head), maf_weights (N, 2: visible, thermal).
    features: named taps for distillation, ``<stream>.<stage>`` (e.g. ``fused.C4``,
    ``visible.C5``) and ``neck.<branch>.<i>``.
    """
    main_branch: str
    branches: dict[str, BranchOutput] = field(default_factory=dict)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def main(self) -> BranchOutput:
        return self.branches[self.main_branch]

    @property
    def cls_logits(self):
        return self.main.cls_logits

    @property
    def box_deltas(self):
        return self.main.box_deltas

    @property
    def mask_logits(self):
        return self.main.mask_logits
