"""ResNet-18/34 and VGG-16 written in the project (no torchvision on these machines).

Module names follow torchvision exactly (``conv1``, ``layer1.0.downsample.0``, ``features.28``)
so an ImageNet state dict saved from torchvision loads with :func:`load_torchvision_weights`
without a key map, except for the classifier (dropped) and, for a width multiplier != 1,
nothing at all (shapes differ; the loader says so).

Every backbone exposes ``stages``: a list of modules run one after the other, with
``stage_channels`` and ``stage_strides``. Two-stream models split the list at the fusion
stage: each modality runs ``stages[:k]``, the fused feature runs ``stages[k:]``.

The necks on the backbone features (FPN, PAFPN, the Context Enhancement Module, SSD extra
layers, FSSD feature fusion) are at the end of this file, as torchvision keeps its FPN beside
the backbones (``backbone_utils.py``). Each takes a list of feature maps fine to coarse and
returns a list fine to coarse.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from ms_perception_training.models.layers import conv_bn_relu
from torch import nn


def scaled(c: int, width: float) -> int:
    """Channel count under a width multiplier (at least 4, a multiple of 4 below 64)."""
    return c if width == 1.0 else max(4, int(round(c * width / 4)) * 4)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + idt)


class _Stem(nn.Module):
    """conv1-bn1-relu-maxpool, holding references so state-dict keys stay torchvision's."""

    def __init__(self, net: "ResNet"):
        super().__init__()
        self._net = [net]  # not a submodule: avoids duplicate keys

    def forward(self, x):
        n = self._net[0]
        return n.maxpool(n.relu(n.bn1(n.conv1(x))))


class ResNet(nn.Module):
    """ResNet with BasicBlocks. stages: [stem+layer1 (s4), layer2 (s8), layer3 (s16), layer4 (s32)].

    The stage index used by configs is the usual C-level name: C2..C5 -> stages 0..3.
    """

    LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if arch not in self.LAYERS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(self.LAYERS)}")
        self.arch, self.width = arch, width
        c = [scaled(v, width) for v in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = c[0]
        for i, (n, cout) in enumerate(zip(self.LAYERS[arch], c)):
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self._stem = _Stem(self)
        self.stage_channels = c
        self.stage_strides = [4, 8, 16, 32]
        self.stage_names = ["C2", "C3", "C4", "C5"]

    @property
    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self._stem, self.layer1), self.layer2, self.layer3, self.layer4]

    def first_conv_name(self) -> str:
        return "conv1"

    def prune(self, index: int) -> None:
        """Drop the parameters of stage ``index`` (a two-stream model that never runs it)."""
        if index == 0:
            raise ValueError("the stem stage cannot be pruned")
        setattr(self, f"layer{index + 1}", nn.Identity())

    def forward(self, x):
        return run_stages(self.stages, x)


class VGG16(nn.Module):
    """VGG-16 as SSD uses it (pool3 ceil mode, pool5 3x3/s1, dilated fc6 and 1x1 fc7).

    stages (torchvision ``features`` indices):
      S1 conv1_x+pool1 [0:5] s2, S2 conv2_x+pool2 [5:10] s4, S3 conv3_x+pool3 [10:17] s8,
      S4 conv4_1..conv4_3 [17:23] s8 (conv4_3 is SSD's first source),
      S5 pool4+conv5_x [23:30] + pool5 + fc6 + fc7, s16.
    fc6/fc7 are convolutions initialized randomly (SSD subsamples the ImageNet fc weights;
    that conversion is not done here).
    """

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
    SPLITS = [(0, 5), (5, 10), (10, 17), (17, 23), (23, 30)]

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif v == "C":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                cout = scaled(v, width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        c512, c1024 = scaled(512, width), scaled(1024, width)
        self.pool5 = nn.MaxPool2d(3, 1, 1)
        self.fc6 = nn.Conv2d(c512, c1024, 3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(c1024, c1024, 1)
        self.relu = nn.ReLU(inplace=True)
        self.stage_channels = [scaled(64, width), scaled(128, width), scaled(256, width), c512, c1024]
        self.stage_strides = [2, 4, 8, 8, 16]
        self.stage_names = ["conv1", "conv2", "conv3", "conv4_3", "fc7"]
        self._tail = _VGGTail(self)

    @property
    def stages(self) -> list[nn.Module]:
        f = self.features
        s = [f[a:b] for a, b in self.SPLITS]
        s[4] = nn.Sequential(s[4], self._tail)
        return s

    def first_conv_name(self) -> str:
        return "features.0"

    def prune(self, index: int) -> None:
        """Drop the parameters of stage ``index`` (a two-stream model that never runs it)."""
        a, b = self.SPLITS[index]
        for i in range(a, b):
            self.features[i] = nn.Identity()
        if index == 4:
            self.fc6, self.fc7 = nn.Identity(), nn.Identity()

    def forward(self, x):
        return run_stages(self.stages, x)


class _VGGTail(nn.Module):
    def __init__(self, net: VGG16):
        super().__init__()
        self._net = [net]

    def forward(self, x):
        n = self._net[0]
        return n.relu(n.fc7(n.relu(n.fc6(n.pool5(x)))))


def run_stages(stages, x) -> list:
    """Run stages in order; return every stage's output (fine to coarse)."""
    outs = []
    for s in stages:
        x = s(x)
        outs.append(x)
    return outs


def build_backbone(arch: str, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    if arch in ResNet.LAYERS:
        return ResNet(arch, in_channels, width)
    if arch == "vgg16":
        return VGG16(in_channels, width)
    raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(ResNet.LAYERS) + ['vgg16']}")


# ----------------------------------------------------------------------- weights


def inflate_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt an RGB first-conv kernel (O, 3, k, k) to another input channel count.

    6 channels (image-level fusion, RGB + thermal repeated to 3): duplicate the RGB kernels
    along the input axis and halve them, so a pair of identical images gives the pretrained
    response (METHODS.md §1). 1 channel: the mean over RGB (a gray image gives the response
    of the same gray RGB image). 3: unchanged.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel (O, 3, k, k), got {tuple(weight.shape)}")
    if in_channels == 3:
        return weight.clone()
    if in_channels == 6:
        return torch.cat([weight, weight], 1) / 2
    if in_channels == 1:
        return weight.mean(1, keepdim=True)
    raise ValueError(f"no inflation rule for {in_channels} input channels (supported: 1, 3, 6)")


def load_torchvision_weights(backbone: nn.Module, path_or_state: str | Path | dict) -> list[str]:
    """Load a torchvision-format ImageNet state dict into a project backbone.

    Drops the classifier (``fc.*``, ``classifier.*``), inflates the first conv when the
    backbone's input channel count is not 3. Returns the backbone keys left at their
    initialization (e.g. VGG fc6/fc7). Raises ValueError naming mismatched shapes.
    """
    if isinstance(path_or_state, dict):
        state = path_or_state
    else:
        p = Path(path_or_state)
        if not p.exists():
            raise FileNotFoundError(f"pretrained weights not found: {p}")
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = backbone.state_dict()
    first = backbone.first_conv_name() + ".weight"
    new, bad = {}, []
    for k, v in state.items():
        if k.startswith(("fc.", "classifier.")):
            continue
        if k not in own:
            bad.append(f"{k} (not in the backbone)")
            continue
        if k == first and v.shape[1] != own[k].shape[1]:
            v = inflate_first_conv(v, own[k].shape[1])
        if v.shape != own[k].shape:
            bad.append(f"{k} {tuple(v.shape)} vs backbone {tuple(own[k].shape)}")
            continue
        new[k] = v
    if bad:
        raise ValueError(f"pretrained weights do not fit this backbone ({len(bad)} tensors): " + "; ".join(bad[:5])
                         + (" (a width multiplier != 1 cannot use ImageNet weights)" if backbone_width(backbone) != 1
                            else ""))
    backbone.load_state_dict(new, strict=False)
    return sorted(set(own) - set(new))


def backbone_width(backbone: nn.Module) -> float:
    return getattr(backbone, "width", 1.0)


# ------------------------------------------------------------------------------ necks
class CEM(nn.Module):
    """Context Enhancement Module (ThunderNet; thesis Table 3.2 "best practices").

    Three 1x1 convs merge local and global context at the resolution of the finer input:
        CEM = conv1x1(C_a) + up(conv1x1(C_b)) + broadcast(conv1x1(GAP(C_b)))
    with C_a, C_b the two coarsest backbone levels. The FPN adds it to its top-down
    feature at C_a's level before the output conv.
    """

    def __init__(self, c_fine: int, c_coarse: int, out_channels: int):
        super().__init__()
        self.fine = nn.Conv2d(c_fine, out_channels, 1)
        self.coarse = nn.Conv2d(c_coarse, out_channels, 1)
        self.glob = nn.Conv2d(c_coarse, out_channels, 1)

    def forward(self, c_fine, c_coarse):
        size = c_fine.shape[-2:]
        up = F.interpolate(self.coarse(c_coarse), size=size, mode="nearest")
        g = self.glob(c_coarse.mean((2, 3), keepdim=True))
        return self.fine(c_fine) + up + g


class FPN(nn.Module):
    """Feature Pyramid Network (RetinaNet variant).

    Laterals 1x1 -> top-down nearest upsampling + add -> 3x3 output convs; ``extra_levels``
    stride-2 3x3 convs on the coarsest *input* (RetinaNet P6 from C5, P7 from ReLU(P6)).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_levels: int = 2, cem: bool = False):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList()
        cin = in_channels[-1]
        for _ in range(extra_levels):
            self.extra.append(nn.Conv2d(cin, out_channels, 3, 2, 1))
            cin = out_channels
        self.cem = CEM(in_channels[-2], in_channels[-1], out_channels) if cem and len(in_channels) >= 2 else None
        if cem and self.cem is None:
            raise ValueError("CEM needs at least two input levels")
        self.out_channels = out_channels
        self.num_levels = len(in_channels) + extra_levels

    def top_down(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        if self.cem is not None:
            lat[-2] = lat[-2] + self.cem(feats[-2], feats[-1])
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [o(x) for o, x in zip(self.output, lat)]

    def extras(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs, x = [], feats[-1]
        for i, conv in enumerate(self.extra):
            x = conv(x if i == 0 else F.relu(x))
            outs.append(x)
        return outs

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.top_down(feats) + self.extras(feats)


class PAFPN(FPN):
    """PANet: FPN plus a bottom-up path, N_i = conv3x3(N_{i-1} ↓2 (stride-2 conv) + P_i)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_levels: int = 2, cem: bool = False):
        super().__init__(in_channels, out_channels, extra_levels, cem)
        n = len(in_channels) - 1
        self.down = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(n))
        self.pa_out = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n))

    def forward(self, feats):
        p = self.top_down(feats)
        n = [p[0]]
        for i in range(1, len(p)):
            d = self.down[i - 1](n[-1])
            if d.shape[-2:] != p[i].shape[-2:]:
                d = d[..., :p[i].shape[-2], :p[i].shape[-1]]
            n.append(self.pa_out[i - 1](F.relu(d + p[i])))
        return n + self.extras(feats)


class L2Norm(nn.Module):
    """SSD's per-location L2 normalization of conv4_3 with a learned scale (init 20)."""

    def __init__(self, channels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x):
        return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * self.weight.view(1, -1, 1, 1)


class SSDExtras(nn.Module):
    """SSD extra layers after fc7: (1x1 c/2, 3x3 s2 c) blocks, each adding a coarser source.

    Sources: [L2Norm(conv4_3), fc7, extra_1, ..., extra_n].
    """

    def __init__(self, in_channels: list[int], channels: list[int] = (512, 256, 256, 256), width: float = 1.0):
        super().__init__()
        self.norm = L2Norm(in_channels[0])
        self.blocks = nn.ModuleList()
        cin = in_channels[-1]
        for c in channels:
            c = scaled(c, width)
            self.blocks.append(nn.Sequential(nn.Conv2d(cin, c // 2, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(c // 2, c, 3, 2, 1), nn.ReLU(inplace=True)))
            cin = c
        self.out_channels_list = list(in_channels) + [scaled(c, width) for c in channels]

    def forward(self, feats):
        outs = [self.norm(feats[0])] + list(feats[1:])
        x = feats[-1]
        for b in self.blocks:
            x = b(x)
            outs.append(x)
        return outs


class FSSDFusion(nn.Module):
    """FSSD (Li & Zhou 2017): fuse conv4_3, fc7 and one more coarse map, then a new pyramid.

    Each input -> 1x1 conv to ``c`` -> bilinear resize to the finest size -> concat -> BN,
    then a pyramid: 3x3 s1 to ``pyramid[0]``, then 3x3 s2 convs (conv+BN+ReLU).
    """

    def __init__(self, in_channels: list[int], c: int = 256, pyramid: list[int] = (512, 512, 256, 256, 256, 256)):
        super().__init__()
        self.transform = nn.ModuleList(nn.Sequential(nn.Conv2d(ci, c, 1), nn.ReLU(inplace=True)) for ci in in_channels)
        self.bn = nn.BatchNorm2d(c * len(in_channels))
        self.pyramid = nn.ModuleList()
        cin = c * len(in_channels)
        for i, co in enumerate(pyramid):
            self.pyramid.append(conv_bn_relu(cin, co, 3, 1 if i == 0 else 2))
            cin = co
        self.out_channels_list = list(pyramid)

    def forward(self, feats):
        size = feats[0].shape[-2:]
        xs = [t(f) for t, f in zip(self.transform, feats)]
        xs = [xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in xs[1:]]
        x = self.bn(torch.cat(xs, 1))
        outs = []
        for p in self.pyramid:
            x = p(x)
            outs.append(x)
        return outs


class SSDNeck(nn.Module):
    """VGG sources -> SSD extras, optionally followed by FSSD fusion (feeds the FSSD pyramid
    with [conv4_3, fc7, extra_1]); output strides 8, 16, 32, 64, 128, 256."""

    def __init__(self, in_channels: list[int], fssd: bool = True, width: float = 1.0):
        super().__init__()
        self.extras = SSDExtras(in_channels, width=width) if not fssd else None
        if fssd:
            self.extra1 = nn.Sequential(nn.Conv2d(in_channels[-1], scaled(256, width), 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(scaled(256, width), scaled(512, width), 3, 2, 1), nn.ReLU(inplace=True))
            self.fssd = FSSDFusion(list(in_channels) + [scaled(512, width)], scaled(256, width),
                                   [scaled(c, width) for c in (512, 512, 256, 256, 256, 256)])
            self.out_channels_list = self.fssd.out_channels_list
        else:
            self.out_channels_list = self.extras.out_channels_list

    def forward(self, feats):
        if self.extras is not None:
            return self.extras(feats)
        return self.fssd(list(feats) + [self.extra1(feats[-1])])
