"""Network C: the fixed VGG19 feature extractor of the content-preservation loss (Eq. 9).

phi_4 is VGG19's activation after its last convolution before the 4th max-pool (conv4_4 + ReLU,
torchvision ``vgg19().features[:27]``), as in the paper (Sec. 5.1, "l = 4"). With weights that
end earlier (the ImageNet VGG19 available here ends at conv3_1) C stops at relu3_1
(``features[:12]``, 256 channels at 1/4 size) and says so (``ContentNet.layer``). C is frozen:
its parameters never train and it always runs in eval mode.

Two weight files are read (``load_vgg19_state_dict``): torchvision's ``vgg19`` state dict, and
the first five convolutions in Gatys et al.'s "normalised" form (an ``nn.Sequential`` whose
layer 0 is a 1x1 convolution doing the Caffe preprocessing, RGB [0, 1] -> BGR x 255 minus the
ImageNet mean, then reflection-padded 3x3 convolutions; ``../shared/models``). The second is
brought to torchvision's layout: the preprocessing is folded into conv1_1 so that both take
torchvision's normalised input (x - mean) / std, exactly away from the border (conv1_1's zero
padding of the normalised input is not the reflection padding of the preprocessed one). The
normalisation rescales each channel by a positive factor, so the features are ImageNet's up to
a per-channel scale.

Defocus maps are single-channel; C sees them as an RGB image: the map in sigma / sigma_max
units ([0, 1]) is repeated to 3 channels and normalised with ImageNet's mean and std, exactly
as B normalises its RGB input (the authors' code likewise fed the map through VGG19's RGB input).

C needs ImageNet weights (torchvision's ``vgg19`` state dict, keys ``features.N.weight|bias``);
random VGG features would make L_C meaningless, so there is no random fallback here: the training
pipeline drops L_C when no weights are given and records that.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from defocus_cli.errors import WeightsError
from defocus_cli.io.torchfiles import load_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# conv1_1 .. conv4_4 ("M" = 2x2 max-pool): 12 convs and 3 pools, torchvision indices 0..26
_VGG19_TO_CONV4_4 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512)
#: C's layer -> the length of _VGG19_TO_CONV4_4 it uses, its torchvision index, its channels
CONTENT_LAYERS = {"relu4_4": (15, 25, 512), "relu3_1": (7, 10, 256)}
#: the "normalised" file's Sequential indices of conv1_1, conv1_2, conv2_1, conv2_2, conv3_1,
#: and torchvision's
_NORMALISED_CONVS = {2: 0, 5: 2, 9: 5, 12: 7, 16: 10}


def load_vgg19_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read VGG19 weights safely -> a state dict in torchvision's layout (``features.N.*``).

    Accepts torchvision's ``vgg19`` state dict (e.g. ``vgg19-dcbb9e9d.pth``) and the "normalised"
    first five convolutions (see the module docstring; converted by ``from_normalised``).
    Raises WeightsError naming the file when it is missing, unreadable or neither.
    """
    path = Path(path)
    hint = "pass torchvision's vgg19 state dict (vgg19-dcbb9e9d.pth) or vgg19_normalised_to_conv3_1.pth"
    try:
        sd = load_torch_file(path, "VGG19 weights")
    except WeightsError as exc:
        raise WeightsError(f"{exc}; {hint}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "features.0.weight" in sd and "features.34.weight" in sd:
        return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if isinstance(sd, dict) and all(f"{i}.weight" in sd for i in (0, *_NORMALISED_CONVS)):
        try:
            return from_normalised(sd)
        except ValueError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    raise WeightsError(f"{path}: not VGG19 weights (neither torchvision's 'features.N' keys nor the "
                       f"normalised Sequential's '0', '2', ..., '16'); {hint}")


def from_normalised(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The normalised Sequential's convolutions -> torchvision keys ``features.{0,2,5,7,10}``,
    conv1_1 taking torchvision's input (x - IMAGENET_MEAN) / IMAGENET_STD (RGB in [0, 1]).

    The preprocessing y = W0 rgb + b0 with rgb = std * x + mean is y = A x + c, A = W0 diag(std),
    c = W0 mean + b0; conv1_1 of y is then the convolution with W1 A of x plus b1 + sum W1 c.
    """
    w0, b0 = sd["0.weight"].double(), sd["0.bias"].double()
    if w0.shape != (3, 3, 1, 1) or b0.shape != (3,):
        raise ValueError(f"layer 0 is not the 1x1 3->3 preprocessing convolution: {tuple(w0.shape)}")
    w0 = w0[:, :, 0, 0]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    a, c = w0 * std[None, :], w0 @ mean + b0
    out: dict[str, torch.Tensor] = {}
    for src, dst in _NORMALISED_CONVS.items():
        w, b = sd[f"{src}.weight"].double(), sd[f"{src}.bias"].double()
        if src == 2:
            w, b = torch.einsum("oikl,ij->ojkl", w, a), b + torch.einsum("oikl,i->o", w, c)
        out[f"features.{dst}.weight"], out[f"features.{dst}.bias"] = w.float(), b.float()
    return out


def deepest_content_layer(state_dict: dict[str, torch.Tensor]) -> str:
    """relu4_4 when the weights reach conv4_4, else relu3_1 (ValueError below that)."""
    for layer, (_, index, _) in CONTENT_LAYERS.items():
        if f"features.{index}.weight" in state_dict:
            return layer
    raise ValueError("VGG19 weights end before conv3_1: too shallow for network C")


class ContentNet(nn.Module):
    """Frozen VGG19 up to ``layer`` (default: the deepest of relu4_4 / relu3_1 the weights
    reach). Input (B, 1, H, W) map in [0, 1]; output (B, 512, H/8, W/8) at relu4_4,
    (B, 256, H/4, W/4) at relu3_1."""

    def __init__(self, state_dict: dict[str, torch.Tensor], layer: str | None = None) -> None:
        super().__init__()
        self.layer = layer or deepest_content_layer(state_dict)
        if self.layer not in CONTENT_LAYERS:
            raise ValueError(f"ContentNet: layer must be one of {sorted(CONTENT_LAYERS)}, got {self.layer!r}")
        layers: list[nn.Module] = []
        cin = 3
        for item in _VGG19_TO_CONV4_4[:CONTENT_LAYERS[self.layer][0]]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        own = self.features.state_dict()
        mapped = {}
        for key, target in own.items():
            src = state_dict.get(f"features.{key}")
            if src is None or src.shape != target.shape:
                got = None if src is None else tuple(src.shape)
                raise WeightsError(f"VGG19 'features.{key}': expected shape {tuple(target.shape)}, got {got}")
            mapped[key] = src.float()
        self.features.load_state_dict(mapped, strict=True)
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ContentNet:
        # C is fixed (paper Sec. 4.1): it stays in eval mode whatever its parent does
        return super().train(False)

    def forward(self, defocus: torch.Tensor) -> torch.Tensor:
        if defocus.ndim != 4 or defocus.shape[1] != 1:
            raise ValueError(f"ContentNet expects (B, 1, H, W) maps, got shape {tuple(defocus.shape)}")
        x = defocus.expand(-1, 3, -1, -1)
        x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return self.features(x)
