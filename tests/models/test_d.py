"""Network D (supplement Table 2)."""

import pytest
import torch
from torch import nn

from defocus_cli.models.d import DomainDiscriminator


def test_output_is_one_logit_per_32x32_patch():
    d = DomainDiscriminator(16)
    out = d(torch.randn(2, 16, 64, 96))
    assert out.shape == (2, 1, 2, 3)


def test_layers_follow_table_2():
    d = DomainDiscriminator(64)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]  # Table 2
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 4
    assert sum(isinstance(m, nn.ReLU) for m in d.modules()) == 4  # Table 2: ReLU by default
    lrelu = DomainDiscriminator(64, negative_slope=0.2)
    assert sum(isinstance(m, nn.LeakyReLU) for m in lrelu.modules()) == 4


def test_rejects_wrong_channels_and_tiny_inputs():
    d = DomainDiscriminator(8)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        d(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="H, W >= 32"):
        d(torch.randn(1, 8, 16, 64))
