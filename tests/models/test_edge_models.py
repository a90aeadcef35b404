"""The edge networks of paper 002 (models.edge) and the edge detector (ops.edges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defocus_cli.models.edge import HALF, PATCH, EdgeNetConfig, EdgeNets, soft_targets
from defocus_cli.ops.edges import detect_edges, edge_points


@pytest.fixture(scope="module")
def nets() -> EdgeNets:
    torch.manual_seed(0)
    return EdgeNets(EdgeNetConfig(channels=8, hidden=32, features=16, classifier=(24, 12))).eval()


def test_dense_form_equals_patch_form(nets):
    """The efficient form: trunks once over the photo, heads at points == patches one by one."""
    img = torch.rand(1, 3, 70, 90)
    ys, xs = torch.tensor([HALF, 35, 49, 30]), torch.tensor([HALF, 44, 69, 60])
    with torch.no_grad():
        p_depth, sigma = nets.at_points(nets.dense(img), ys, xs)
        patches = torch.stack([img[0, :, y - HALF:y + HALF + 1, x - HALF:x + HALF + 1] for y, x in zip(ys, xs)])
        blur, edge = nets(patches)
    assert patches.shape[-2:] == (PATCH, PATCH)
    torch.testing.assert_close(sigma, nets.sigma_of(blur), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_depth, edge.softmax(1)[:, 1], atol=1e-5, rtol=1e-5)


def test_blur_is_measured_only_at_pattern_edges(nets):
    img = torch.rand(1, 3, 60, 60)
    ys, xs = torch.arange(10, 50, 3), torch.arange(10, 50, 3)
    with torch.no_grad():
        feats = nets.dense(img)
        p_all, s_all = nets.at_points(feats, ys, xs)
        threshold = float(p_all.median())
        p, s = nets.at_points(feats, ys, xs, depth_threshold=threshold)
    torch.testing.assert_close(p, p_all)
    pattern = p < threshold
    assert 0 < int(pattern.sum()) < len(p)
    assert torch.isnan(s[~pattern]).all()
    torch.testing.assert_close(s[pattern], s_all[pattern])


def test_points_near_the_border_are_answered(nets):
    img = torch.rand(1, 3, 30, 40)
    with torch.no_grad():
        p, sigma = nets.at_points(nets.dense(img), torch.tensor([0, 29]), torch.tensor([0, 39]))
    assert sigma.shape == (2,) and torch.isfinite(sigma).all() and ((p >= 0) & (p <= 1)).all()


def test_brightness_and_contrast_change_only_the_magnitude_feature(nets):
    """Zero-sum first kernels and bias-free trunks: the normalised features do not move."""
    x = torch.rand(5, 3, PATCH, PATCH)
    idx = nets._centre(x)
    v = nets.f1_vector(nets.f1(x), *idx)
    w = nets.f1_vector(nets.f1(0.4 * x + 0.3), *idx)
    torch.testing.assert_close(v[:, :-1], w[:, :-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w[:, -1] - v[:, -1], torch.full((5,), float(np.log(0.4))), atol=1e-3, rtol=0)


def test_soft_targets_interpolate_between_levels():
    cfg = EdgeNetConfig()
    t = soft_targets(torch.tensor([0.0, 1.1, 6.0, 9.0]), cfg)
    assert t.shape == (4, cfg.levels) and cfg.levels == 25
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    levels = torch.arange(cfg.levels) * cfg.sigma_step
    # the expectation of the target is the sigma itself (clipped to sigma_max)
    torch.testing.assert_close((t * levels).sum(1), torch.tensor([0.0, 1.1, 6.0, 6.0]))
    assert t[1, 4] == pytest.approx(0.6) and t[1, 5] == pytest.approx(0.4)


def test_config_round_trip_and_validation():
    cfg = EdgeNetConfig(channels=12)
    assert EdgeNetConfig.from_dict(cfg.to_dict()) == cfg
    assert EdgeNetConfig(classifier=[300, 150]) == EdgeNetConfig()
    with pytest.raises(ValueError, match="sigma_step"):
        EdgeNetConfig(sigma_step=0)


def _step_image(blur: float, size: int = 96) -> np.ndarray:
    import cv2

    img = np.zeros((size, size, 3), np.float32)
    img[:, size // 2:] = 0.8
    return cv2.GaussianBlur(img, (0, 0), blur) if blur > 0 else img


@pytest.mark.parametrize("blur", [0.0, 2.0, 6.0])
def test_detector_finds_sharp_and_strongly_blurred_edges(blur):
    edges = detect_edges(_step_image(blur))
    cols = np.nonzero(edges[20:-20].any(axis=0))[0]
    assert len(cols) >= 1 and np.all(np.abs(cols - 48) <= 2), cols
    assert edges[20:-20].any(axis=1).all()  # the whole edge line


def test_detector_ignores_a_flat_photo_and_mild_noise():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 0.5, np.float32) + rng.normal(0, 0.004, (64, 64, 3)).astype(np.float32)
    assert detect_edges(flat).sum() == 0


def test_edge_points_border_and_cap():
    edges = np.zeros((50, 50), bool)
    edges[:, 25] = True
    ys, xs = edge_points(edges, border=10)
    assert ys.min() >= 10 and ys.max() < 40 and set(xs.tolist()) == {25}
    ys2, _ = edge_points(edges, max_points=7, seed=1)
    assert len(ys2) == 7 and np.all(np.diff(ys2) > 0)
    assert np.array_equal(edge_points(edges, max_points=7, seed=1)[0], ys2)
