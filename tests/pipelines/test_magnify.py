"""Defocus magnification: identity at scale 1, in-focus regions kept, blur grows with scale."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defocus_cli.pipelines.magnify import MagnifyConfig, added_blur, magnify_defocus


def _photo(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((h // 4, w // 4, 3)).astype(np.float32)
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def _split_map(h: int = 120, w: int = 160, blurred: float = 1.5) -> np.ndarray:
    """Left half in focus (0 px), right half defocused."""
    sigma = np.zeros((h, w), np.float32)
    sigma[:, w // 2 :] = blurred
    return sigma


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _sharpness(a: np.ndarray) -> float:
    """Mean squared Laplacian: falls as blur grows."""
    return float(np.mean(cv2.Laplacian(a, cv2.CV_32F) ** 2))


def test_scale_one_returns_the_input():
    rgb = _photo()
    sigma = np.random.default_rng(1).uniform(0, 5, rgb.shape[:2]).astype(np.float32)
    out = magnify_defocus(rgb, sigma, MagnifyConfig(scale=1.0, in_focus=0.0)).image
    assert _psnr(out, rgb) > 50


def test_in_focus_region_is_unchanged():
    rgb = _photo()
    sigma = _split_map()
    result = magnify_defocus(rgb, sigma, MagnifyConfig(scale=8.0))
    out = result.image
    # the added blur (sqrt(63) * 1.5 = 11.9 px) only reaches ~4 sigma into the sharp half:
    # far from the boundary the in-focus half is bit for bit the input
    keep = slice(0, 80 - 50)
    assert np.array_equal(out[:, keep], rgb[:, keep])
    assert _sharpness(out[:, 100:]) < 0.2 * _sharpness(rgb[:, 100:])


def test_blur_grows_with_scale():
    rgb = _photo(seed=2)
    sigma = _split_map(blurred=1.0)
    sharpness = [_sharpness(magnify_defocus(rgb, sigma, MagnifyConfig(scale=m)).image[:, 110:])
                 for m in (1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(sharpness, sharpness[1:]))


def test_uniform_map_adds_the_right_gaussian():
    # a photo blurred by sigma everywhere, magnified M times, is blurred by sqrt(M^2 - 1) sigma more
    rgb = _photo(seed=3)
    sigma = np.full(rgb.shape[:2], 1.2, np.float32)
    from scipy import ndimage

    out = magnify_defocus(rgb, sigma, MagnifyConfig(scale=3.0, in_focus=0.0)).image
    # oracle: scipy's Gaussian (mirrored borders, the renderer's); 1.5 / 255 leaves room for the
    # renderer's pyramid, documented within 1 / 255 of a plain Gaussian blur
    s = float(np.sqrt(8.0) * 1.2)
    expected = ndimage.gaussian_filter(rgb.astype(np.float64), (s, s, 0), mode="mirror", truncate=4.0)
    assert np.abs(out - expected).max() < 1.5 / 255


def test_focus_side_orders_the_layers():
    # a strongly blurred patch inside a sharp surround: with focus far the patch is nearer, so
    # its blur spreads over the surround; with focus near it is behind and stays inside
    rgb = np.zeros((80, 80, 3), np.float32)
    rgb[30:50, 30:50] = 1.0
    sigma = np.zeros((80, 80), np.float32)
    sigma[30:50, 30:50] = 1.0
    near = magnify_defocus(rgb, sigma, MagnifyConfig(scale=5.0, focus="near")).image
    far = magnify_defocus(rgb, sigma, MagnifyConfig(scale=5.0, focus="far")).image
    assert near[40, 27].max() == 0.0  # behind the sharp surround: no spill
    assert far[40, 27].max() > 0.2  # in front: it spills over


def test_added_blur_and_checks():
    sigma = np.array([[0.0, 0.25, 0.5, 0.75, 1.0, 2.0]], np.float32)
    add = added_blur(sigma, MagnifyConfig(scale=2.0, in_focus=0.5))
    k = np.sqrt(3.0)
    np.testing.assert_allclose(add[0], [0, 0, 0, 0.5 * 0.75 * k, 1.0 * k, 2.0 * k], rtol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        MagnifyConfig(scale=0.5)
    with pytest.raises(ValueError, match="focus"):
        MagnifyConfig(scale=2.0, focus="middle")
    with pytest.raises(ValueError, match="does not match"):
        magnify_defocus(_photo(), np.zeros((10, 10), np.float32), MagnifyConfig(scale=2.0))
    with pytest.raises(ValueError, match=">= 0"):
        magnify_defocus(_photo(), -np.ones((120, 160), np.float32), MagnifyConfig(scale=2.0))
