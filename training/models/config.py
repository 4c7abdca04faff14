"""Model configuration dataclasses (one per component; YAML maps onto them)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ms_perception_training.config import ConfigError, from_dict, load_yaml

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class InputConfig:
    height: int = 512                 # visible input size (thesis: 640x512 for KAIST)
    width: int = 640
    thermal_factor: int = 1           # thermal has this many times FEWER PIXELS (1, 4, 16, 64: MD §5)
    thermal_channels: int = 3         # 3: gray repeated to RGB (METHODS §1); 1: first conv = RGB-kernel mean
    visible_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    visible_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    thermal_mean: float = 0.449       # ImageNet mean/std of the gray image, applied to the 8-bit thermal
    thermal_std: float = 0.226

    def __post_init__(self):
        if self.thermal_factor not in (1, 4, 16, 64):
            raise ValueError(f"thermal_factor must be 1, 4, 16 or 64 (pixel ratio), got {self.thermal_factor}")
        if self.thermal_channels not in (1, 3):
            raise ValueError(f"thermal_channels must be 1 or 3, got {self.thermal_channels}")
        s = self.linear_factor
        if self.height % s or self.width % s:
            raise ValueError(f"input {self.width}x{self.height} is not divisible by the thermal linear factor {s}")

    @property
    def linear_factor(self) -> int:
        return int(math.isqrt(self.thermal_factor))

    @property
    def thermal_hw(self) -> tuple[int, int]:
        return self.height // self.linear_factor, self.width // self.linear_factor


@dataclass
class BackboneConfig:
    arch: Literal["resnet18", "resnet34", "vgg16"] = "resnet18"
    width: float = 1.0                # channel multiplier (tiny CPU models: 0.125-0.25)
    pretrained: str | None = None     # torchvision-format ImageNet state dict (.pth), user supplied


@dataclass
class GAFFConfig:
    kernel_size: int = 3              # 3 reproduces Table 4.12's parameter overhead exactly
    intra: bool = True
    inter: bool = True
    residual: bool = True             # f ⊗ (1 + m) (Table 4.7)
    margin: float = 0.1               # inter-label margin (Table 4.6); used by the loss


@dataclass
class CFRConfig:
    loops: int = 3                    # Table 4.3: best at 3
    shared: bool = True               # "folded" module: one F for all loops


@dataclass
class PSFuseConfig:
    setting: Literal["A", "B"] = "A"  # A: mono channels halved per level (best, Table 4.4)
    levels: int = 3                   # conv4_1..conv4_3


@dataclass
class CFLConfig:
    alpha: float = 0.5                # shared share of channels (Liu et al. §IV-A)
    groups: int = 2                   # G
    stages: list[str] | None = None   # backbone stages followed by CFL; None = all (conv1..conv5)
    maf: bool = True                  # modality-attention decision fusion; False: average (ablation)
    maf_grid: int = 4


@dataclass
class FusionConfig:
    # visible_only | thermal_only | image (6-ch one stream) | halfway (two streams fused at
    # `stage`) | decision (average of two detectors) | cfl (two interacting branches + MAF)
    scheme: Literal["visible_only", "thermal_only", "image", "halfway", "decision", "cfl"] = "halfway"
    module: Literal["add", "avg", "concat", "gaff", "cfr", "psfuse"] = "add"
    # backbone stage whose output is fused (ResNet C2..C5, VGG conv1..conv3, conv4_3, fc7);
    # "all_levels": both backbones run fully and every neck input level is fused separately
    stage: str = "C4"
    three_branch: bool = False        # active learning: visible, thermal and fused heads (§5.1)
    gaff: GAFFConfig = field(default_factory=GAFFConfig)
    cfr: CFRConfig = field(default_factory=CFRConfig)
    psfuse: PSFuseConfig = field(default_factory=PSFuseConfig)
    cfl: CFLConfig = field(default_factory=CFLConfig)


@dataclass
class NeckConfig:
    type: Literal["fpn", "pafpn", "ssd", "fssd", "none"] = "fpn"
    channels: int = 256
    in_levels: list[str] = field(default_factory=lambda: ["C4", "C5"])  # backbone stages feeding the neck
    extra_levels: int = 2             # FPN P6, P7
    cem: bool = False                 # Context Enhancement Module (Table 3.2)


@dataclass
class AnchorConfig:
    base_scale: float = 4.0           # anchor size = base_scale * stride (RetinaNet: 4)
    scales: list[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # h / w
    ssd_style: bool = False           # sizes (s_l, sqrt(s_l s_{l+1})) as SSD's extra square anchor


@dataclass
class HeadConfig:
    type: Literal["retinanet", "ssd", "pspnet", "conv1x1"] = "retinanet"
    channels: int = 256
    num_convs: int = 4
    prior_prob: float = 0.01
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    box_coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    seg_aux: bool = False             # box-mask segmentation auxiliary 1x1 head (Liu et al. §III-C)
    seg_level: str | None = None      # stage whose output feeds pspnet/conv1x1 (default: last)


@dataclass
class ModelConfig:
    name: str = "model"
    task: Literal["detection", "segmentation"] = "detection"
    class_names: list[str] = field(default_factory=lambda: ["person"])
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # the parameter count the source paper reports for this configuration (millions), and where
    paper_params_m: float | None = None
    paper_source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def uses_visible(self) -> bool:
        return self.fusion.scheme != "thermal_only"

    @property
    def uses_thermal(self) -> bool:
        return self.fusion.scheme != "visible_only"


def load_model_config(path: str | Path) -> ModelConfig:
    """Load a model config YAML. The file may be a bare model config or hold it under ``model:``."""
    data = load_yaml(path)
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    try:
        return from_dict(ModelConfig, data, "model")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
