"""Network S (supplement Table 3): 1x1 convolutions only."""

import pytest
import torch
from torch import nn

from defocus_cli.models.s import SharpnessCalibrator


def test_layers_follow_table_3():
    s = SharpnessCalibrator()
    convs = [m for m in s.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 3 + [32] * 3 + [16] * 3 + [1]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in s.modules()) == 9


def test_receptive_field_is_one_pixel():
    # permuting pixels permutes the output the same way: nothing mixes neighbours
    s = SharpnessCalibrator().eval()
    x = torch.rand(1, 1, 8, 8)
    perm = torch.randperm(64)
    y = s(x).flatten()
    y_perm = s(x.flatten()[perm].view(1, 1, 8, 8)).flatten()
    torch.testing.assert_close(y_perm, y[perm])


def test_shape_and_check():
    s = SharpnessCalibrator()
    assert s(torch.rand(2, 1, 5, 7)).shape == (2, 1, 5, 7)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        s(torch.rand(2, 3, 5, 7))
