"""The edge-based estimator's dense step, its fusion with network B, fallbacks and units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defocus_cli.models.edge import EdgeNetConfig, EdgeNets
from defocus_cli.pipelines.edge_estimate import EdgeConfig, EdgePoints, estimate_edges
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
