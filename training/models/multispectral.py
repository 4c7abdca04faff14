"""Every multispectral architecture of METHODS.md §4-§7 from one typed config.

Schemes (``FusionConfig.scheme``):
  visible_only / thermal_only  one stream (RGB-only student of §6, mono baselines)
  image        one stream on [RGB, thermal x3] (6 channels; MD student, §5). The thermal
               input may be smaller (thermal_factor) and is upsampled bilinearly inside.
  halfway      two streams fused at ``stage`` by add/avg/concat/GAFF/CFR/PS-Fuse, then one
               stream; ``stage: all_levels`` fuses every neck input level separately.
               ``three_branch`` adds visible and thermal heads (active learning, §7).
  decision     two detectors; the fused output averages their probabilities and deltas.
  cfl          two streams with CFL after each listed stage, one head per stream, MAF (or
               average) decision fusion, optional box-mask segmentation auxiliary head.
Inputs are normalized float tensors: visible (N, 3, H, W), thermal (N, 1, h, w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ms_perception_training.config import ConfigError
from ms_perception_training.models.backbones import build_backbone, load_torchvision_weights
from ms_perception_training.models.config import ModelConfig
from ms_perception_training.models.fusion import CFL, CFR, GAFF, MAF, PSFuse, SimpleFusion
from ms_perception_training.models.heads import Conv1x1SegHead, PSPHead, RetinaHead, SSDHead
from ms_perception_training.models.necks import FPN, PAFPN, SSDNeck
from ms_perception_training.models.output import BranchOutput, ModelOutput
from torch import nn

from ms_perception.core.anchors import AnchorLevel

ONE_STREAM = ("visible_only", "thermal_only", "image")


class MultispectralModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        fc, scheme = cfg.fusion, cfg.fusion.scheme
        tc, arch, width = cfg.input.thermal_channels, cfg.backbone.arch, cfg.backbone.width
        self.scheme = scheme
        if scheme in ONE_STREAM:
            in_ch = {"visible_only": 3, "thermal_only": tc, "image": 3 + tc}[scheme]
            self.backbone = build_backbone(arch, in_ch, width)
            ref = self.backbone
            self.stream = {"visible_only": "visible", "thermal_only": "thermal", "image": "fused"}[scheme]
        else:
            self.backbone_v = build_backbone(arch, 3, width)
            self.backbone_t = build_backbone(arch, tc, width)
            ref = self.backbone_v
        self.stage_names = list(ref.stage_names)
        self.stage_channels = list(ref.stage_channels)
        self.stage_strides = list(ref.stage_strides)
        self.in_levels = [self._stage_index(n, "neck.in_levels") for n in cfg.neck.in_levels] \
            if cfg.task == "detection" or cfg.neck.type != "none" else []
        if cfg.task == "segmentation":
            self.seg_index = self._stage_index(cfg.head.seg_level or self.stage_names[-1], "head.seg_level")
            if not self.in_levels:
                self.in_levels = [self.seg_index]
        if cfg.backbone.pretrained:
            for b in ([self.backbone] if scheme in ONE_STREAM else [self.backbone_v, self.backbone_t]):
                load_torchvision_weights(b, cfg.backbone.pretrained)

        # ---------------------------------------------------------------- fusion
        self.fuse_index = None
        if scheme == "halfway":
            if fc.three_branch and fc.stage != "all_levels":
                raise ConfigError("fusion.three_branch needs fusion.stage: all_levels (the mono heads need "
                                  "mono features at every neck level)")
            if fc.stage == "all_levels":
                if fc.module == "psfuse":
                    raise ConfigError("PS-Fuse replaces one backbone stage; use a stage name, not all_levels")
                self.fusions = nn.ModuleDict({self.stage_names[i]: self._fusion(self.stage_channels[i])
                                              for i in self.in_levels})
            else:
                k = self.fuse_index = self._stage_index(fc.stage, "fusion.stage")
                if min(self.in_levels) < k:
                    raise ConfigError(f"neck.in_levels {cfg.neck.in_levels} include stages before the fusion stage "
                                      f"{fc.stage}; only fused stages can feed the neck")
                if fc.module == "psfuse":
                    if k == 0:
                        raise ConfigError("PS-Fuse cannot replace the first stage")
                    self.fusion = PSFuse(self.stage_channels[k - 1], self.stage_channels[k],
                                         fc.psfuse.setting, fc.psfuse.levels)
                    self.backbone_v.prune(k)
                else:
                    self.fusion = self._fusion(self.stage_channels[k])
                for j in range(k if fc.module == "psfuse" else k + 1, len(self.stage_names)):
                    self.backbone_t.prune(j)
        elif scheme == "cfl":
            names = fc.cfl.stages or self.stage_names
            self.cfl_stages = [self._stage_index(n, "fusion.cfl.stages") for n in names]
            self.cfl = nn.ModuleDict({self.stage_names[i]: CFL(self.stage_channels[i], fc.cfl.alpha, fc.cfl.groups)
                                      for i in self.cfl_stages})
            self.maf = MAF(self.stage_channels[-1], 2, fc.cfl.maf_grid) if fc.cfl.maf else None

        # ---------------------------------------------------------------- branches
        if scheme in ONE_STREAM:
            self.branch_names = [self.stream]
        elif scheme == "halfway":
            self.branch_names = ["fused"] + (["visible", "thermal"] if fc.three_branch else [])
        else:  # decision, cfl: one head per modality, combined
            self.branch_names = ["visible", "thermal"]
        self.main_branch = "fused" if scheme not in ("visible_only", "thermal_only") else self.stream
        in_ch = [self.stage_channels[i] for i in self.in_levels]
        self.heads = nn.ModuleDict({b: self._branch(in_ch) for b in self.branch_names})
        self.seg_aux = None
        if cfg.head.seg_aux:
            c = in_ch[0] * (1 if scheme in ONE_STREAM else 2)
            self.seg_aux = nn.Conv2d(c, cfg.num_classes + 1, 1)  # background + classes, box-filled masks

    # ------------------------------------------------------------------ builders
    def _stage_index(self, name: str, key: str) -> int:
        if name not in self.stage_names:
            raise ConfigError(f"{key}: {name!r} is not a stage of {self.cfg.backbone.arch}; "
                              f"valid: {self.stage_names}")
        return self.stage_names.index(name)

    def _fusion(self, c: int) -> nn.Module:
        fc = self.cfg.fusion
        if fc.module in SimpleFusion.MODES:
            return SimpleFusion(c, fc.module)
        if fc.module == "gaff":
            g = fc.gaff
            return GAFF(c, g.kernel_size, g.intra, g.inter, g.residual)
        if fc.module == "cfr":
            return CFR(c, fc.cfr.loops, fc.cfr.shared)
        raise ConfigError(f"fusion.module {fc.module!r} cannot be used here")

    def _neck(self, in_ch: list[int]) -> tuple[nn.Module | None, list[int], list[int]]:
        n = self.cfg.neck
        strides = [self.stage_strides[i] for i in self.in_levels]
        if n.type in ("fpn", "pafpn"):
            cls = FPN if n.type == "fpn" else PAFPN
            neck = cls(in_ch, n.channels, n.extra_levels, n.cem)
            return neck, [n.channels] * neck.num_levels, strides + [strides[-1] * 2 ** (i + 1) for i in range(n.extra_levels)]
        if n.type in ("ssd", "fssd"):
            if len(in_ch) != 2:
                raise ConfigError("SSD/FSSD necks take two VGG sources: neck.in_levels [conv4_3, fc7]")
            neck = SSDNeck(in_ch, fssd=n.type == "fssd", width=self.cfg.backbone.width)
            chans = neck.out_channels_list
            return neck, chans, [strides[0] * 2 ** i for i in range(len(chans))]
        return None, in_ch, strides

    def _branch(self, in_ch: list[int]) -> nn.ModuleDict:
        cfg, h = self.cfg, self.cfg.head
        if cfg.task == "segmentation":
            c = self.stage_channels[self.seg_index]
            head = PSPHead(c, cfg.num_classes) if h.type == "pspnet" else Conv1x1SegHead(c, cfg.num_classes)
            if h.type not in ("pspnet", "conv1x1"):
                raise ConfigError(f"segmentation needs head.type pspnet or conv1x1, got {h.type!r}")
            return nn.ModuleDict({"head": head})
        neck, chans, strides = self._neck(in_ch)
        self.out_strides = strides
        levels = self.anchor_levels()
        if h.type == "retinanet":
            if len(set(chans)) != 1:
                raise ConfigError(f"a RetinaNet head is shared across levels and needs equal channels, got {chans}")
            head = RetinaHead(chans[0], levels[0].num_anchors, cfg.num_classes, h.channels, h.num_convs, h.prior_prob)
        elif h.type == "ssd":
            head = SSDHead(chans, [lv.num_anchors for lv in levels], cfg.num_classes)
        else:
            raise ConfigError(f"detection needs head.type retinanet or ssd, got {h.type!r}")
        return nn.ModuleDict({"neck": neck if neck is not None else nn.Identity(), "head": head})

    def anchor_levels(self) -> list[AnchorLevel]:
        a = self.cfg.head.anchors
        sizes = [a.base_scale * s for s in self.out_strides]
        out = []
        for i, (stride, s) in enumerate(zip(self.out_strides, sizes)):
            if a.ssd_style:
                nxt = sizes[i + 1] if i + 1 < len(sizes) else s * 2
                lv_sizes = (s, (s * nxt) ** 0.5)
            else:
                lv_sizes = tuple(s * k for k in a.scales)
            out.append(AnchorLevel(int(stride), tuple(float(x) for x in lv_sizes), tuple(a.aspect_ratios)))
        return out

    @property
    def score_activation(self) -> str:
        return "softmax" if self.cfg.head.type == "ssd" or self.cfg.task == "segmentation" else "sigmoid"

    # ------------------------------------------------------------------ forward
    def prepare_thermal(self, thermal: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(N, 1, h, w) -> (N, C_t, H, W): bilinear upsampling to the visible size (the MD
        student's low-resolution path), then gray repeated to 3 channels if configured."""
        if thermal.shape[1] != 1:
            raise ValueError(f"thermal input must have 1 channel (N, 1, h, w), got {tuple(thermal.shape)}")
        if tuple(thermal.shape[-2:]) != tuple(hw):
            thermal = F.interpolate(thermal, size=hw, mode="bilinear", align_corners=False)
        return thermal.repeat(1, 3, 1, 1) if self.cfg.input.thermal_channels == 3 else thermal

    def forward(self, visible: torch.Tensor | None = None, thermal: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        if cfg.uses_visible and visible is None:
            raise ValueError(f"{cfg.name}: this model needs a visible image")
        if cfg.uses_thermal and thermal is None:
            raise ValueError(f"{cfg.name}: this model needs a thermal image (scheme {self.scheme!r})")
        hw = tuple(visible.shape[-2:]) if visible is not None else (cfg.input.height, cfg.input.width)
        if thermal is not None:
            thermal = self.prepare_thermal(thermal, hw)
        out = ModelOutput(main_branch=self.main_branch)
        feats = {}  # branch -> {stage index: feature}
        if self.scheme in ONE_STREAM:
            x = visible if self.scheme == "visible_only" else thermal if self.scheme == "thermal_only" \
                else torch.cat([visible, thermal], 1)
            feats[self.stream] = self._run(self.backbone, x, range(len(self.stage_names)), self.stream, out)
        elif self.scheme == "halfway":
            feats = self._halfway(visible, thermal, out)
        elif self.scheme == "decision":
            feats["visible"] = self._run(self.backbone_v, visible, range(len(self.stage_names)), "visible", out)
            feats["thermal"] = self._run(self.backbone_t, thermal, range(len(self.stage_names)), "thermal", out)
        else:
            feats = self._cfl(visible, thermal, out)

        for b in self.branch_names:
            out.branches[b] = self._predict(b, feats[b], hw, out)
        if self.scheme in ("decision", "cfl"):
            w = None
            if self.scheme == "cfl" and self.maf is not None:
                last = len(self.stage_names) - 1
                w = self.maf.weights([feats["visible"][last], feats["thermal"][last]])
                out.aux["maf_weights"] = w
            out.branches["fused"] = self._combine([out.branches["visible"], out.branches["thermal"]], w)
        if self.seg_aux is not None:
            i = self.in_levels[0]
            x = feats[self.main_branch][i] if self.scheme in ONE_STREAM else \
                torch.cat([feats["visible"][i], feats["thermal"][i]], 1) if "visible" in feats else feats["fused"][i]
            out.aux["seg_logits"] = self.seg_aux(x)
        return out

    def _run(self, backbone, x, indices, stream: str, out: ModelOutput) -> dict[int, torch.Tensor]:
        res = {}
        stages = backbone.stages
        for i in indices:
            x = stages[i](x)
            res[i] = x
            out.features[f"{stream}.{self.stage_names[i]}"] = x
        return res

    def _halfway(self, visible, thermal, out: ModelOutput) -> dict[str, dict[int, torch.Tensor]]:
        n = len(self.stage_names)
        if self.fuse_index is None:  # all_levels
            fv = self._run(self.backbone_v, visible, range(n), "visible", out)
            ft = self._run(self.backbone_t, thermal, range(n), "thermal", out)
            fused = {}
            for i in self.in_levels:
                name = self.stage_names[i]
                fused[i], extras = self.fusions[name](fv[i], ft[i])
                out.features[f"fused.{name}"] = fused[i]
                out.attention.update({f"{name}.{k}": v for k, v in extras.items()})
                if len(self.in_levels) == 1:
                    out.attention.update(extras)
            return {"fused": fused, "visible": fv, "thermal": ft}
        k = self.fuse_index
        replaces = isinstance(self.fusion, PSFuse)
        upto = range(k) if replaces else range(k + 1)
        fv = self._run(self.backbone_v, visible, upto, "visible", out)
        ft = self._run(self.backbone_t, thermal, upto, "thermal", out)
        last = k - 1 if replaces else k
        x, extras = self.fusion(fv[last], ft[last])
        out.attention.update(extras)
        fused = {k: x}
        out.features[f"fused.{self.stage_names[k]}"] = x
        fused.update(self._run(self.backbone_v, x, range(k + 1, n), "fused", out))
        return {"fused": fused}

    def _cfl(self, visible, thermal, out: ModelOutput):
        sv, st = self.backbone_v.stages, self.backbone_t.stages
        fv, ft = {}, {}
        xv, xt = visible, thermal
        for i, name in enumerate(self.stage_names):
            xv, xt = sv[i](xv), st[i](xt)
            if name in self.cfl:
                (xv, xt), extras = self.cfl[name](xv, xt)
                out.attention.update({f"{name}.{k}": v for k, v in extras.items()})
            fv[i], ft[i] = xv, xt
            out.features[f"visible.{name}"], out.features[f"thermal.{name}"] = xv, xt
        return {"visible": fv, "thermal": ft}

    def _predict(self, branch: str, feats: dict[int, torch.Tensor], hw, out: ModelOutput) -> BranchOutput:
        mods = self.heads[branch]
        if self.cfg.task == "segmentation":
            logits = mods["head"](feats[self.seg_index])
            return BranchOutput(mask_logits=F.interpolate(logits, size=hw, mode="bilinear", align_corners=False))
        x = mods["neck"]([feats[i] for i in self.in_levels])
        for j, f in enumerate(x):
            out.features[f"neck.{branch}.{j}"] = f
        cls, box = mods["head"](x)
        return BranchOutput(cls_logits=cls, box_deltas=box)

    def _combine(self, branches: list[BranchOutput], w: torch.Tensor | None) -> BranchOutput:
        """Decision-level fusion: Σ_m μ_m p_m on probabilities (μ = 1/2 without MAF) and
        Σ_m μ_m t_m on deltas; probabilities go back to logits so every branch looks alike."""
        n = branches[0].cls_logits[0].shape[0] if branches[0].cls_logits else branches[0].mask_logits.shape[0]
        if w is None:
            w = torch.full((n, len(branches)), 1.0 / len(branches), device=self._device())
        comb = MAF.combine
        if self.cfg.task == "segmentation":
            p = comb(w, [torch.softmax(b.mask_logits, 1) for b in branches])
            return BranchOutput(mask_logits=torch.log(p.clamp_min(1e-12)))
        cls = []
        for lv in range(len(branches[0].cls_logits)):
            if self.score_activation == "sigmoid":
                p = comb(w, [torch.sigmoid(b.cls_logits[lv]) for b in branches]).clamp(1e-7, 1 - 1e-7)
                cls.append(torch.log(p) - torch.log1p(-p))
            else:
                k = self.cfg.num_classes + 1
                ps = []
                for b in branches:
                    x = b.cls_logits[lv]
                    nn_, _, hh, ww = x.shape
                    ps.append(torch.softmax(x.view(nn_, -1, k, hh, ww), 2).view_as(x))
                cls.append(torch.log(comb(w, ps).clamp_min(1e-12)))
        box = [comb(w, [b.box_deltas[lv] for b in branches]) for lv in range(len(branches[0].box_deltas))]
        return BranchOutput(cls_logits=cls, box_deltas=box)

    def _device(self):
        return next(self.parameters()).device


def build_model(cfg: ModelConfig) -> MultispectralModel:
    return MultispectralModel(cfg)
