"""Layered spatially varying deblur (pipelines/deblur.py): gains, seams, tiling, contracts."""

from __future__ import annotations

import numpy as np
import pytest

from defocus_cli.ops.deconv import DeconvConfig, deconvolve, gaussian_kernel
from defocus_cli.pipelines.deblur import (
    DeblurConfig,
    deblur,
    level_weights,
    clipped_mask,
    saturation_keep,
    sigma_levels,
)

# Clean, colourful synthetic input (white noise of 1 % per channel, no JPEG): a larger data
# weight than the default and per-channel deconvolution suit it; the defaults (lam 300,
# luma only) were measured best on real JPEG photos, whose chroma is coarse anyway.
CLEAN = DeconvConfig(lam=2000.0)


def clean(**kw) -> DeblurConfig:
    return DeblurConfig(deconv=CLEAN, channels="rgb", **kw)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Reference 'same' Gaussian convolution with symmetric borders (independent code)."""
    if sigma <= 0:
        return image.copy()
    k = gaussian_kernel(sigma)
    r = k.shape[0] // 2
    pad = [(r, r), (r, r)] + [(0, 0)] * (image.ndim - 2)
    big = np.pad(image.astype(np.float64), pad, mode="symmetric")
    out = np.zeros(image.shape, dtype=np.float64)
    h, w = image.shape[:2]
    for dy in range(k.shape[0]):
        for dx in range(k.shape[1]):
            out += k[dy, dx] * big[dy : dy + h, dx : dx + w]
    return out.astype(np.float32)


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Shading plus flat rectangles and discs, (h, w, 3) float32 in [0.05, 0.95] (no clipping)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fy, fx = rng.uniform(0.5, 1.5, 2)
        img[..., c] = 0.5 + 0.2 * np.sin(2 * np.pi * (fx * xx + fy * yy) / max(h, w))
    for _ in range(int(h * w / 1500)):
        colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
            img[y0 : y0 + rng.integers(4, 40), x0 : x0 + rng.integers(4, 40)] = colour
        else:
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 20)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def two_depth(rng: np.random.Generator, s_near: float, s_far: float, h: int = 160, w: int = 240):
    """Far layer on the left, near layer (in front) on the right, composited like SYNDOF:
    the far layer blurred as a whole, the near one blurred with its mask and laid over it.
    Returns (sharp, blurred + 1 % noise, ground-truth map, boundary column)."""
    far, near = scene(rng, h, w), scene(rng, h, w)
    b = w // 2
    mask = np.zeros((h, w, 1), np.float32)
    mask[:, b:] = 1.0
    mask_b = blur(mask, s_near)
    img = mask_b * blur(near, s_near) + (1 - mask_b) * blur(far, s_far)
    sharp = mask * near + (1 - mask) * far
    noisy = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
    sigma = np.where(mask[..., 0] > 0, s_near, s_far).astype(np.float32)
    return sharp, noisy, sigma, b


def x_gradient_energy(img: np.ndarray, c0: int, c1: int) -> float:
    return float((np.diff(img, axis=1)[:, c0:c1] ** 2).mean())


@pytest.mark.parametrize(("s_near", "s_far"), [(1.0, 3.0), (0.0, 3.0)])
def test_two_depth_scene_gain_and_no_seam(s_near: float, s_far: float) -> None:
    """>= 2 dB with the ground-truth map, and the depth boundary has no more gradient energy
    than the sharp image has there (a seam or ringing would add some; measured 0.57 / 0.95)."""
    rng = np.random.default_rng(0)
    sharp, noisy, sigma, b = two_depth(rng, s_near, s_far)
    out = deblur(noisy, sigma, clean(tile=96)).image
    assert out.shape == sharp.shape and out.dtype == np.float32
    assert psnr(out, sharp) - psnr(noisy, sharp) >= 2.0
    band = x_gradient_energy(out, b - 5, b + 4) / x_gradient_energy(sharp, b - 5, b + 4)
    assert band < 1.1, band


def test_large_blur_at_reduced_resolution_matches_full_resolution() -> None:
    """A sigma-16 background is deconvolved on a 4x downsampled frame (working_sigma):
    as good as at full resolution (measured: better, 1.89 vs 1.74 dB) and no seam either."""
    rng = np.random.default_rng(1)
    sharp, noisy, sigma, b = two_depth(rng, 0.0, 16.0, 192, 256)
    low = deblur(noisy, sigma, clean()).image
    full = deblur(noisy, sigma, clean(working_sigma=None)).image
    base = psnr(noisy, sharp)
    assert psnr(low, sharp) - base >= psnr(full, sharp) - base - 0.3
    band = x_gradient_energy(low, b - 5, b + 4) / x_gradient_energy(sharp, b - 5, b + 4)
    assert band < 1.1, band


def test_tiles_leave_no_seam() -> None:
    """Small tiles (many overlaps, per-level bounding boxes) vs one tile for the whole image:
    the same result to well under one 8-bit level on average, and the difference shows no
    structure along tile borders."""
    rng = np.random.default_rng(2)
    sharp = scene(rng, 200, 260)
    yy, xx = np.mgrid[0:200, 0:260]
    sigma = (0.5 + 3.0 * xx / 259 + 0.5 * np.sin(yy / 20)).astype(np.float32)
    img = np.zeros_like(sharp)
    # a continuous sigma ramp, rendered by interpolating between uniformly blurred copies
    levels = np.linspace(0, 4.5, 19)
    copies = [blur(sharp, s) for s in levels]
    pos = np.clip(sigma / levels[1], 0, len(levels) - 1.001)
    j = pos.astype(int)
    t = (pos - j)[..., None]
    for k in range(len(levels) - 1):
        m = (j == k)[..., None]
        img += np.where(m, (1 - t) * copies[k] + t * copies[k + 1], 0)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    cfg = clean(tile=64, overlap=8)
    tiled = deblur(img, sigma, cfg).image
    whole = deblur(img, sigma, clean(tile=4096)).image
    diff = np.abs(tiled - whole).mean(-1)
    assert diff.mean() < 1.0 / 255
    # tile borders (every ~64 px) are no worse than the rest
    cols = np.arange(1, 4) * 260 // 4
    at_borders = np.mean([diff[:, c - 3 : c + 3].mean() for c in cols])
    assert at_borders < 2.0 * diff.mean() + 1e-4
    assert psnr(tiled, sharp) > psnr(img, sharp) + 1.0


def test_uniform_map_equals_uniform_deconvolution() -> None:
    rng = np.random.default_rng(3)
    sharp = scene(rng, 96, 128)
    img = blur(sharp, 2.0) + rng.normal(0, 0.01, sharp.shape).astype(np.float32)
    sigma = np.full(sharp.shape[:2], 2.0, np.float32)
    cfg = clean()
    layered = deblur(img, sigma, cfg).image
    direct = np.clip(deconvolve(img, gaussian_kernel(2.0), CLEAN), 0, 1)
    assert np.abs(layered - direct).mean() < 2e-3


def test_sharp_pixels_keep_the_input() -> None:
    rng = np.random.default_rng(4)
    img = np.clip(scene(rng, 120, 200) + rng.normal(0, 0.05, (120, 200, 3)), 0.05, 0.95)
    img = img.astype(np.float32)
    sigma = np.zeros((120, 200), np.float32)
    same = deblur(img, sigma)
    np.testing.assert_array_equal(same.image, img)
    assert same.frames == 0
    # far (> margins) from the blurred region, sharp pixels are untouched bit for bit
    sigma[:, 150:] = 2.0
    out = deblur(img, sigma).image
    np.testing.assert_array_equal(out[:, :100], img[:, :100])
    assert np.abs(out[:, 160:] - img[:, 160:]).max() > 0.01


def test_map_margin_deblurs_by_the_lower_bound() -> None:
    # an over-estimated map (true sigma 1.5, map 2.0) rings; its lower bound (margin 0.5) does
    # not, and the margin is exactly a shift of the map, floored at 0
    rng = np.random.default_rng(5)
    sharp = scene(rng, 96, 128)
    img = (blur(sharp, 1.5) + rng.normal(0, 0.01, sharp.shape)).astype(np.float32)
    over = np.full((96, 128), 2.0, np.float32)
    shifted = deblur(img, over, clean(map_margin=0.5)).image
    np.testing.assert_array_equal(shifted, deblur(img, over - 0.5, clean()).image)
    assert psnr(shifted, sharp) > psnr(deblur(img, over, clean()).image, sharp) + 1.0
    assert psnr(shifted, sharp) > psnr(img, sharp) + 2.0
    # the floor: a map below the margin deblurs nothing
    np.testing.assert_array_equal(deblur(img, over, clean(map_margin=2.5)).image, img)


def test_luma_mode_changes_brightness_only() -> None:
    rng = np.random.default_rng(5)
    img = blur(scene(rng, 64, 64), 2.0)
    out = deblur(img, np.full((64, 64), 2.0, np.float32), DeblurConfig(saturation=None)).image
    change = out - img
    inside = (out > 0.001).all(-1) & (out < 0.999).all(-1)  # not clipped
    np.testing.assert_allclose(change[..., 0][inside], change[..., 1][inside], atol=1e-5)
    np.testing.assert_allclose(change[..., 0][inside], change[..., 2][inside], atol=1e-5)


def test_levels_and_weights() -> None:
    cfg = DeblurConfig(layers=4)
    geo = sigma_levels(8.0, cfg)
    np.testing.assert_allclose(geo, [0.5, 1.0, 2.0, 4.0, 8.0])
    lin = sigma_levels(4.5, DeblurConfig(layers=4, spacing="linear"))
    np.testing.assert_allclose(lin, [0.5, 1.5, 2.5, 3.5, 4.5])
    sigma = np.array([[0.0, 0.5, 1.5, 3.0, 8.0, 20.0]], np.float32)
    j, t = level_weights(sigma, geo, 1.0)
    np.testing.assert_array_equal(j[0], [0, 0, 1, 2, 3, 3])
    np.testing.assert_allclose(t[0], [0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    # the two weights of a pixel sum to one and vary continuously with sigma
    s = np.linspace(0, 9, 1000, dtype=np.float32)[None]
    j, t = level_weights(s, geo, 1.0)
    blended = geo[j] * (1 - t) + geo[j + 1] * t
    np.testing.assert_allclose(blended[0][(s[0] > 0.5) & (s[0] < 8)], s[0][(s[0] > 0.5) & (s[0] < 8)], rtol=1e-5)


def test_saturation_keep_fades_near_clipping() -> None:
    rgb = np.full((40, 40, 3), 0.5, np.float32)
    assert clipped_mask(rgb, 0.98) is None
    rgb[20, 20] = 1.0
    clipped = clipped_mask(rgb, 0.98)
    assert clipped.sum() == 1 and clipped[20, 20]
    keep = saturation_keep(clipped, np.full((40, 40), 2.0, np.float32))
    assert keep[20, 20] == 0 and keep[20, 23] == 0  # within 2 sigma
    assert keep[20, 30] == 1.0  # beyond 4 sigma + 1
    assert 0 < keep[20, 26] < 1.0


def test_clipped_highlight_neither_rings_nor_fragments_the_layers() -> None:
    """A clipped highlight: its surroundings keep the input, no ringing beyond, and the
    deconvolution work is that of the map alone (highlights do not cut the layers up)."""
    rng = np.random.default_rng(8)
    h, w = 96, 128
    sharp = scene(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    spot = (yy - 48) ** 2 + (xx - 64) ** 2 < 36
    bright = sharp.copy()
    bright[spot] = 3.0  # a light source far above white
    photo = np.clip(blur(bright, 2.0), 0.0, 1.0)
    truth = np.clip(bright, 0.0, 1.0)
    sigma = np.full((h, w), 2.0, np.float32)
    on = deblur(photo, sigma, clean())
    off = deblur(photo, sigma, clean(saturation=None))
    clipped = clipped_mask(photo, 0.98)
    assert clipped is not None and clipped.sum() > 36
    keep = saturation_keep(clipped, sigma)
    np.testing.assert_allclose(on.image[keep == 0], photo[keep == 0], atol=1e-6)
    # the ring just outside the protected zone: smaller error than deconvolving the clipped data
    d = np.hypot(yy - 48, xx - 64)
    ring = (keep == 1) & (d < 20)
    err_on = np.abs(on.image - truth)[ring].mean()
    err_off = np.abs(off.image - truth)[ring].mean()
    assert err_on < 0.5 * err_off, (err_on, err_off)
    # the same frames as without the highlight handling: the map, not the clipping, sets them
    assert on.frames == off.frames and on.frame_pixels == off.frame_pixels


def test_progress_and_result_fields() -> None:
    rng = np.random.default_rng(6)
    img = scene(rng, 80, 80)
    sigma = np.linspace(0, 3, 80, dtype=np.float32)[None].repeat(80, 0)
    calls: list[tuple[int, int]] = []
    res = deblur(img, sigma, DeblurConfig(layers=4), progress=lambda d, n: calls.append((d, n)))
    assert res.frames > 0 and calls == [(i, res.frames) for i in range(1, res.frames + 1)]
    # 4 geometric levels from sharp_sigma 0.5 up to the map's maximum 3 px, by hand
    np.testing.assert_allclose(res.levels, 0.5 * 6.0 ** (np.arange(5) / 4), rtol=1e-6)
    # each level's share is the mean of its per-pixel cross-fade weight, by hand: a pixel
    # between levels lo < sigma <= hi gives (hi - sigma) / (hi - lo) to lo, the rest to hi
    lv = res.levels
    want = np.zeros(5)
    for s in sigma.ravel().astype(np.float64):
        if s <= lv[0]:
            want[0] += 1
            continue
        k = min(int(np.searchsorted(lv, s, side="right")), 4)
        t = (s - lv[k - 1]) / (lv[k] - lv[k - 1])
        want[k - 1] += 1 - t
        want[k] += t
    np.testing.assert_allclose(res.layer_fraction, want / sigma.size, atol=1e-5)


def test_torch_device_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    sharp, noisy, sigma, _ = two_depth(rng, 1.0, 3.0, 64, 96)
    a = deblur(noisy, sigma, clean()).image
    b = deblur(noisy, sigma, clean(), device=torch.device("cpu")).image
    assert np.abs(a - b).mean() < 1e-4


@pytest.mark.parametrize("device", [None, "cpu"])
def test_parallel_workers_give_the_same_image(device: str | None) -> None:
    """Frames deconvolved by 3 threads (many small tiles, several levels each) are added in job
    order: the image equals the one-thread result bit for bit, and torch's thread count is
    restored afterwards (one worker uses torch's threads, whose FFTs may round differently)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    img = scene(rng, 120, 150)
    yy, xx = np.mgrid[0:120, 0:150]
    sigma = (0.6 + 3.0 * xx / 149 + 0.5 * np.sin(yy / 15)).astype(np.float32)
    cfg = clean(tile=40, overlap=4, layers=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = deblur(img, sigma, cfg, device=device, workers=1)
    finally:
        torch.set_num_threads(threads)
    three = deblur(img, sigma, cfg, device=device, workers=3)
    assert one.frames == three.frames > 20
    assert np.array_equal(one.image, three.image)
    np.testing.assert_array_equal(one.layer_fraction, three.layer_fraction)
    assert torch.get_num_threads() == threads
    assert psnr(one.image, img) < 60  # it did change the image


def test_input_validation() -> None:
    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        deblur(img, np.ones((8, 8), np.float32), workers=0)
    with pytest.raises(ValueError, match=r"rgb must be \(H, W, 3\)"):
        deblur(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="must equal the image's"):
        deblur(img, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        deblur(img, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="map_margin must be >= 0"):
        DeblurConfig(map_margin=-0.1)
    with pytest.raises(ValueError, match="channels must be luma or rgb"):
        DeblurConfig(channels="lab")
    with pytest.raises(ValueError, match="tile >= 4 \\* overlap"):
        DeblurConfig(tile=16, overlap=8)


def test_real_f28_photos_against_f8(shared_data) -> None:
    """dfd-indoor: f/2.8 photos deblurred with their thin-lens ground-truth maps, scored against
    the aligned, exposure-matched f/8 shots (benchmarks/bench_deblur_real.py does the data
    preparation and reports the whole set). Every 20th scene: PSNR and SSIM up on average, no
    scene more than 1 dB worse (measured +0.09, +0.35, -0.79, +0.90 dB)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_deblur_real.py"
    spec = importlib.util.spec_from_file_location("bench_deblur_real", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from defocus_cli.io.images import read_image

    data = shared_data / "rgbd" / "dfd-indoor"
    d_psnr, d_ssim = [], []
    for name in ("indoor_001", "indoor_021", "indoor_041", "indoor_061"):
        blurry = read_image(data / "defocused" / f"{name}.jpg").pixels
        sharp = read_image(data / "allinfocus" / f"{name}.jpg").pixels
        sigma = bench.gt_sigma(data / "depth" / f"{name}.png")
        ref = bench.aligned_reference(blurry, sharp, sigma)
        out = deblur(blurry, sigma).image
        d_psnr.append(bench.psnr(out, ref) - bench.psnr(blurry, ref))
        d_ssim.append(bench.ssim(out, ref) - bench.ssim(blurry, ref))
    assert np.mean(d_psnr) > 0.0 and np.mean(d_ssim) > 0.0, (d_psnr, d_ssim)
    assert min(d_psnr) > -1.0, d_psnr


def test_noise_adaptive_lam_follows_the_rule_and_its_bounds():
    from defocus_cli.pipelines.deblur import JPEG_LAM, LAM_MAX, LAM_MIN, noise_adaptive_lam

    # lam = 1.27 sigma / noise^1.6, the rule fitted on BSDS500 val, within [200, 3000]
    assert noise_adaptive_lam(0.02, 2.0) == pytest.approx(1.27 * 2.0 / 0.02 ** 1.6, rel=1e-6)
    assert noise_adaptive_lam(0.02, 2.0) > noise_adaptive_lam(0.04, 2.0)  # noisier: trust the photo less
    assert noise_adaptive_lam(0.02, 3.0) > noise_adaptive_lam(0.02, 1.0)
    assert LAM_MAX == 3000
    assert noise_adaptive_lam(0.0, 2.0) == LAM_MAX  # 8-bit quantisation is the floor, then the cap
    assert noise_adaptive_lam(1.0, 1.0) == LAM_MIN
    assert noise_adaptive_lam(0.01, 2.0, jpeg=True) == JPEG_LAM == 300


def test_noise_adaptive_deblur_beats_the_fixed_default_on_a_clean_photo(shared_data):
    """A natural photo (BSDS500 test, not the set the rule was fitted on), sigma 2 blur, 0.5 %
    noise, 8-bit: the measured noise asks for lam 3000 (the cap) instead of 300."""
    import cv2

    from defocus_cli.io.images import read_image
    from defocus_cli.ops.metrics import psnr
    from defocus_cli.pipelines.deblur import measure_noise

    rng = np.random.default_rng(0)
    sharp = read_image(shared_data / "sharp" / "BSDS500" / "test" / "10081.jpg").pixels[:192, :256]
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT)
    y = (np.round(np.clip(blurred + rng.normal(0, 0.005, blurred.shape), 0, 1) * 255) / 255).astype(np.float32)
    m = measure_noise(y)
    assert not m["jpeg"] and m["noise"] == pytest.approx(0.005 * 0.668, rel=0.1)
    sigma = np.full(y.shape[:2], 2.0, np.float32)
    fixed = deblur(y, sigma, DeblurConfig()).image
    adaptive = deblur(y, sigma, DeblurConfig(noise=m["noise"])).image
    assert psnr(adaptive, sharp) > psnr(fixed, sharp) + 1.0
