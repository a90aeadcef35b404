"""Properties of the layered renderer (paper Sec. 3.3) and its agreement with the reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defocus_cli.ops import layered
from defocus_cli.ops.layered import (
    Layers,
    layers_from_depth,
    layers_from_key,
    layers_from_sigma,
    layers_from_signed_sigma,
    render_layers,
    render_layers_reference,
    signed_sigma_from_depth,
)
from defocus_cli.ops.thinlens import alpha_upper_bound

#: fast renderer vs reference, [0, 1] images: the accuracy the module documents and
#: benchmarks/bench_synth.py measures on real scenes (pyramid interpolation + group compositing)
FAST_MAX_ERROR = 6.0 / 255
FAST_MEAN_ERROR = 0.25 / 255


def _scipy_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Oracle Gaussian blur, independent of OpenCV: scipy.ndimage per channel, mirrored borders
    (= OpenCV's default BORDER_REFLECT_101) and OpenCV's float32 radius of round(4 sigma)."""
    from scipy import ndimage

    img = np.asarray(img, np.float64)
    r = round(4 * sigma)
    sig = (sigma, sigma) + (0.0,) * (img.ndim - 2)
    return ndimage.gaussian_filter(img, sig, mode="mirror", radius=(r, r) + (0,) * (img.ndim - 2))


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-plus-fine random colour texture in [0, 1] (edges at every scale)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for scale, weight in ((1, 0.4), (4, 0.3), (16, 0.3)):
        small = rng.random((h // scale + 2, w // scale + 2, 3)).astype(np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return np.clip(out, 0, 1)


def _scene(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A slanted floor behind occluding discs and boxes, with exact depth (metres)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    depth = np.broadcast_to(6.0 - 4.0 * yy, (h, w)).copy()
    for _ in range(6):
        z = float(rng.uniform(0.8, 5.0))
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = int(rng.integers(8, 30))
        shape = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:
            cv2.circle(shape, (int(cx), int(cy)), r, 1, -1)
        else:
            cv2.rectangle(shape, (int(cx - r), int(cy - r // 2)), (int(cx + r), int(cy + r // 2)), 1, -1)
        depth = np.where((shape > 0) & (depth > z), np.float32(z), depth)
    return _texture(h, w, seed), depth.astype(np.float32)


def _thin_lens_layers(depth: np.ndarray, focus_quantile: float) -> Layers:
    lo, hi = float(depth.min()), float(depth.max())
    s1 = lo + (hi - lo) * focus_quantile
    return layers_from_depth(depth, s1, alpha_upper_bound(lo, hi, s1))


def test_constant_image_stays_constant():
    rgb, depth = _scene()
    const = np.full_like(rgb, 0.3)
    const[..., 1] = 0.7
    for q in (0.0, 0.5, 1.0):
        out = render_layers(const, _thin_lens_layers(depth, q))
        assert np.abs(out - const).max() < 1e-5


def test_alpha_zero_is_identity():
    rgb, depth = _scene()
    lay = layers_from_depth(depth, float(np.median(depth)), 0.0)
    assert lay.count == 1 and lay.sigmas[0] == 0
    assert np.array_equal(render_layers(rgb, lay), rgb)
    assert np.array_equal(render_layers_reference(rgb, lay), rgb)


@pytest.mark.parametrize("sigma", [0.8, 3.0, 6.5])
def test_single_depth_is_plain_gaussian_blur(sigma):
    rgb = _texture(96, 128, seed=3)
    depth = np.full((96, 128), 2.0, np.float32)
    # c = alpha * |x - S1| / x with x = 2, S1 = 1: c = alpha / 2, sigma = alpha / 8
    lay = layers_from_depth(depth, 1.0, 8.0 * sigma)
    assert lay.count == 1 and abs(lay.sigmas[0] - sigma) < 1e-5
    plain = _scipy_blur(rgb, sigma)
    # the reference is exactly one Gaussian blur (1e-5: float32 rounding of the sums)
    assert np.abs(render_layers_reference(rgb, lay) - plain).max() < 1e-5
    # borders included: the renderer mirrors at the image border; the pyramid is documented
    # within 1/255 of a plain Gaussian blur at every pixel
    assert np.abs(render_layers(rgb, lay) - plain).max() < 1.0 / 255


def test_two_layers_composite_like_the_over_operator_by_hand():
    """Oracle for the compositing: a sharp far layer under a near layer blurred by 3 px.
    Premultiplied 'over' then division by alpha (module docstring), with scipy's blur:
    out = (G(rgb m) + (1 - G(m)) rgb (1 - m)) / (G(m) + (1 - G(m)) (1 - m))."""
    h, w, sigma = 60, 80, 3.0
    rgb = _texture(h, w, seed=8)
    near = np.zeros((h, w), bool)
    near[15:40, 20:50] = True
    lay = Layers(labels=near.astype(np.int32), sigmas=np.array([0.0, sigma], np.float32))
    m = near.astype(np.float64)
    a = _scipy_blur(m, sigma)
    colour = _scipy_blur(rgb * m[..., None], sigma) + ((1 - a) * (1 - m))[..., None] * rgb
    expected = colour / (a + (1 - a) * (1 - m))[..., None]
    # the near layer's soft edge really mixes in: not just a copy of either layer
    assert np.abs(expected - rgb).max() > 0.1
    np.testing.assert_allclose(render_layers_reference(rgb, lay), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(render_layers(rgb, lay), expected, rtol=0, atol=FAST_MAX_ERROR)


def test_sharp_near_object_keeps_a_sharp_silhouette():
    h, w = 100, 100
    background = _texture(h, w, seed=5)
    background[..., 0] = 0.0  # no red behind, so any red outside the object is a halo
    rgb = background.copy()
    obj = np.zeros((h, w), bool)
    obj[30:70, 35:65] = True
    rgb[obj] = (1.0, 0.0, 0.0)
    depth = np.where(obj, 1.0, 5.0).astype(np.float32)
    lay = layers_from_depth(depth, 1.0, 40.0)  # far plane: sigma = 40 * 0.8 / 4 = 8 px
    for out in (render_layers(rgb, lay), render_layers_reference(rgb, lay)):
        assert np.array_equal(out[obj], rgb[obj])  # the object is untouched, edge pixels too
        ring = cv2.dilate(obj.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~obj
        assert out[ring, 0].max() < 1e-6  # nothing of the object leaks onto the background
        assert np.abs(out[~obj] - background[~obj]).mean() > 0.01  # and the background is blurred


def test_blurred_near_object_spreads_over_sharp_background():
    h, w = 100, 100
    rgb = _texture(h, w, seed=6)
    obj = np.zeros((h, w), bool)
    obj[30:70, 35:65] = True
    rgb[obj] = (1.0, 0.0, 0.0)
    depth = np.where(obj, 1.0, 5.0).astype(np.float32)
    lay = layers_from_depth(depth, 5.0, 5.0)  # near object: sigma = 5 * 4 / 4 = 5 px
    out = render_layers(rgb, lay)
    assert np.array_equal(out[:10, :10], rgb[:10, :10])  # far background in focus stays sharp
    # just outside the silhouette the blurred object partly covers the background
    assert out[50, 33, 0] > rgb[50, 33, 0] + 0.1


def test_layer_count_never_exceeds_the_limit():
    rng = np.random.default_rng(1)
    # uniform in inverse depth, i.e. uniform in blur: every one of the 350 bins gets pixels
    depth = (1.0 / rng.uniform(1 / 50.0, 1 / 0.5, (64, 64))).astype(np.float32)
    lay = layers_from_depth(depth, 0.5, alpha_upper_bound(0.5, 50.0, 0.5))
    assert lay.count <= 350  # the paper's limit (Sec. 3.3)
    assert lay.count > 300  # every distinct value is available: the limit is what binds
    lay = layers_from_depth(depth, 0.5, alpha_upper_bound(0.5, 50.0, 0.5), max_layers=40)
    assert lay.count <= 40
    assert lay.labels.min() == 0 and lay.labels.max() == lay.count - 1


def test_layers_are_ordered_far_to_near():
    depth = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    lay = layers_from_depth(depth, 2.5, 10.0)
    assert list(lay.labels[0]) == [3, 2, 1, 0]  # 0 = farthest, composited first
    sig = signed_sigma_from_depth(depth, 2.5, 10.0)
    np.testing.assert_allclose(np.abs(sig[0]), 10.0 * np.abs(depth[0] - 2.5) / depth[0] / 4, rtol=1e-6)
    np.testing.assert_allclose(lay.sigma_map(), np.abs(sig), atol=1e-6)


def test_layers_from_sigma_orders_by_focus_side():
    sigma = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    near = layers_from_sigma(sigma, "near")  # focus near: larger blur = farther = drawn first
    far = layers_from_sigma(sigma, "far")
    assert near.labels[0, 3] < near.labels[0, 1]
    assert far.labels[0, 3] > far.labels[0, 1]
    with pytest.raises(ValueError, match="near"):
        layers_from_sigma(sigma, "middle")


def test_sharp_layers_are_merged():
    depth = np.array([[1.0, 1.001, 1.002, 3.0]], np.float32)
    lay = layers_from_key(np.array([[0.0, 0.05, 0.1, 2.0]], np.float32), depth)
    assert lay.count == 2 and lay.sigmas[1] == 0.0


@pytest.mark.parametrize("focus_quantile", [0.0, 0.4, 1.0])
def test_fast_render_matches_reference(focus_quantile):
    rgb, depth = _scene(h=120, w=160, seed=2)
    lay = _thin_lens_layers(depth, focus_quantile)
    assert lay.sigmas.max() > 6.9  # the scene reaches c_max, so several pyramid levels are used
    fast = render_layers(rgb, lay)
    ref = render_layers_reference(rgb, lay)
    err = np.abs(fast - ref)
    assert err.max() < FAST_MAX_ERROR
    assert err.mean() < FAST_MEAN_ERROR
    assert fast.dtype == np.float32 and fast.shape == rgb.shape


def test_huge_blur_on_a_tiny_image():
    rgb = _texture(9, 13, seed=4)
    lay = Layers(labels=np.zeros((9, 13), np.int32), sigmas=np.array([40.0], np.float32))
    out = render_layers(rgb, lay)
    assert np.isfinite(out).all()
    # a blur far wider than the image tends to the mean colour
    assert np.abs(out - rgb.reshape(-1, 3).mean(0)).max() < 0.1


def test_input_checks_name_expected_and_actual():
    rgb, depth = _scene(40, 40)
    lay = _thin_lens_layers(depth, 0.5)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        render_layers(rgb[..., :2], lay)
    with pytest.raises(ValueError, match="float32"):
        render_layers(rgb.astype(np.float64), lay)
    with pytest.raises(ValueError, match="does not match"):
        render_layers(rgb[:30], lay)
    with pytest.raises(ValueError, match="finite"):
        layers_from_signed_sigma(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="> 0"):
        signed_sigma_from_depth(np.zeros((4, 4), np.float32), 1.0, 1.0)


def test_pyramid_level_budget():
    # the variance of down + residual + up equals sigma^2 at the chosen level, and the level is
    # the deepest whose residual stays >= beta (0.7, the module's default, at most 10 levels)
    beta = 0.7

    def residual_at(k, sigma):
        return np.sqrt(max(sigma**2 - 2 * (4**k - 1) / 3, 0.0)) / 2**k

    for sigma in (0.5, 2.5, 7.0, 60.0):
        k, residual = layered._pyramid_level(sigma, beta, 10)
        total = 2 * (4**k - 1) / 3 + residual**2 * 4**k
        assert abs(total - sigma**2) < 1e-6 * sigma**2
        assert k == 0 or residual >= beta
        assert residual_at(k + 1, sigma) < beta  # one level deeper would be too coarse
    # by hand, e.g. sigma 7: level 2 leaves 49 - 10 = 39 >= (0.7 * 4)^2, level 3 leaves 7 < (0.7 * 8)^2
    assert [layered._pyramid_level(s, beta, 10)[0] for s in (0.5, 2.5, 7.0, 60.0)] == [0, 1, 2, 5]


def test_over_writes_through_a_view():
    rng = np.random.default_rng(0)
    acc = rng.random((20, 30, 4)).astype(np.float32)
    src = rng.random((8, 9, 4)).astype(np.float32)
    expected = acc.copy()
    expected[5:13, 7:16] = src + (1 - src[..., 3:]) * expected[5:13, 7:16]
    layered._over(acc[5:13, 7:16], src)
    np.testing.assert_allclose(acc, expected, rtol=1e-6)


def test_scattered_layers_are_split_into_parts():
    # a layer made of two far-apart specks is processed on two small windows, not its bbox
    labels = np.zeros((200, 200), np.int32)
    labels[10, 10] = labels[190, 190] = 1
    presence = layered._Presence(labels, 2)
    windows = presence.pieces(1, reach=6.0, align=1)
    assert len(windows) == 2
    assert all((w[1] - w[0]) * (w[3] - w[2]) * 64 < 40 * 40 for _, w in windows)
    rgb = _texture(200, 200)
    lay = Layers(labels=labels, sigmas=np.array([0.0, 1.5], np.float32))
    np.testing.assert_allclose(render_layers(rgb, lay), render_layers_reference(rgb, lay), atol=1e-6)


def test_hugging_blocks_own_each_tile_once():
    # two short stems over a wide bar: the bar joins the first stem's box, which then covers the
    # second stem's tiles; ownership keeps those with the second box
    grid = np.zeros((3, 8), np.uint8)
    grid[0, 0:2] = grid[0, 5:7] = 1
    grid[1, 0:7] = 1
    boxes, owner = layered._run_blocks(grid, 1)
    assert len(boxes) == 2 and boxes[0] == (0, 2, 0, 7)
    assert (owner[0, 5:7] == 1).all() and (owner[1, 0:7] == 0).all() and (owner[grid == 0] == -1).all()


def test_scattered_layer_at_a_coarse_level_is_counted_once():
    # speckle and thin curves of one strongly blurred layer: reduced in many hugging blocks with
    # overlapping boxes; every pixel must still be taken once
    rng = np.random.default_rng(5)
    labels = (rng.random((200, 240)) < 0.03).astype(np.int32)
    labels[100:104, 20:220] = 1
    labels[30:180, 118:121] = 1
    rgb = _texture(200, 240, seed=7)
    lay = Layers(labels=labels, sigmas=np.array([0.0, 12.0], np.float32))
    fast, ref = render_layers(rgb, lay), render_layers_reference(rgb, lay)
    assert np.abs(fast - ref).max() < FAST_MAX_ERROR
    assert np.abs(fast - ref).mean() < FAST_MEAN_ERROR
