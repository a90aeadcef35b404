"""Network D: the domain-adaptation discriminator of DMENet (paper Sec. 4.3, supplement Table 2).

D reads network B's features after the last up-sampling layer (``BlurNetOutput.features``,
(B, C, H, W)) and returns one logit per output cell: 4x [conv 4x4 stride 2, BN, activation]
with 64/128/256/512 channels, then a conv 4x4 stride 2 to one channel (a patch discriminator;
the losses average over the cells). The output is a *logit*: Eq. 7-8 apply the sigmoid inside
the loss, in a numerically stable form.

Activation: the supplement's Table 2 (and SPEC.md) says ReLU; the paper's text (Sec. 4.3) and
the authors' TensorFlow code use leaky ReLU(0.2). We follow the table by default
(``negative_slope=0.0``); pass ``negative_slope=0.2`` for the code's variant.
"""

from __future__ import annotations

import torch
from torch import nn

#: Table 2 channel counts of the four strided conv-BN-activation blocks
D_CHANNELS = (64, 128, 256, 512)


class DomainDiscriminator(nn.Module):
    """Patch discriminator on B's last up-sampling features.

    Input (B, in_channels, H, W) float; output (B, 1, h, w) logits with h = H / 32 rounded down
    (five stride-2 convs; H, W >= 32). ``width`` scales the channel counts like B's multiplier.
    """

    def __init__(self, in_channels: int, width: float = 1.0, negative_slope: float = 0.0) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"DomainDiscriminator: in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        cin = in_channels
        for c in D_CHANNELS:
            cout = max(8, int(round(c * width)))
            act = nn.ReLU(inplace=True) if negative_slope == 0 else nn.LeakyReLU(negative_slope, inplace=True)
            # no conv bias: the BN that follows has its own shift
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), act]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"DomainDiscriminator expects (B, {self.in_channels}, H, W) features, "
                f"got shape {tuple(features.shape)}"
            )
        if min(features.shape[-2:]) < 32:
            raise ValueError(
                f"DomainDiscriminator needs H, W >= 32 (five stride-2 convs), got {tuple(features.shape[-2:])}"
            )
        return self.net(features)
