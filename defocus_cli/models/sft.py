"""A map-conditioned deblurring network with spatial feature transform (Ye et al., paper 004).

The paper's deblurring half, small enough to train on a CPU: a *condition network* turns the
defocus map into condition features, and *conditioned residual blocks* modulate the image
features with them (its Fig. 1-3):

    SFT(F) = gamma (.) F + beta                                           (Eq. 2)

with gamma, beta in R^{C x H x W} predicted per pixel from the condition features, and (.) the
element-wise product. The network predicts a residual that is added to its input image:

    I_df = I_in + R(I_in, phi(map))

and is trained with the L1 loss of Eq. 4, L_df = || I_df - I_gt ||_1 (``pipelines.train_sft``).

Simplified from the paper, and why:

- The map is given (a true map, or one `defocus estimate` made): the paper's own defocus map
  estimation network (Sec. 3.1) is the project's network B, trained separately, so Eq. 3 and the
  joint stages 1-2 are left out. Fine-tuning on estimated maps (the paper's stage 2 idea) is a
  training option, not a joint network.
- gamma is predicted as 1 + gamma' (SFT-GAN's form), so an untrained modulation is the identity,
  and plainly per pixel and channel (the paper's "+SFT" row of Table 3): the channel x spatial
  decomposition of gamma ("+SFT-Dec", +0.2 dB there) is not implemented.
- The weighted L2 term L_wd (Eq. 5-6, stage 3) is not used.
- The image path is a small U-Net rather than a single-scale residual stack: image and map are
  first rearranged space-to-depth (``shuffle`` = 2: 12 image and 4 map channels at half
  resolution, lossless, as FFDNet does with its noise map), then ``levels`` stride-2
  down-samplings follow. A blur of sigma 7 px spreads over ~40 px; SFT blocks at 1/4 and 1/8
  resolution reach that far at a fraction of the full-resolution cost (training here runs on
  one CPU core). The condition features are average-pooled to each level's resolution.
- The map is normalised as log(1 + sigma) / log(1 + sigma_max): the small blurs that dominate
  real photos (0.5-2 px) get as much of the input range as the large ones.

Input and output: (B, 3, H, W) float in [0, 1]; map (B, 1, H, W), Gaussian sigma in px of the
image (>= 0; NaN is not allowed: fill unknown sigma first). H and W need not be multiples of
anything: the input is padded by reflection to a multiple of 2**levels and cropped back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1
INPUTS = ("photo", "solver")


@dataclass(frozen=True)
class SFTNetConfig:
    """Architecture of SFTDeblurNet."""

    #: image features at full resolution; levels below use 2x as many
    channels: int = 32
    #: SFT residual blocks in all: one per level on the way down and up, the rest at the bottom
    blocks: int = 6
    #: stride-2 down-samplings of the image path after the space-to-depth step (receptive
    #: field, see the module docstring)
    levels: int = 2
    #: space-to-depth factor: image and map are rearranged into shuffle**2 times as many
    #: channels at 1/shuffle of the resolution before anything else runs (lossless, FFDNet's
    #: trick), and the residual is rearranged back; 2 makes the network ~4x cheaper
    shuffle: int = 2
    #: condition features (the output of the condition network)
    cond_channels: int = 32
    #: px; the map is normalised by it (log(1 + sigma) / log(1 + sigma_max)); larger sigma
    #: extrapolates, it is not clipped
    sigma_max: float = 7.0
    #: what the network's image input is: "photo" (the blurred photo) or "solver" (the layered
    #: deconvolution's output, which the network then corrects)
    input: str = "photo"

    def __post_init__(self) -> None:
        if self.channels < 1 or self.cond_channels < 1:
            raise ValueError(f"SFTNetConfig: channels and cond_channels must be >= 1, got "
                             f"{self.channels}, {self.cond_channels}")
        if self.levels < 0:
            raise ValueError(f"SFTNetConfig: levels must be >= 0, got {self.levels}")
        if self.blocks < 2 * self.levels + 1:
            raise ValueError(f"SFTNetConfig: blocks must be >= 2 * levels + 1 = {2 * self.levels + 1} "
                             f"(one per level down and up, one at the bottom), got {self.blocks}")
        if self.shuffle < 1:
            raise ValueError(f"SFTNetConfig: shuffle must be >= 1, got {self.shuffle}")
        if self.sigma_max <= 0:
            raise ValueError(f"SFTNetConfig: sigma_max must be > 0, got {self.sigma_max}")
        if self.input not in INPUTS:
            raise ValueError(f"SFTNetConfig: input must be one of {', '.join(INPUTS)}, got {self.input!r}")

    @property
    def size_multiple(self) -> int:
        return self.shuffle * 2 ** self.levels

    def to_dict(self) -> dict:
        return asdict(self)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class ConditionNet(nn.Module):
    """The condition network: three convolutions on the normalised map (the paper's Sec. 3.2)."""

    def __init__(self, cond_channels: int, sigma_max: float, shuffle: int = 1) -> None:
        super().__init__()
        self.log_norm = 1.0 / math.log1p(sigma_max)
        self.shuffle = shuffle
        self.conv1 = nn.Conv2d(shuffle * shuffle, cond_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(cond_channels, cond_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(cond_channels, cond_channels, 1)
        # He initialisation: torch's default shrinks the signal ~2x a layer, and the map, a
        # 1-channel input in [0, 1], would reach the SFT layers as a near constant
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, a=LRELU_SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        m = torch.log1p(sigma.clamp(min=0)) * self.log_norm
        if self.shuffle > 1:
            m = F.pixel_unshuffle(m, self.shuffle)
        return self.conv3(_lrelu(self.conv2(_lrelu(self.conv1(m)))))


class SFTLayer(nn.Module):
    """Eq. 2: F -> (1 + gamma) (.) F + beta, gamma and beta per pixel from the condition features
    (two 1x1 convolutions each, as SFT-GAN)."""

    def __init__(self, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.gamma = nn.Sequential(nn.Conv2d(cond_channels, cond_channels, 1), nn.LeakyReLU(LRELU_SLOPE),
                                   nn.Conv2d(cond_channels, channels, 1))
        self.beta = nn.Sequential(nn.Conv2d(cond_channels, cond_channels, 1), nn.LeakyReLU(LRELU_SLOPE),
                                  nn.Conv2d(cond_channels, channels, 1))

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return features * (1 + self.gamma(cond)) + self.beta(cond)


class SFTResBlock(nn.Module):
    """The conditioned residual block (Fig. 2): x + conv(SFT(lrelu(conv(SFT(x)))))."""

    def __init__(self, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.sft1 = SFTLayer(channels, cond_channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.sft2 = SFTLayer(channels, cond_channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = _lrelu(self.conv1(self.sft1(x, cond)))
        return x + self.conv2(self.sft2(y, cond))


class SFTDeblurNet(nn.Module):
    """Map-conditioned deblurring: (image, sigma map) -> image + predicted residual.

    forward(image, sigma): image (B, 3, H, W) float in [0, 1], sigma (B, 1, H, W) px -> (B, 3, H, W),
    not clipped (training needs the gradient beyond [0, 1]; inference clips). The last
    convolution starts at zero, so an untrained network returns its input exactly.
    """

    def __init__(self, config: SFTNetConfig = SFTNetConfig()) -> None:
        super().__init__()
        self.config = config
        c, cc, L = config.channels, config.cond_channels, config.levels
        width = [c] + [2 * c] * L  # channels per level, full resolution first
        r = config.shuffle
        self.condition = ConditionNet(cc, config.sigma_max, r)
        self.head = nn.Conv2d(3 * r * r, c, 3, padding=1)
        self.down_blocks = nn.ModuleList(SFTResBlock(width[i], cc) for i in range(L))
        self.downs = nn.ModuleList(nn.Conv2d(width[i], width[i + 1], 3, stride=2, padding=1) for i in range(L))
        self.bottom = nn.ModuleList(SFTResBlock(width[L], cc) for _ in range(config.blocks - 2 * L))
        self.ups = nn.ModuleList(nn.Conv2d(width[i + 1], width[i], 3, padding=1) for i in range(L))
        self.up_blocks = nn.ModuleList(SFTResBlock(width[i], cc) for i in range(L))
        self.tail = nn.Conv2d(c, 3 * r * r, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"SFTDeblurNet: image must be (B, 3, H, W), got {tuple(image.shape)}")
        if sigma.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"SFTDeblurNet: sigma must be (B, 1, H, W) = {(image.shape[0], 1, *image.shape[2:])}, "
                             f"got {tuple(sigma.shape)}")
        H, W = image.shape[2:]
        m = self.config.size_multiple
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            # reflection needs pad < size; replicate covers tiny inputs
            mode = "reflect" if ph < H and pw < W else "replicate"
            image_p = F.pad(image, (0, pw, 0, ph), mode=mode)
            sigma = F.pad(sigma, (0, pw, 0, ph), mode=mode)
        else:
            image_p = image
        cond = [self.condition(sigma)]
        for _ in range(self.config.levels):
            cond.append(F.avg_pool2d(cond[-1], 2))
        x = self.head(F.pixel_unshuffle(image_p, self.config.shuffle) if self.config.shuffle > 1 else image_p)
        skips = []
        for i, (block, down) in enumerate(zip(self.down_blocks, self.downs)):
            x = block(x, cond[i])
            skips.append(x)
            x = _lrelu(down(x))
        for block in self.bottom:
            x = block(x, cond[-1])
        for i in reversed(range(self.config.levels)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = _lrelu(self.ups[i](x)) + skips[i]
            x = self.up_blocks[i](x, cond[i])
        residual = self.tail(_lrelu(x))
        if self.config.shuffle > 1:
            residual = F.pixel_shuffle(residual, self.config.shuffle)
        return image + residual[:, :, :H, :W]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
