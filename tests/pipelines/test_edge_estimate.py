"""The edge-based estimator's dense step, its fusion with network B, fallbacks and units."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from defocus_cli.models.edge import HALF, EdgeNetConfig, EdgeNets
from defocus_cli.pipelines.edge_estimate import (
    EdgeConfig,
    EdgePoints,
    estimate_edges,
    fine_pass,
    local_correction,
    photo_patches,
    prepare_propagation,
)
from defocus_cli.pipelines.estimate import EstimateResult

H, W = 96, 128


@pytest.fixture(scope="module")
def nets() -> EdgeNets:
    torch.manual_seed(0)
    return EdgeNets(EdgeNetConfig(channels=4, hidden=16, features=8, classifier=(16, 8))).eval()


def _photo() -> np.ndarray:
    """Two differently textured halves (the guide has an edge between them, and texture)."""
    rng = np.random.default_rng(0)
    img = np.empty((H, W, 3), np.float32)
    img[:, : W // 2] = 0.3 + 0.05 * rng.random((H, W // 2, 3))
    img[:, W // 2:] = 0.6 + 0.05 * rng.random((H, W - W // 2, 3))
    return img


def _points(left: float, right: float, with_depth: bool, scale: float = 1.0, shape=(H, W)) -> EdgePoints:
    h, w = shape
    ys, xs = np.mgrid[4:h - 4:6, 4:w - 4:6]
    ys, xs = ys.ravel(), xs.ravel()
    far = np.abs(xs - w // 2) > 8
    ys, xs = ys[far], xs[far]
    sigma = np.where(xs < w // 2, left, right).astype(np.float32)
    p = np.zeros(len(ys), np.float32)
    if with_depth:  # a column of depth-edge points on the boundary
        by = np.arange(0, h, 2)
        ys = np.concatenate([ys, by])
        xs = np.concatenate([xs, np.full(len(by), w // 2)])
        sigma = np.concatenate([sigma, np.full(len(by), np.nan, np.float32)])
        p = np.concatenate([p, np.ones(len(by), np.float32)])
    return EdgePoints(ys, xs, sigma, p, (h, w), scale)


def _base(value: float, shape=(H, W)) -> EstimateResult:
    return EstimateResult(np.full(shape, value, np.float32), 1.0, (shape[1], shape[0]))


def test_depth_edges_stop_propagation(nets):
    rgb = _photo()
    cfg = EdgeConfig(fusion="edge", working_size=0, psi=1000.0, grid_size=W)
    out = estimate_edges(rgb, nets, cfg, points=_points(1.0, 4.0, with_depth=True)).sigma
    assert out.shape == (H, W) and np.isfinite(out).all()
    left, right = out[:, : W // 2 - 3], out[:, W // 2 + 3:]
    assert np.abs(left - 1.0).max() < 0.1 and np.abs(right - 4.0).max() < 0.1
    free = estimate_edges(rgb, nets, EdgeConfig(fusion="edge", working_size=0, psi=0.0, sigma_r=1000.0,
                                                grid_size=W), points=_points(1.0, 4.0, with_depth=True)).sigma
    # without the penalty (and with a guide that barely counts) the halves mix near the boundary
    assert np.abs(free[:, W // 2 - 3] - 1.0).mean() > 2 * np.abs(out[:, W // 2 - 3] - 1.0).mean()


def test_units_follow_the_working_scale(nets):
    """Sigma measured at half resolution is twice as large in the photo's pixels."""
    rgb = _photo()
    pts = _points(1.0, 1.0, with_depth=False, scale=0.5, shape=(H // 2, W // 2))
    out = estimate_edges(rgb, nets, EdgeConfig(fusion="edge", working_size=W // 2, min_points=10), points=pts).sigma
    assert out.shape == (H, W)
    np.testing.assert_allclose(np.median(out), 2.0, atol=0.05)


def test_fusion_pulls_network_b_toward_the_edges(nets):
    rgb = _photo()
    pts = _points(1.0, 1.0, with_depth=False)
    cfg = EdgeConfig(fusion="residual", working_size=0, fuse_k=1e-4, grid_size=W)
    fused = estimate_edges(rgb, nets, cfg, base=_base(3.0), points=pts).sigma
    assert np.abs(np.median(fused) - 1.0) < 0.1
    # a large fuse_k trusts network B
    kept = estimate_edges(rgb, nets, EdgeConfig(fusion="residual", working_size=0, fuse_k=1e6),
                          base=_base(3.0), points=pts).sigma
    np.testing.assert_allclose(kept, 3.0, atol=0.01)
    assert (fused >= 0).all()


def test_blend_weights_the_edge_map_and_network_b(nets):
    rgb = _photo()
    pts = _points(1.0, 1.0, with_depth=False)
    cfg = EdgeConfig(fusion="blend", blend=0.2, working_size=0, grid_size=W)
    out = estimate_edges(rgb, nets, cfg, base=_base(3.0), points=pts).sigma
    np.testing.assert_allclose(out, 0.8 * 1.0 + 0.2 * 3.0, atol=0.02)
    with pytest.raises(ValueError, match="fusion must be one of"):
        EdgeConfig(fusion="mean")


def test_too_few_edges_falls_back_to_network_b(nets):
    flat = np.full((H, W, 3), 0.5, np.float32)
    calls = []

    def fallback():
        calls.append(1)
        return _base(2.5)

    r = estimate_edges(flat, nets, EdgeConfig(fusion="edge"), fallback=fallback)
    assert calls == [1] and "fallback" in r.info and "pattern-edge points" in r.info["fallback"]
    np.testing.assert_array_equal(r.sigma, 2.5)
    assert r.info["edge_points"] == 0
    with pytest.raises(ValueError, match="fallback"):
        estimate_edges(flat, nets, EdgeConfig(fusion="edge"))


def test_the_whole_pipeline_runs_on_a_photo_with_edges(nets):
    rng = np.random.default_rng(1)
    rgb = np.kron(rng.random((12, 16, 3)), np.ones((8, 8, 1))).astype(np.float32)
    r = estimate_edges(rgb, nets, EdgeConfig(fusion="edge", depth_threshold=1.01, working_size=0),
                       fallback=lambda: _base(9.0))
    assert r.info["edge_points"] > 100 and "fallback" not in r.info
    assert r.sigma.shape == (96, 128) and np.isfinite(r.sigma).all() and (r.sigma >= 0).all()
    assert r.sigma.max() <= 6.0 + 1e-3  # B-NET's largest level, at scale 1


# -- the full-resolution pass -------------------------------------------------------------------


def test_photo_patches_replicate_the_border():
    rgb = np.random.default_rng(1).random((30, 50, 3)).astype(np.float32)
    ys, xs = np.array([0, 15, 29]), np.array([0, 25, 49])
    got = photo_patches(rgb, ys, xs)
    padded = np.pad(rgb, ((HALF, HALF), (HALF, HALF), (0, 0)), mode="edge")
    assert got.shape == (3, 2 * HALF + 1, 2 * HALF + 1, 3)
    for i, (y, x) in enumerate(zip(ys, xs)):
        assert np.array_equal(got[i], padded[y:y + 2 * HALF + 1, x:x + 2 * HALF + 1])


def _big_points(scale: float, n: int = 400) -> tuple[np.ndarray, EdgePoints]:
    rng = np.random.default_rng(2)
    h, w = 60, 90  # the working image
    rgb = rng.random((round(h / scale), round(w / scale), 3)).astype(np.float32)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    sigma = rng.uniform(0.0, 1.0, n).astype(np.float32) * np.float32(scale * 3)  # 0-3 px of the photo
    p_depth = np.where(np.arange(n) % 10 == 0, 0.99, 0.01).astype(np.float32)
    return rgb, EdgePoints(ys, xs, sigma, p_depth, (h, w), scale)


def test_fine_pass_measures_sharp_pattern_points_on_the_photo(nets):
    scale = 0.25
    rgb, pts = _big_points(scale)
    cfg = EdgeConfig(fine_points=50, fine_below=1.5)
    out, measured = fine_pass(rgb, pts, nets, cfg)
    photo_px = pts.sigma / scale
    candidates = pts.pattern(cfg.depth_threshold) & (photo_px < 1.5)
    assert measured.sum() == 50 and not (measured & ~candidates).any()
    # the measured points hold B-NET's estimate on the full-resolution patch, in working px
    idx = np.flatnonzero(measured)
    ys = np.round((pts.ys[idx] + 0.5) / scale - 0.5).astype(np.int64)
    xs = np.round((pts.xs[idx] + 0.5) / scale - 0.5).astype(np.int64)
    with torch.inference_mode():
        patches = torch.from_numpy(photo_patches(rgb, ys, xs)).permute(0, 3, 1, 2)
        direct = nets.sigma_of(nets.forward_blur(patches))
    np.testing.assert_allclose(out.sigma[idx], direct.numpy() * scale, rtol=1e-4, atol=1e-6)
    # the other candidates lie on the line fitted to the measured ones; the rest are untouched
    others = candidates & ~measured
    slope, offset = np.polyfit(photo_px[idx], direct.numpy(), 1)
    np.testing.assert_allclose(out.sigma[others] / scale, np.maximum(offset + slope * photo_px[others], 0),
                               rtol=1e-4, atol=1e-5)
    assert np.array_equal(out.sigma[~candidates], pts.sigma[~candidates])
    # photos near the working size, and fine_points=0, skip the pass
    near_size = EdgePoints(pts.ys, pts.xs, pts.sigma, pts.p_depth, pts.shape, 0.6)
    for skipped in (fine_pass(rgb, near_size, nets, cfg),
                    fine_pass(rgb, pts, nets, EdgeConfig(fine_points=0))):
        assert not skipped[1].any()


def test_local_correction_follows_measurements_and_stays_local(nets):
    rgb = _photo()
    pts = _points(1.0, 4.0, with_depth=True)
    # grid cells of 4 px: a measurement every 6 px is a density of ~0.4 per cell, support >> fine_k
    cfg = EdgeConfig(fusion="edge", working_size=0, psi=1000.0, grid_size=W // 4, fine_reach=6.0,
                     fine_k=0.001)
    prop = prepare_propagation(rgb, pts, cfg)
    flat = np.full((H, W), 2.0, np.float32)
    sharp = pts.subset((pts.xs < W // 2 - 8) & (pts.p_depth < 0.5))
    sharp.sigma[:] = 0.5
    out = local_correction(flat.copy(), sharp, prop, cfg)
    assert np.abs(out[:, : W // 2 - 8] - 0.5).max() < 0.05  # where the measurements are
    assert np.abs(out[:, W // 2 + 8:] - 2.0).max() < 0.05  # across the depth edge: unchanged
    assert (out >= 0).all()


def test_the_full_resolution_pass_reads_an_in_focus_half_sharp():
    """Shipped weights on a 2600 px photo, left half in focus, right half blurred (sigma 4 px):
    at the 1024 px working size the sharp half cannot read below ~0.7 px; measured at full
    resolution it does, and the blurred half stays blurred.
    Measured: sharp half median 0.17 px with the pass, 1.01 px without; blurred half 3.87 both."""
    import cv2

    from defocus_cli.estimator import load_estimator

    rng = np.random.default_rng(3)
    h, w = 1700, 2600
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)  # hard-edged blocks
    tex = np.clip(0.15 + 0.7 * tex, 0, 1)
    rgb = tex.copy()
    rgb[:, w // 2:] = cv2.GaussianBlur(tex, (0, 0), 4.0)[:, w // 2:]
    est = load_estimator("fused", device="cpu", precision="fp32")
    with_pass = est.estimate(rgb)
    assert with_pass.info["full_res_points"] == est.config.fine_points
    est.config = replace(est.config, fine_points=0)
    without = est.estimate(rgb)
    assert without.info["full_res_points"] == 0
    sl, bl = np.s_[100:-100, 100:w // 2 - 200], np.s_[100:-100, w // 2 + 200:-100]
    assert np.median(with_pass.sigma[sl]) < 0.5 and np.median(without.sigma[sl]) > 0.8
    assert np.median(with_pass.sigma[bl]) > 3.0
