"""``build_model(cfg)``: a ``ModelConfig`` (the YAML presets in ``config/models``) mapped onto the
constructors of ``multispectral.py``. Each scheme is a few lines choosing an encoder, the heads and
the decision fusion; every check of the config is here, with the key to fix in the message.

    visible_only / thermal_only / image -> OneStream
    halfway (a stage)                   -> Halfway(fusion module at that stage)
    halfway (all_levels, three_branch)  -> AllLevels(one fusion module per neck level)
    decision                            -> TwoStream + DecisionFusion (average)
    cfl                                 -> TwoStream(CFL after stages) + DecisionFusion(MAF) [+ SegAux]
"""
from __future__ import annotations

from ms_perception_training.config import ConfigError
from ms_perception_training.models.backbones import FPN, PAFPN, SSDNeck, build_backbone, load_torchvision_weights
from ms_perception_training.models.config import AnchorConfig, ModelConfig
from ms_perception_training.models.fusion import CFL, CFR, GAFF, MAF, PSFuse, SimpleFusion
from ms_perception_training.models.multispectral import (
    AllLevels,
    Conv1x1SegHead,
    DecisionFusion,
    DetectionBranch,
    Halfway,
    MultispectralModel,
    OneStream,
    PSPHead,
    RetinaHead,
    SegAux,
    SegmentationBranch,
    SSDHead,
    TwoStream,
)
from torch import nn

from ms_perception.core.anchors import AnchorLevel

ONE_STREAM = {"visible_only": "visible", "thermal_only": "thermal", "image": "image"}


def build_model(cfg: ModelConfig) -> MultispectralModel:
    fc, scheme = cfg.fusion, cfg.fusion.scheme
    arch, width, tc = cfg.backbone.arch, cfg.backbone.width, cfg.input.thermal_channels
    if scheme in ONE_STREAM:
        inputs = ONE_STREAM[scheme]
        backbones = [build_backbone(arch, {"visible": 3, "thermal": tc, "image": 3 + tc}[inputs], width)]
    else:
        backbones = [build_backbone(arch, 3, width), build_backbone(arch, tc, width)]
    names, chans = list(backbones[0].stage_names), list(backbones[0].stage_channels)

    def stage(name: str, key: str) -> int:
        if name not in names:
            raise ConfigError(f"{key}: {name!r} is not a stage of {arch}; valid: {names}")
        return names.index(name)

    in_levels = [stage(n, "neck.in_levels") for n in cfg.neck.in_levels] \
        if cfg.task == "detection" or cfg.neck.type != "none" else []
    seg_level = None
    if cfg.task == "segmentation":
        seg_level = stage(cfg.head.seg_level or names[-1], "head.seg_level")
        in_levels = in_levels or [seg_level]
    if cfg.backbone.pretrained:
        for b in backbones:
            load_torchvision_weights(b, cfg.backbone.pretrained)

    maf = None
    if scheme in ONE_STREAM:
        encoder = OneStream(backbones[0], ONE_STREAM[scheme])
        branches = encoder.branches
    elif scheme == "halfway" and fc.stage == "all_levels":
        if fc.module == "psfuse":
            raise ConfigError("PS-Fuse replaces one backbone stage; use a stage name, not all_levels")
        encoder = AllLevels(*backbones, {i: fusion_module(cfg, chans[i]) for i in in_levels})
        branches = ["fused"] + (["visible", "thermal"] if fc.three_branch else [])
    elif scheme == "halfway":
        if fc.three_branch:
            raise ConfigError("fusion.three_branch needs fusion.stage: all_levels (the mono heads need "
                              "mono features at every neck level)")
        k = stage(fc.stage, "fusion.stage")
        if min(in_levels) < k:
            raise ConfigError(f"neck.in_levels {cfg.neck.in_levels} include stages before the fusion stage "
                              f"{fc.stage}; only fused stages can feed the neck")
        if fc.module == "psfuse":
            if k == 0:
                raise ConfigError("PS-Fuse cannot replace the first stage")
            fusion = PSFuse(chans[k - 1], chans[k], fc.psfuse.setting, fc.psfuse.levels)
        else:
            fusion = fusion_module(cfg, chans[k])
        encoder = Halfway(*backbones, fusion, k)
        branches = ["fused"]
    elif scheme == "decision":
        encoder, branches = TwoStream(*backbones), ["visible", "thermal"]
    else:  # cfl
        cfl_stages = [stage(n, "fusion.cfl.stages") for n in (fc.cfl.stages or names)]
        encoder = TwoStream(*backbones, {names[i]: CFL(chans[i], fc.cfl.alpha, fc.cfl.groups) for i in cfl_stages})
        maf = MAF(chans[-1], 2, fc.cfl.maf_grid) if fc.cfl.maf else None
        branches = ["visible", "thermal"]

    in_ch = [chans[i] for i in in_levels]
    strides = [backbones[0].stage_strides[i] for i in in_levels]
    heads, out_strides = {}, strides
    for b in branches:
        heads[b], out_strides = branch(cfg, in_ch, strides, in_levels, seg_level,
                                       chans[seg_level] if seg_level is not None else 0)
    activation = "softmax" if cfg.head.type == "ssd" or cfg.task == "segmentation" else "sigmoid"
    decision = DecisionFusion(activation, cfg.num_classes, maf, len(names) - 1) \
        if scheme in ("decision", "cfl") else None
    seg_aux = None
    if cfg.head.seg_aux:
        sources = [encoder.branches[0]] if scheme in ONE_STREAM else \
            ["visible", "thermal"] if "visible" in encoder.branches else ["fused"]
        seg_aux = SegAux(in_ch[0] * len(sources), cfg.num_classes, in_levels[0], sources)
    model = MultispectralModel(
        encoder, heads, anchor_levels(cfg.head.anchors, out_strides) if cfg.task == "detection" else None,
        decision=decision, seg_aux=seg_aux, score_activation=activation, thermal_channels=tc,
        input_hw=(cfg.input.height, cfg.input.width), thermal_factor=cfg.input.linear_factor, name=cfg.name)
    model.cfg = cfg
    return model


def fusion_module(cfg: ModelConfig, c: int) -> nn.Module:
    fc = cfg.fusion
    if fc.module in SimpleFusion.MODES:
        return SimpleFusion(c, fc.module)
    if fc.module == "gaff":
        g = fc.gaff
        return GAFF(c, g.kernel_size, g.intra, g.inter, g.residual)
    if fc.module == "cfr":
        return CFR(c, fc.cfr.loops, fc.cfr.shared)
    raise ConfigError(f"fusion.module {fc.module!r} cannot be used here")


def neck(cfg: ModelConfig, in_ch: list[int], strides: list[int]) -> tuple[nn.Module | None, list[int], list[int]]:
    """The neck, its output channels and strides per level."""
    n = cfg.neck
    if n.type in ("fpn", "pafpn"):
        m = (FPN if n.type == "fpn" else PAFPN)(in_ch, n.channels, n.extra_levels, n.cem)
        return m, [n.channels] * m.num_levels, strides + [strides[-1] * 2 ** (i + 1) for i in range(n.extra_levels)]
    if n.type in ("ssd", "fssd"):
        if len(in_ch) != 2:
            raise ConfigError("SSD/FSSD necks take two VGG sources: neck.in_levels [conv4_3, fc7]")
        m = SSDNeck(in_ch, fssd=n.type == "fssd", width=cfg.backbone.width)
        chans = m.out_channels_list
        return m, chans, [strides[0] * 2 ** i for i in range(len(chans))]
    return None, in_ch, strides


def branch(cfg: ModelConfig, in_ch, strides, in_levels, seg_level, seg_ch) -> tuple[nn.Module, list[int]]:
    """One branch's neck + head (detection) or head (segmentation), and its output strides."""
    h = cfg.head
    if cfg.task == "segmentation":
        if h.type not in ("pspnet", "conv1x1"):
            raise ConfigError(f"segmentation needs head.type pspnet or conv1x1, got {h.type!r}")
        head = PSPHead(seg_ch, cfg.num_classes) if h.type == "pspnet" else Conv1x1SegHead(seg_ch, cfg.num_classes)
        return SegmentationBranch(head, seg_level), strides
    nk, chans, out_strides = neck(cfg, in_ch, strides)
    levels = anchor_levels(h.anchors, out_strides)
    if h.type == "retinanet":
        if len(set(chans)) != 1:
            raise ConfigError(f"a RetinaNet head is shared across levels and needs equal channels, got {chans}")
        head = RetinaHead(chans[0], levels[0].num_anchors, cfg.num_classes, h.channels, h.num_convs, h.prior_prob)
    elif h.type == "ssd":
        head = SSDHead(chans, [lv.num_anchors for lv in levels], cfg.num_classes)
    else:
        raise ConfigError(f"detection needs head.type retinanet or ssd, got {h.type!r}")
    return DetectionBranch(nk, head, in_levels), out_strides


def anchor_levels(a: AnchorConfig, strides: list[int]) -> list[AnchorLevel]:
    """Anchors per output level: sizes base_scale x stride x scales (RetinaNet), or SSD's
    (s_k, sqrt(s_k s_k+1)) pair."""
    sizes = [a.base_scale * s for s in strides]
    out = []
    for i, (stride, s) in enumerate(zip(strides, sizes)):
        if a.ssd_style:
            nxt = sizes[i + 1] if i + 1 < len(sizes) else s * 2
            lv_sizes = (s, (s * nxt) ** 0.5)
        else:
            lv_sizes = tuple(s * k for k in a.scales)
        out.append(AnchorLevel(int(stride), tuple(float(x) for x in lv_sizes), tuple(a.aspect_ratios)))
    return out
