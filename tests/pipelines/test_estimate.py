"""Estimation at full resolution: units under the working-resolution scale, tiling, refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defocus_cli.models.b import BlurNet, BlurNetConfig
from defocus_cli.pipelines.estimate import EstimateConfig, estimate_defocus, refine_upsample, run_network


class ConstantNet(nn.Module):
    """Stands in for B: predicts sigma/sigma_max = value everywhere (exact unit checks)."""

    def __init__(self, value: float, sigma_max: float = 7.0) -> None:
        super().__init__()
        self.value = value
        self.config = BlurNetConfig(sigma_max=sigma_max)
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value) + 0 * self.p


class LocalNet(nn.Module):
    """Stands in for B with a 1-pixel receptive field: sigma/sigma_max = the input's green channel."""

    def __init__(self) -> None:
        super().__init__()
        self.config = BlurNetConfig()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, 1:2] + 0 * self.p


def test_sigma_is_in_pixels_of_the_full_resolution_photo():
    rgb = np.random.default_rng(0).random((300, 500, 3), dtype=np.float32)
    result = estimate_defocus(rgb, ConstantNet(0.5), config=EstimateConfig(working_size=100))
    assert result.sigma.shape == (300, 500)
    assert result.working_size == (100, 60)
    assert result.scale == pytest.approx(0.2)
    # 3.5 px at the working resolution is 3.5 / 0.2 = 17.5 px in the photo
    assert np.allclose(result.sigma, 17.5, atol=1e-3)


def test_small_photos_are_never_upsampled():
    rgb = np.zeros((40, 30, 3), np.float32)
    result = estimate_defocus(rgb, ConstantNet(0.25, sigma_max=4.0), config=EstimateConfig(working_size=768))
    assert result.scale == 1.0 and result.working_size == (30, 40)
    assert np.allclose(result.sigma, 1.0, atol=1e-5)


def test_metadata_sigma_max_wins():
    rgb = np.zeros((16, 16, 3), np.float32)
    result = estimate_defocus(rgb, ConstantNet(0.5), {"sigma_max": 10.0})
    assert np.allclose(result.sigma, 5.0, atol=1e-5)


def test_tiles_are_seamless():
    rng = np.random.default_rng(1)
    rgb = rng.random((300, 410, 3), dtype=np.float32)
    whole = run_network(rgb, LocalNet(), tile=1024)
    tiled = run_network(rgb, LocalNet(), tile=128, overlap=32)
    assert np.abs(whole - tiled).max() < 1e-5
    assert np.allclose(whole, rgb[..., 1], atol=1e-6)


def test_tiling_of_the_real_network_changes_little_in_overlaps():
    torch.manual_seed(0)
    model = BlurNet(BlurNetConfig(width=0.125)).eval()
    rgb = np.random.default_rng(2).random((160, 200, 3), dtype=np.float32)
    whole = run_network(rgb, model, tile=1024)
    tiled = run_network(rgb, model, tile=128, overlap=48)
    assert whole.shape == tiled.shape == (160, 200)
    assert np.abs(whole - tiled).mean() < 0.05


def test_refinement_keeps_constant_maps_and_follows_photo_edges():
    import cv2

    guide = np.zeros((200, 200, 3), np.float32)
    guide[:, 110:] = 1.0  # a sharp vertical edge in the photo, between working pixels
    step = np.where(np.arange(200) >= 110, 8.0, 0.0).astype(np.float32)
    # the working map (scale 0.25) as a network would see it: the step, area-averaged
    work = cv2.resize(np.tile(step, (200, 1)) * 0.25, (50, 50), interpolation=cv2.INTER_AREA)
    work_rgb = cv2.resize(guide, (50, 50), interpolation=cv2.INTER_AREA)
    const = refine_upsample(np.full((50, 50), 1.5, np.float32), work_rgb, guide, 0.25)
    assert np.allclose(const, 6.0, atol=1e-4)
    plain = refine_upsample(work, work_rgb, guide, 0.25, refine=False)
    refined = refine_upsample(work, work_rgb, guide, 0.25, refine=True)
    # the bilinear map ramps across the edge; refinement pulls it towards the photo's step
    err_plain = np.abs(plain[100] - step).mean()
    err_refined = np.abs(refined[100] - step).mean()
    assert err_refined < 0.3 * err_plain


def test_input_contract():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) float32"):
        estimate_defocus(np.zeros((8, 8, 3), np.uint8), ConstantNet(0.5))
