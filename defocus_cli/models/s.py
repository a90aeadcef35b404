"""Network S: the sharpness-calibration network of DMENet (paper Sec. 4.5, supplement Table 3).

S reads B's predicted defocus map (B, 1, H, W) (sigma / sigma_max in [0, 1], as in the authors'
code where S's input is B's output map) and returns per-pixel *logits* of "blurred" (b = 1) vs
"sharp" (b = 0); Eq. 10 applies the sigmoid. Only 1x1 convolutions, so S's receptive field is
one pixel and its gradients reach B exactly where B's own receptive field is (the paper's reason,
supplement Fig. 1): 64 x3, 32 x3, 16 x3 (each conv, BN, activation), then a 1x1 conv to 1.

Activation: Table 3 and SPEC.md say ReLU, the paper's text and the authors' code leaky ReLU(0.2);
the table is the default (``negative_slope=0.0``).
"""

from __future__ import annotations

import torch
from torch import nn

#: Table 3: (channels, repeat) of the 1x1 conv-BN-activation blocks
S_BLOCKS = ((64, 3), (32, 3), (16, 3))


class SharpnessCalibrator(nn.Module):
    """Input (B, 1, H, W) float defocus map; output (B, 1, H, W) blur logits."""

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout, repeat in S_BLOCKS:
            for _ in range(repeat):
                act = nn.ReLU(inplace=True) if negative_slope == 0 else nn.LeakyReLU(negative_slope, inplace=True)
                layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act]
                cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, defocus: torch.Tensor) -> torch.Tensor:
        if defocus.ndim != 4 or defocus.shape[1] != 1:
            raise ValueError(f"SharpnessCalibrator expects (B, 1, H, W), got shape {tuple(defocus.shape)}")
        return self.net(defocus)
