"""Network C: the fixed VGG19 feature extractor of the content-preservation loss (Eq. 9).

phi_4 is VGG19's activation after its last convolution before the 4th max-pool (conv4_4 + ReLU,
torchvision ``vgg19().features[:27]``), as in the paper (Sec. 5.1, "l = 4"). C is frozen: its
parameters never train and it always runs in eval mode.

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


def load_vgg19_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read torchvision's ``vgg19`` state dict (e.g. ``vgg19-dcbb9e9d.pth``) safely.

    Raises WeightsError naming the file when it is missing, unreadable or not a VGG19 state dict.
    """
    path = Path(path)
    try:
        sd = load_torch_file(path, "VGG19 weights")
    except WeightsError as exc:
        raise WeightsError(f"{exc}; pass torchvision's vgg19 state dict (vgg19-dcbb9e9d.pth)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "features.0.weight" not in sd or "features.34.weight" not in sd:
        raise WeightsError(
            f"{path}: not a torchvision vgg19 state dict (no 'features.0.weight' / 'features.34.weight')"
        )
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


class ContentNet(nn.Module):
    """Frozen VGG19 up to relu4_4. Input (B, 1, H, W) map in [0, 1]; output (B, 512, H/8, W/8)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in _VGG19_TO_CONV4_4:
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
