"""Network B: the blur estimation network of DMENet (supplement, Table 1).

VGG19 encoder (conv1..conv5, 16 convolutions with ReLU, 4 max-pools) -> U-Net decoder: at each
of 4 levels a bilinear 2x up-sampling, concatenation with the encoder skip, and conv-BN-leaky
ReLU(0.2) blocks (256 x3, 128 x3, 64 x3, 64 x1) -> 7 residual blocks at full resolution ->
3x3 conv to 1 channel -> sigmoid. The output is sigma / sigma_max in [0, 1].

Auxiliary heads (conv-BN-lrelu then conv to 1 channel, sigmoid) read conv5 and each decoder
level; they feed the scale-wise loss L_aux (Eq. 6) and are computed in training mode only.

A width multiplier scales every channel count (the "lite" variants use the same code).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: ImageNet statistics that VGG19 expects; normalisation happens inside forward so every
#: caller feeds plain RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: 4 max-pools: inputs are padded to a multiple of 2**4
SIZE_MULTIPLE = 16
LRELU_SLOPE = 0.2

# VGG19 "E" configuration; "M" is a 2x2 max-pool. Indices in the resulting nn.Sequential match
# torchvision's vgg19().features, so its state dict loads onto the encoder key for key.
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512)


@dataclass(frozen=True)
class BlurNetConfig:
    """Architecture of network B. ``width`` scales every channel count (1.0 = the paper's)."""

    width: float = 1.0
    sigma_max: float = 7.0  # px at the working resolution; sigma_max = c_max / 4 = 28 / 4

    def __post_init__(self) -> None:
        if not 0 < self.width <= 4:
            raise ValueError(f"BlurNetConfig.width must be in (0, 4], got {self.width}")
        if self.sigma_max <= 0:
            raise ValueError(f"BlurNetConfig.sigma_max must be > 0, got {self.sigma_max}")

    def to_dict(self) -> dict:
        return asdict(self)


class BlurNetOutput(NamedTuple):
    """Training-mode output of BlurNet."""

    sigma: torch.Tensor  # (B, 1, H, W) sigma / sigma_max in [0, 1]
    aux: list[torch.Tensor]  # 5 maps (B, 1, H/16 .. H), coarse to fine, in [0, 1]
    features: torch.Tensor  # (B, C, H, W) after the last up-sampling level: D's input


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width / 8)) * 8)


def _conv_bn_lrelu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(LRELU_SLOPE, inplace=True),
    )


class _UpBlock(nn.Module):
    """Bilinear 2x up-sampling, skip concatenation, ``repeat`` conv-BN-lrelu blocks."""

    def __init__(self, cin: int, cskip: int, cout: int, repeat: int) -> None:
        super().__init__()
        layers = [_conv_bn_lrelu(cin + cskip, cout)]
        layers += [_conv_bn_lrelu(cout, cout) for _ in range(repeat - 1)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class _ResBlock(nn.Module):
    """Two conv-BN-lrelu blocks with an identity skip (Table 1, "Residual Blocks")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_lrelu(channels, channels),
                                  _conv_bn_lrelu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _AuxHead(nn.Module):
    """conv-BN-lrelu then a 3x3 conv to one channel and a sigmoid (Table 1, "Auxiliary Modules")."""

    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_lrelu(cin, mid), nn.Conv2d(mid, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class BlurNet(nn.Module):
    """Network B. Input (B, 3, H, W) RGB in [0, 1]; output sigma / sigma_max in [0, 1].

    Eval mode: any H, W >= 1; the input is padded (reflect) to a multiple of 16 and the output
    cropped back, so it returns a (B, 1, H, W) tensor. Training mode: H and W must be multiples
    of 16 and forward returns a :class:`BlurNetOutput` with the auxiliary maps and D's features.
    """

    def __init__(self, config: BlurNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or BlurNetConfig()
        w = self.config.width

        layers: list[nn.Module] = []
        cin = 3
        self._skip_after: list[int] = []  # encoder indices whose ReLU output is a skip / conv5
        for item in _VGG19:
            if item == "M":
                self._skip_after.append(len(layers) - 1)
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = scaled(int(item), w)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
        self._skip_after.append(len(layers) - 1)
        self.encoder = nn.Sequential(*layers)

        c1, c2, c3, c4, c5 = (scaled(c, w) for c in (64, 128, 256, 512, 512))
        d1, d2, d3, d4 = (scaled(c, w) for c in (256, 128, 64, 64))
        self.up1 = _UpBlock(c5, c4, d1, 3)
        self.up2 = _UpBlock(d1, c3, d2, 3)
        self.up3 = _UpBlock(d2, c2, d3, 3)
        self.up4 = _UpBlock(d3, c1, d4, 1)
        self.res = nn.Sequential(*[_ResBlock(d4) for _ in range(7)])
        self.head = nn.Conv2d(d4, 1, 3, padding=1)
        self.aux = nn.ModuleList([
            _AuxHead(c5, scaled(256, w)), _AuxHead(d1, scaled(128, w)),
            _AuxHead(d2, scaled(64, w)), _AuxHead(d3, scaled(32, w)), _AuxHead(d4, scaled(32, w)),
        ])
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming init for the ReLU encoder and the leaky-ReLU decoder: without ImageNet weights
        # the 16-conv plain encoder trains from scratch and needs variance-preserving init.
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                slope = 0.0 if name.startswith("encoder") else LRELU_SLOPE
                nn.init.kaiming_normal_(m.weight, a=slope, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start every sigmoid output near 0.5 rather than saturated, and every residual block
        # near the identity (zero-init of its last BN scale), so early gradients flow.
        for head in [self.head, *(a.body[-1] for a in self.aux)]:
            nn.init.normal_(head.weight, std=1e-3)
        for block in self.res:
            nn.init.zeros_(block.body[-1][1].weight)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in self._skip_after:
                skips.append(x)
        return skips  # conv1, conv2, conv3, conv4, conv5 (after ReLU)

    def _run(self, x: torch.Tensor, with_aux: bool):
        x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        s1, s2, s3, s4, s5 = self._encode(x)
        u1 = self.up1(s5, s4)
        u2 = self.up2(u1, s3)
        u3 = self.up3(u2, s2)
        u4 = self.up4(u3, s1)
        sigma = torch.sigmoid(self.head(self.res(u4)))
        if not with_aux:
            return sigma
        aux = [head(f) for head, f in zip(self.aux, (s5, u1, u2, u3, u4))]
        return BlurNetOutput(sigma, aux, u4)

    def forward(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BlurNet expects (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.training:
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
                raise ValueError(
                    f"BlurNet in training mode needs H and W multiples of {SIZE_MULTIPLE}, got {h}x{w}"
                )
            return self._run(x, with_aux=True)
        ph, pw = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
        if ph or pw:
            # reflect needs the pad to be smaller than the side; tiny inputs fall back to replicate
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return self._run(x, with_aux=False)[..., :h, :w]


def fuse_for_inference(model: BlurNet, inplace: bool = False) -> BlurNet:
    """An eval-mode copy of ``model`` (``model`` itself with ``inplace``) with every BatchNorm
    folded into the convolution before it.

    Same outputs (to float rounding) with one pass less over memory per conv-BN pair, which is
    what limits the narrow layers of the lighter variants on a CPU. Not for training.
    inplace: fold into ``model`` itself and return it (no copy: a network loaded only to be
    run; the deep copy was 0.3 s of a 0.7 s load under the profiler).
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = (model if inplace else copy.deepcopy(model)).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return fused


def load_vgg19_encoder(model: BlurNet, state_dict: dict[str, torch.Tensor]) -> int:
    """Copy torchvision-layout ``vgg19`` weights (keys ``features.N.weight|bias``) onto
    ``model.encoder``: all of it from torchvision's file, its first convolutions from a partial
    one (``models.vgg.from_normalised``: conv1_1-conv3_1, the rest keeps its initialisation).

    Returns the number of tensors copied (32 for the whole encoder, 10 for conv1_1-conv3_1).
    Raises ValueError if the width is not 1.0, if a partial state dict skips a convolution
    before its last one, or if a tensor has the wrong shape.
    """
    if model.config.width != 1.0:
        raise ValueError("ImageNet VGG19 weights fit only the full-width network (width 1.0)")
    own = model.encoder.state_dict()
    mapped = {}
    missing = []
    for key, target in own.items():
        src = state_dict.get(f"features.{key}")
        if src is None:
            missing.append(key)
            continue
        if missing:
            raise ValueError(f"VGG19 state dict has 'features.{key}' but not 'features.{missing[0]}' "
                             "(is it torchvision's vgg19?)")
        if src.shape != target.shape:
            raise ValueError(f"VGG19 'features.{key}' has shape {tuple(src.shape)}, "
                             f"expected {tuple(target.shape)}")
        mapped[key] = src.to(target.dtype)
    if not mapped:
        raise ValueError("VGG19 state dict has no 'features.0.weight' (is it torchvision's vgg19?)")
    model.encoder.load_state_dict(mapped, strict=False)
    return len(mapped)
