"""Depth from defocus: Eq. 1 inverted on one side of the focus plane."""

from __future__ import annotations

import numpy as np
import pytest

from defocus_cli.ops.thinlens import coc_diameter, sigma_from_coc
from defocus_cli.pipelines.depth import DepthConfig, LensParams, depth_from_sigma, lens_from_exif

LENS = LensParams(focal_length_mm=35, f_number=2.8, focus_distance_m=1.7, pixel_pitch_um=36)


@pytest.mark.parametrize("focus,depths", [("near", (1.75, 9.0)), ("far", (0.4, 1.65))])
def test_metric_round_trip(focus, depths):
    x = np.linspace(*depths, 600).reshape(20, 30)
    sigma = sigma_from_coc(coc_diameter(x, LENS.focus_distance_m, LENS.alpha_px))
    result = depth_from_sigma(sigma, DepthConfig(focus, LENS))
    assert result.kind == "metric" and result.beyond == 0
    # an exact inverse up to the float32 output (measured 6e-8 relative)
    assert np.max(np.abs(result.depth / x - 1)) < 1e-6


def test_alpha_of_the_dfd_camera():
    # 35 mm at f/2.8 focused at 1.7 m, 36 um pixels: alpha = F^2 / (N (S1 - F)) / pitch
    assert LENS.alpha_px == pytest.approx(35**2 / (2.8 * (1700 - 35)) / 0.036, rel=1e-9)


def test_blur_beyond_the_far_limit_is_infinite_and_reported():
    sigma = np.full((4, 4), LENS.alpha_px / 4 * 1.1)  # c > alpha: no finite depth behind focus
    sigma[0, 0] = 0.5
    result = depth_from_sigma(sigma, DepthConfig("near", LENS))
    assert result.beyond == 15 and np.isinf(result.depth).sum() == 15
    assert any("+inf" in n for n in result.notes)
    assert any("two-valued" in n for n in result.notes)


@pytest.mark.parametrize("focus", ["near", "far"])
def test_pseudo_depth_is_monotonic_in_blur(focus):
    sigma = np.linspace(0, 6, 100, dtype=np.float32).reshape(10, 10)
    d = depth_from_sigma(sigma, DepthConfig(focus)).depth.ravel()
    steps = np.diff(d)
    assert np.all(steps > 0) if focus == "near" else np.all(steps < 0)
    assert d[0] == pytest.approx(1.0)  # sharp pixels sit at the focus distance
    # by hand: c = 4 sigma, alpha = 1.25 x the largest c (documented), S1 = 1; behind the focus
    # plane x = alpha / (alpha - c) (the blurriest pixel at 5), in front alpha / (alpha + c)
    c = 4.0 * sigma.ravel().astype(np.float64)
    alpha = 1.25 * c.max()
    expected = alpha / (alpha - c) if focus == "near" else alpha / (alpha + c)
    np.testing.assert_allclose(d, expected, rtol=1e-6)


def test_bad_parameters():
    with pytest.raises(ValueError, match="focus must be"):
        DepthConfig("middle")
    with pytest.raises(ValueError, match="f_number"):
        LensParams(35, 0, 1.7, 36)
    with pytest.raises(ValueError, match="must exceed the focal length"):
        LensParams(50, 2.0, 0.04, 4)
    with pytest.raises(ValueError, match=">= 0"):
        depth_from_sigma(np.full((2, 2), -1.0))


def test_lens_from_exif_scales_the_pitch_to_the_photo():
    exif = {"FocalLength": 50.0, "FNumber": 1.8, "SubjectDistance": 2.5,
            "FocalPlaneXResolution": 1000.0, "FocalPlaneResolutionUnit": 4, "ExifImageWidth": 6000.0}
    lens = lens_from_exif(exif, 1500)  # the photo was downscaled 4x
    assert lens == pytest.approx({"focal_length_mm": 50.0, "f_number": 1.8, "focus_distance_m": 2.5,
                                  "pixel_pitch_um": 4.0})
    assert lens_from_exif({"SubjectDistance": 0.0}, 100) == {}


def test_lens_from_exif_follows_the_orientation():
    # sensor 6000 px wide; the photo is stored rotated (portrait) and downscaled 2x: 2000x3000
    exif = {"FocalPlaneXResolution": 1000.0, "FocalPlaneResolutionUnit": 4, "ExifImageWidth": 6000.0,
            "Orientation": 6}
    assert lens_from_exif(exif, 2000, 3000)["pixel_pitch_um"] == pytest.approx(2.0)


def test_lens_from_exif_pitch_from_35mm_equivalent():
    # a 1.5x crop sensor (diagonal 28.85 mm) as a 3000x2000 photo: pitch = 28.85 mm / 3606 px
    exif = {"FocalLength": 20.0, "FocalLengthIn35mmFilm": 30.0}
    pitch = lens_from_exif(exif, 3000, 2000)["pixel_pitch_um"]
    assert pitch == pytest.approx(np.hypot(36, 24) / 1.5 / np.hypot(3000, 2000) * 1000)
    assert pitch == pytest.approx(8.0, rel=0.01)  # 24 mm / 3000 px
