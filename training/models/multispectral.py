"""A multispectral model assembled from injected parts, as torchvision's ``RetinaNet(backbone,
num_classes, anchor_generator=None, head=None)`` is:

    MultispectralModel(encoder, heads, anchor_levels, decision=None, seg_aux=None)

- ``encoder``: the streams and where they meet (METHODS.md §4-§7). One of
    ``OneStream``   one backbone on visible, thermal, or both stacked (the MD student's 6 channels);
    ``Halfway``     two backbones fused at one stage by a fusion module (add/avg/concat, GAFF,
                    CFR, PS-Fuse), then the visible backbone's remaining stages;
    ``AllLevels``   two full backbones with one fusion module per neck input level (the
                    three-branch active-learning model keeps the mono features for its mono heads);
    ``TwoStream``   two full backbones, optionally interacting through CFL after chosen stages.
  Each returns, per branch ("fused", "visible", "thermal"), the features of every stage it ran.
- ``heads``: per branch, a ``DetectionBranch`` (neck + head over the chosen stages) or a
  ``SegmentationBranch``.
- ``decision``: ``DecisionFusion`` combines the visible and thermal branches into "fused"
  (decision-level fusion: an average, or MAF's learned weights).
- ``seg_aux``: the box-mask segmentation auxiliary head of CFL (a ``SegAux``).

The heads themselves (RetinaNet, SSD, PSP and 1x1 segmentation heads, and the helpers that
flatten their per-level outputs in the runtime's anchor order) are at the top of this file, as
torchvision's ``retinanet.py`` holds ``RetinaNetHead`` beside ``RetinaNet``.

``build.py`` maps a ``ModelConfig`` (the YAML presets) onto these constructors; nothing here
reads a config. Inputs are normalized float tensors: visible (N, 3, H, W), thermal (N, 1, h, w).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from ms_perception_training.models.fusion import MAF, PSFuse
from ms_perception_training.models.layers import AdaptiveAvgPoolMatmul, conv_bn_relu
from ms_perception_training.models.output import BranchOutput, ModelOutput
from torch import nn

from ms_perception.core.anchors import AnchorLevel


# ------------------------------------------------------------------------------ heads
# Detection heads return two lists over levels: class logits (N, A*K, H, W) and box deltas
# (N, A*4, H, W). flatten_levels turns them into (N, sum H*W*A, K) in the anchor order of
# ms_perception.core.anchors (H, W, A).

PRIOR_PROB = 0.01  # RetinaNet (Lin et al. 2017 §4.1): classifier bias so that σ(b) = π at init


class RetinaHead(nn.Module):
    """RetinaNet class/box subnets shared across levels: ``num_convs`` 3x3 conv+ReLU towers,
    then 3x3 convs to A*K and A*4. Classifier bias -log((1-π)/π) (π = 0.01) so focal loss
    does not start with a flood of background loss."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, channels: int = 256,
                 num_convs: int = 4, prior_prob: float = PRIOR_PROB):
        super().__init__()

        def tower():
            layers, c = [], in_channels
            for _ in range(num_convs):
                layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
                c = channels
            return nn.Sequential(*layers), c

        self.cls_tower, c = tower()
        self.box_tower, _ = tower()
        self.cls_logits = nn.Conv2d(c, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, num_anchors * 4, 3, padding=1)
        self.num_anchors, self.num_classes = num_anchors, num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]):
        return ([self.cls_logits(self.cls_tower(f)) for f in feats],
                [self.bbox_pred(self.box_tower(f)) for f in feats])


class SSDHead(nn.Module):
    """SSD: one 3x3 conv per level for classes (K+1 with background at index 0, softmax)
    and one for boxes."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int):
        super().__init__()
        k = num_classes + 1
        self.cls = nn.ModuleList(nn.Conv2d(c, a * k, 3, padding=1) for c, a in zip(in_channels, num_anchors))
        self.box = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, num_anchors))
        self.num_classes = num_classes

    def forward(self, feats):
        return [c(f) for c, f in zip(self.cls, feats)], [b(f) for b, f in zip(self.box, feats)]


def flatten_levels(per_level: list[torch.Tensor], k: int) -> torch.Tensor:
    """[(N, A*K, H, W)] -> (N, sum H*W*A, K)."""
    out = []
    for x in per_level:
        n, _, h, w = x.shape
        # (N, A*K, H, W) -> (N, A, K, H, W) -> (N, H, W, A, K) -> (N, H*W*A, K)
        out.append(x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k))
    return torch.cat(out, 1)


def class_probabilities(per_level: list[torch.Tensor], k: int, activation: str) -> torch.Tensor:
    """Per-anchor class probabilities (N, A, K) as the exported model computes them: a sigmoid
    per class (RetinaNet heads), or a softmax over the K + 1 classes with the background
    (class 0) dropped (SSD heads)."""
    if activation == "sigmoid":
        return torch.sigmoid(flatten_levels(per_level, k))
    return torch.softmax(flatten_levels(per_level, k + 1), -1)[..., 1:]


def level_class_probabilities(x: torch.Tensor, k: int, activation: str) -> torch.Tensor:
    """One level's (N, A*K[+1], H, W) logits -> (N, A*K, H, W) class probabilities (as above)."""
    if activation == "sigmoid":
        return torch.sigmoid(x)
    n, _, h, w = x.shape
    return torch.softmax(x.view(n, -1, k + 1, h, w), 2)[:, :, 1:].reshape(n, -1, h, w)


def anchors_per_level(per_level: list[torch.Tensor], k: int, activation: str) -> list[int]:
    kk = k if activation == "sigmoid" else k + 1
    return [x.shape[1] // kk * x.shape[2] * x.shape[3] for x in per_level]


class PSPHead(nn.Module):
    """PSPNet pyramid pooling (Zhao et al. 2017): bins (1, 2, 3, 6), each avg-pool -> 1x1
    conv (C/4) + BN + ReLU -> bilinear up; concat with the input -> 3x3 conv+BN+ReLU ->
    dropout 0.1 -> 1x1 to classes. Logits are returned at the feature resolution."""

    def __init__(self, in_channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6), channels: int = 512):
        super().__init__()
        r = max(4, in_channels // len(bins))
        self.stages = nn.ModuleList(nn.Sequential(AdaptiveAvgPoolMatmul(b), conv_bn_relu(in_channels, r, 1)) for b in bins)
        self.bottleneck = conv_bn_relu(in_channels + r * len(bins), channels, 3)
        self.drop = nn.Dropout2d(0.1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        pyr = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.cls(self.drop(self.bottleneck(torch.cat(pyr, 1))))


class Conv1x1SegHead(nn.Module):
    """The active-learning paper's segmentation branch: "simply one layer of convolution
    whose number of output channels is equal to the number of classes" (§4)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        return self.cls(x)


# ------------------------------------------------------------------------------ the model
def run_stages(backbone: nn.Module, x: torch.Tensor, indices, stream: str, out: ModelOutput) -> dict[int, torch.Tensor]:
    """Run ``backbone.stages[i]`` for i in ``indices`` in order; each output is tapped as
    ``<stream>.<stage name>`` for distillation."""
    res = {}
    stages, names = backbone.stages, backbone.stage_names
    for i in indices:
        x = stages[i](x)
        res[i] = x
        out.features[f"{stream}.{names[i]}"] = x
    return res


# ---------------------------------------------------------------------------------- encoders
class OneStream(nn.Module):
    """One backbone on ``inputs``: "visible", "thermal", or "image" (early fusion: visible and
    thermal stacked channel-wise; its branch is "fused")."""
    BRANCH = {"visible": "visible", "thermal": "thermal", "image": "fused"}

    def __init__(self, backbone: nn.Module, inputs: str = "visible"):
        super().__init__()
        if inputs not in self.BRANCH:
            raise ValueError(f"OneStream inputs must be one of {list(self.BRANCH)}, got {inputs!r}")
        self.backbone, self.inputs = backbone, inputs
        self.branches = [self.BRANCH[inputs]]
        self.uses_visible, self.uses_thermal = inputs != "thermal", inputs != "visible"
        self.reference = backbone

    def forward(self, visible, thermal, out: ModelOutput):
        x = visible if self.inputs == "visible" else thermal if self.inputs == "thermal" \
            else torch.cat([visible, thermal], 1)
        return {self.branches[0]: run_stages(self.backbone, x, range(len(self.backbone.stages)), self.branches[0], out)}


class Halfway(nn.Module):
    """Both streams run up to stage ``stage``, are fused there, and the fused feature runs the
    visible backbone's remaining stages. A ``PSFuse`` module replaces stage ``stage`` itself
    (it takes the outputs of ``stage - 1``); the stages no stream runs are pruned."""
    uses_visible = uses_thermal = True
    branches = ["fused"]

    def __init__(self, backbone_v: nn.Module, backbone_t: nn.Module, fusion: nn.Module, stage: int):
        super().__init__()
        self.replaces = isinstance(fusion, PSFuse)
        if self.replaces and stage == 0:
            raise ValueError("PS-Fuse cannot replace the first stage")
        self.backbone_v, self.backbone_t, self.fusion, self.stage = backbone_v, backbone_t, fusion, stage
        if self.replaces:
            backbone_v.prune(stage)
        for j in range(stage if self.replaces else stage + 1, len(backbone_t.stage_names)):
            backbone_t.prune(j)
        self.reference = backbone_v

    def forward(self, visible, thermal, out: ModelOutput):
        k, n = self.stage, len(self.backbone_v.stage_names)
        upto = range(k) if self.replaces else range(k + 1)
        fv = run_stages(self.backbone_v, visible, upto, "visible", out)
        ft = run_stages(self.backbone_t, thermal, upto, "thermal", out)
        last = k - 1 if self.replaces else k
        x, extras = self.fusion(fv[last], ft[last])
        out.attention.update(extras)
        out.features[f"fused.{self.backbone_v.stage_names[k]}"] = x
        fused = {k: x}
        fused.update(run_stages(self.backbone_v, x, range(k + 1, n), "fused", out))
        return {"fused": fused}


class AllLevels(nn.Module):
    """Two full backbones; each stage index in ``fusions`` (stage index -> module) is fused
    separately. Returns the fused features and both mono streams (for mono heads)."""
    uses_visible = uses_thermal = True
    branches = ["fused", "visible", "thermal"]

    def __init__(self, backbone_v: nn.Module, backbone_t: nn.Module, fusions: dict[int, nn.Module]):
        super().__init__()
        self.backbone_v, self.backbone_t = backbone_v, backbone_t
        names = backbone_v.stage_names
        self.levels = sorted(fusions)
        self.fusions = nn.ModuleDict({names[i]: fusions[i] for i in self.levels})
        self.reference = backbone_v

    def forward(self, visible, thermal, out: ModelOutput):
        names = self.backbone_v.stage_names
        fv = run_stages(self.backbone_v, visible, range(len(names)), "visible", out)
        ft = run_stages(self.backbone_t, thermal, range(len(names)), "thermal", out)
        fused = {}
        for i in self.levels:
            fused[i], extras = self.fusions[names[i]](fv[i], ft[i])
            out.features[f"fused.{names[i]}"] = fused[i]
            out.attention.update({f"{names[i]}.{k}": v for k, v in extras.items()})
            if len(self.levels) == 1:
                out.attention.update(extras)
        return {"fused": fused, "visible": fv, "thermal": ft}


class TwoStream(nn.Module):
    """Two full backbones (decision-level fusion), optionally exchanging features through a
    CFL module after each stage named in ``cfl`` (stage name -> module)."""
    uses_visible = uses_thermal = True
    branches = ["visible", "thermal"]

    def __init__(self, backbone_v: nn.Module, backbone_t: nn.Module, cfl: dict[str, nn.Module] | None = None):
        super().__init__()
        self.backbone_v, self.backbone_t = backbone_v, backbone_t
        self.cfl = nn.ModuleDict(cfl or {})
        self.reference = backbone_v

    def forward(self, visible, thermal, out: ModelOutput):
        sv, st = self.backbone_v.stages, self.backbone_t.stages
        fv, ft = {}, {}
        xv, xt = visible, thermal
        for i, name in enumerate(self.backbone_v.stage_names):
            xv, xt = sv[i](xv), st[i](xt)
            if name in self.cfl:
                (xv, xt), extras = self.cfl[name](xv, xt)
                out.attention.update({f"{name}.{k}": v for k, v in extras.items()})
            fv[i], ft[i] = xv, xt
            out.features[f"visible.{name}"], out.features[f"thermal.{name}"] = xv, xt
        return {"visible": fv, "thermal": ft}


# ---------------------------------------------------------------------------------- branches
class DetectionBranch(nn.Module):
    """neck(features of stages ``levels``) -> head: per-level class logits and box deltas.
    ``neck=None`` feeds the stages to the head directly."""

    def __init__(self, neck: nn.Module | None, head: nn.Module, levels: list[int]):
        super().__init__()
        self.neck = neck if neck is not None else nn.Identity()
        self.head, self.levels = head, list(levels)

    def forward(self, feats: dict[int, torch.Tensor], hw, out: ModelOutput, name: str) -> BranchOutput:
        x = self.neck([feats[i] for i in self.levels])
        for j, f in enumerate(x):
            out.features[f"neck.{name}.{j}"] = f
        cls, box = self.head(x)
        return BranchOutput(cls_logits=cls, box_deltas=box)


class SegmentationBranch(nn.Module):
    """head(features of stage ``level``), upsampled bilinearly to the input size."""

    def __init__(self, head: nn.Module, level: int):
        super().__init__()
        self.head, self.level = head, level

    def forward(self, feats: dict[int, torch.Tensor], hw, out: ModelOutput, name: str) -> BranchOutput:
        logits = self.head(feats[self.level])
        return BranchOutput(mask_logits=F.interpolate(logits, size=hw, mode="bilinear", align_corners=False))


class SegAux(nn.Module):
    """Box-mask segmentation auxiliary head (CFL, Liu et al. §III-E): a 1x1 conv to background +
    K classes over the stage ``level`` features of ``sources`` (concatenated)."""

    def __init__(self, in_channels: int, num_classes: int, level: int, sources: list[str]):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes + 1, 1)
        self.level, self.sources = level, list(sources)

    def forward(self, feats) -> torch.Tensor:
        x = [feats[s][self.level] for s in self.sources]
        return self.conv(x[0] if len(x) == 1 else torch.cat(x, 1))


class DecisionFusion(nn.Module):
    """Decision-level fusion: Σ_m μ_m p_m on probabilities and Σ_m μ_m t_m on deltas, with μ = 1/2
    (average) or MAF's weights from the last-stage features of each stream (``maf_level``).
    Probabilities go back to logits so the fused branch looks like the others.

    ``activation``: "sigmoid" (RetinaNet heads), "softmax" (SSD heads, K + 1 logits per anchor,
    and segmentation)."""

    def __init__(self, activation: str, num_classes: int, maf: MAF | None = None, maf_level: int = -1):
        super().__init__()
        self.activation, self.k, self.maf, self.maf_level = activation, num_classes, maf, maf_level

    def forward(self, branches: list[BranchOutput], feats, out: ModelOutput) -> BranchOutput:
        n = branches[0].cls_logits[0].shape[0] if branches[0].cls_logits else branches[0].mask_logits.shape[0]
        if self.maf is not None:
            lv = self.maf_level
            w = self.maf.weights([feats["visible"][lv], feats["thermal"][lv]])
            out.aux["maf_weights"] = w
        else:
            ref = branches[0].cls_logits[0] if branches[0].cls_logits else branches[0].mask_logits
            w = torch.full((n, len(branches)), 1.0 / len(branches), device=ref.device)
        comb = MAF.combine
        if branches[0].mask_logits is not None:
            p = comb(w, [torch.softmax(b.mask_logits, 1) for b in branches])
            return BranchOutput(mask_logits=torch.log(p.clamp_min(1e-12)))
        cls = []
        for lv in range(len(branches[0].cls_logits)):
            if self.activation == "sigmoid":
                p = comb(w, [torch.sigmoid(b.cls_logits[lv]) for b in branches]).clamp(1e-7, 1 - 1e-7)
                cls.append(torch.log(p) - torch.log1p(-p))
            else:
                ps = []
                for b in branches:
                    x = b.cls_logits[lv]
                    nn_, _, hh, ww = x.shape
                    # (N, A*(K+1), H, W) -> (N, A, K+1, H, W): softmax over the classes of each anchor
                    ps.append(torch.softmax(x.view(nn_, -1, self.k + 1, hh, ww), 2).view_as(x))
                cls.append(torch.log(comb(w, ps).clamp_min(1e-12)))
        box = [comb(w, [b.box_deltas[lv] for b in branches]) for lv in range(len(branches[0].box_deltas))]
        return BranchOutput(cls_logits=cls, box_deltas=box)


# ---------------------------------------------------------------------------------- the model
class MultispectralModel(nn.Module):
    """encoder -> one head per branch -> (decision fusion) -> ``ModelOutput``.

    anchor_levels: the anchors of each output level (detection), in the neck's level order.
    score_activation: how class logits become scores ("sigmoid"; "softmax" for SSD heads and
    segmentation, where index 0 is the background).
    thermal_channels: the backbone's thermal input channels; a 1-channel gray thermal image is
    repeated to 3 when the backbone takes 3 (ImageNet weights).
    input_hw: (H, W) of the visible input (a thermal-only model's working size).
    thermal_factor: the linear factor of its thermal camera below the visible one (the MD
    student's cheap low-resolution camera: 4 for 16x fewer pixels); ``inputs`` simulates it.
    """

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], anchor_levels: list[AnchorLevel] | None = None,
                 *, decision: DecisionFusion | None = None, seg_aux: SegAux | None = None,
                 score_activation: str = "sigmoid", thermal_channels: int = 1, input_hw: tuple[int, int] = (512, 640),
                 thermal_factor: int = 1, name: str = "model"):
        super().__init__()
        missing = [b for b in heads if b not in encoder.branches]
        if missing:
            raise ValueError(f"heads {missing} have no features: the encoder gives {encoder.branches}")
        if decision is not None and set(heads) != {"visible", "thermal"}:
            raise ValueError(f"decision fusion combines a visible and a thermal head, got heads {list(heads)}")
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.decision, self.seg_aux = decision, seg_aux
        self._anchor_levels = list(anchor_levels or [])
        self.score_activation, self.thermal_channels = score_activation, thermal_channels
        self.input_hw, self.name, self.thermal_factor = tuple(input_hw), name, int(thermal_factor)
        self.uses_visible, self.uses_thermal = encoder.uses_visible, encoder.uses_thermal
        self.branch_names = list(heads)
        # the product output: "fused" for every model that sees both images (decision: the
        # combined branch); the one stream of a visible- or thermal-only model
        self.main_branch = "fused" if decision is not None or "fused" in heads else self.branch_names[0]
        self.cfg = None          # the ModelConfig build_model made this from (export and cards need it)

    # ------------------------------------------------------------------ the model's API
    def anchor_levels(self) -> list[AnchorLevel]:
        return list(self._anchor_levels)

    @property
    def output_branches(self) -> list[str]:
        """Every branch of the output, the product output first."""
        names = self.branch_names + (["fused"] if self.decision is not None else [])
        return [self.main_branch] + [b for b in names if b != self.main_branch]

    @property
    def stage_names(self) -> list[str]:
        return list(self.encoder.reference.stage_names)

    def inputs(self, visible: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The (visible, thermal) arguments this model takes from a full-resolution training pair:
        None for a stream it does not use; the thermal image bilinearly downsampled by
        ``thermal_factor`` (what a low-resolution thermal camera would give), else as is."""
        if not self.uses_thermal:
            return (visible if self.uses_visible else None), None
        f = self.thermal_factor
        hw = (thermal.shape[-2] // f, thermal.shape[-1] // f)
        if tuple(thermal.shape[-2:]) != hw:
            thermal = F.interpolate(thermal, size=hw, mode="bilinear", align_corners=False)
        return (visible if self.uses_visible else None), thermal

    def prepare_thermal(self, thermal: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(N, 1, h, w) -> (N, C_t, H, W): bilinear upsampling to the visible size (the MD
        student's low-resolution path), then gray repeated to 3 channels if configured."""
        if thermal.shape[1] != 1:
            raise ValueError(f"thermal input must have 1 channel (N, 1, h, w), got {tuple(thermal.shape)}")
        if tuple(thermal.shape[-2:]) != tuple(hw):
            thermal = F.interpolate(thermal, size=hw, mode="bilinear", align_corners=False)
        return thermal.repeat(1, 3, 1, 1) if self.thermal_channels == 3 else thermal

    def forward(self, visible: torch.Tensor | None = None, thermal: torch.Tensor | None = None) -> ModelOutput:
        if self.uses_visible and visible is None:
            raise ValueError(f"{self.name}: this model needs a visible image")
        if self.uses_thermal and thermal is None:
            raise ValueError(f"{self.name}: this model needs a thermal image")
        hw = tuple(visible.shape[-2:]) if visible is not None else self.input_hw
        if thermal is not None:
            thermal = self.prepare_thermal(thermal, hw)
        out = ModelOutput(main_branch=self.main_branch)
        feats = self.encoder(visible, thermal, out)        # branch -> {stage index: (N, C, h, w)}
        for b, head in self.heads.items():
            out.branches[b] = head(feats[b], hw, out, b)
        if self.decision is not None:
            out.branches["fused"] = self.decision([out.branches["visible"], out.branches["thermal"]], feats, out)
        if self.seg_aux is not None:
            out.aux["seg_logits"] = self.seg_aux(feats)
        return out

