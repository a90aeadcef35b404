from __future__ import annotations

import math

import numpy as np
import pytest

from defocus_cli.ops.domain_transform import domain_transform_rf, propagate_sparse, simplify_image


def reference_rf(src, guide, sigma_s, sigma_r, penalty=None, iterations=3):
    """The RF recursion written out pixel by pixel in float64 (slow; small images only)."""
    out = np.array(src, np.float64)
    out = out[..., None] if out.ndim == 2 else out
    g = np.array(guide, np.float64)
    g = g[..., None] if g.ndim == 2 else g
    h, w = out.shape[:2]
    psi = np.zeros((h, w)) if penalty is None else np.asarray(penalty, np.float64)

    def dist(p, q):
        # the link p -> q costs the max of the two penalties (the module's documented rule)
        return 1.0 + max(psi[p], psi[q]) + sigma_s / sigma_r * float(np.abs(g[q] - g[p]).sum())

    n = iterations
    for i in range(1, n + 1):
        a = math.exp(-math.sqrt(2.0) / (sigma_s * math.sqrt(3.0) * 2.0 ** (n - i) / math.sqrt(4.0**n - 1)))
        for y in range(h):
            for x in range(1, w):
                out[y, x] += a ** dist((y, x - 1), (y, x)) * (out[y, x - 1] - out[y, x])
            for x in range(w - 2, -1, -1):
                out[y, x] += a ** dist((y, x), (y, x + 1)) * (out[y, x + 1] - out[y, x])
        for x in range(w):
            for y in range(1, h):
                out[y, x] += a ** dist((y - 1, x), (y, x)) * (out[y - 1, x] - out[y, x])
            for y in range(h - 2, -1, -1):
                out[y, x] += a ** dist((y, x), (y + 1, x)) * (out[y + 1, x] - out[y, x])
    return out.reshape(np.shape(src))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_matches_reference_gray_guide(rng):
    src = rng.random((12, 9, 2), dtype=np.float32)
    guide = rng.random((12, 9), dtype=np.float32)
    out = domain_transform_rf(src, guide, 3.0, 0.4)
    assert out.dtype == np.float32 and out.shape == src.shape
    np.testing.assert_allclose(out, reference_rf(src, guide, 3.0, 0.4), atol=1e-5, rtol=0)
    # the filter did something: the reference is not the identity here
    assert np.abs(out - src).max() > 0.05


@pytest.mark.parametrize("iterations", [1, 3, 4])
def test_matches_reference_with_penalty_and_color_guide(rng, iterations):
    src = rng.random((12, 9), dtype=np.float32)
    guide = rng.random((12, 9, 3), dtype=np.float32)
    penalty = np.where(rng.random((12, 9)) < 0.2, 2.0, 0.0).astype(np.float32)
    penalty[5, 4] = 0.5
    out = domain_transform_rf(src, guide, 6.0, 2.0, penalty=penalty, iterations=iterations)
    assert out.shape == src.shape
    expected = reference_rf(src, guide, 6.0, 2.0, penalty, iterations)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # the penalty matters at this tolerance (the comparison would catch a wrong penalty rule)
    assert np.abs(expected - reference_rf(src, guide, 6.0, 2.0, None, iterations)).max() > 1e-3


@pytest.mark.parametrize(("shape", "channels"), [((1, 9), 3), ((12, 1), 2), ((1, 1), 1), ((5, 6, 5), 6)])
def test_matches_reference_thin_images_and_many_channels(rng, shape, channels):
    src = rng.random(shape[:2] + (channels,), dtype=np.float32)
    guide = rng.random(shape, dtype=np.float32)
    penalty = np.where(rng.random(shape[:2]) < 0.3, np.inf, 0.0).astype(np.float32)
    out = domain_transform_rf(src, guide, 4.0, 0.5, penalty=penalty)
    np.testing.assert_allclose(out, reference_rf(src, guide, 4.0, 0.5, penalty), atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_penalty", [False, True])
def test_constant_stays_constant(rng, with_penalty):
    guide = rng.random((20, 17, 3), dtype=np.float32)
    penalty = None
    if with_penalty:
        penalty = (rng.random((20, 17)) * 100).astype(np.float32)
        penalty[:, 8] = np.inf
    src = np.full((20, 17, 2), 0.37, np.float32)
    out = domain_transform_rf(src, guide, 5.0, 0.1, penalty=penalty)
    np.testing.assert_allclose(out, 0.37, atol=1e-6, rtol=0)


def test_flat_guide_smooths_noise_and_keeps_the_mean(rng):
    src = (0.5 + 0.1 * rng.standard_normal((64, 64))).astype(np.float32)
    out = domain_transform_rf(src, np.zeros((64, 64), np.float32), 4.0, 0.5)
    assert abs(float(out.mean()) - float(src.mean())) < 0.005
    assert out.var() < src.var() / 20


def test_guide_edge_keeps_a_step_sharp():
    src = np.zeros((16, 24), np.float32)
    src[:, 12:] = 1.0
    edge_guide = src.copy()
    sharp = domain_transform_rf(src, edge_guide, 8.0, 0.1)
    blurred = domain_transform_rf(src, np.zeros_like(src), 8.0, 0.1)
    jump_sharp = float((sharp[:, 12] - sharp[:, 11]).min())
    jump_blurred = float((blurred[:, 12] - blurred[:, 11]).max())
    assert jump_sharp > 0.99
    assert jump_blurred < 0.3


def _two_sided_data(h=40, w=41):
    values = np.zeros((h, w), np.float32)
    weights = np.zeros((h, w), np.float32)
    for y in (5, 20, 35):
        values[y, 2], weights[y, 2] = 1.0, 1.0
        values[y, w - 3], weights[y, w - 3] = 5.0, 1.0
    return values, weights


def test_penalty_line_is_a_barrier_for_propagation():
    values, weights = _two_sided_data()
    guide = np.full(values.shape, 0.5, np.float32)
    penalty = np.zeros(values.shape, np.float32)
    penalty[:, 20] = 1000.0
    dense, support = propagate_sparse(values, weights, guide, 20.0, 0.5, penalty=penalty)
    assert dense.dtype == np.float32 and dense.shape == values.shape
    assert np.isfinite(dense).all() and support.shape == values.shape
    # far from the data, next to the barrier
    np.testing.assert_allclose(dense[:, 12:20], 1.0, atol=0.05)
    np.testing.assert_allclose(dense[:, 21:29], 5.0, atol=0.05)
    # without the barrier the two sides mix
    mixed, _ = propagate_sparse(values, weights, guide, 20.0, 0.5)
    assert 1.5 < mixed[20, 19] < 4.5 and 1.5 < mixed[20, 21] < 4.5


def test_single_data_point_fills_everything():
    values = np.full((15, 11), np.nan, np.float32)  # no estimate: NaN is fine where weights == 0
    weights = np.zeros((15, 11), np.float32)
    values[7, 5], weights[7, 5] = 2.5, 0.3
    guide = np.random.default_rng(0).random((15, 11, 3), dtype=np.float32)
    dense, support = propagate_sparse(values, weights, guide, 5.0, 0.2)
    np.testing.assert_allclose(dense, 2.5, rtol=1e-5)
    assert support[7, 5] == support.max() and support.min() >= 0


def test_region_without_data_gets_the_global_weighted_mean():
    values, weights = _two_sided_data()
    weights[:, -3] = 3.0 * weights[:, -3]  # weighted mean (3 * 1 + 9 * 5) / 12 = 4
    penalty = np.zeros(values.shape, np.float32)
    penalty[10:30, 10] = penalty[10:30, 30] = np.inf
    penalty[10, 10:31] = penalty[29, 10:31] = np.inf  # a closed box with no data inside
    guide = np.zeros(values.shape, np.float32)
    dense, support = propagate_sparse(values, weights, guide, 10.0, 0.5, penalty=penalty)
    assert np.isfinite(dense).all()
    assert support[11:29, 11:30].max() == 0
    np.testing.assert_allclose(dense[11:29, 11:30], 4.0, rtol=1e-5)
    # outside the box the data is used, not the mean
    assert abs(dense[20, 3] - 1.0) < 0.05 and abs(dense[20, -4] - 5.0) < 0.05


def test_dense_is_eq1_where_there_is_support(rng):
    values = (4 * rng.random((20, 16))).astype(np.float32)
    weights = np.where(rng.random((20, 16)) > 0.8, rng.random((20, 16)), 0).astype(np.float32)
    guide = rng.random((20, 16, 3), dtype=np.float32)
    dense, support = propagate_sparse(values, weights, guide, 5.0, 0.3)
    numerator = domain_transform_rf(values * weights, guide, 5.0, 0.3)
    np.testing.assert_allclose(support, domain_transform_rf(weights, guide, 5.0, 0.3), rtol=1e-6, atol=1e-9)
    has_support = support > 1e-3
    assert has_support.mean() > 0.5
    np.testing.assert_allclose(dense[has_support], (numerator / support)[has_support], rtol=1e-5)
    # a large eps means "no data anywhere": everything becomes the global weighted mean
    mean = float((values * weights).sum() / weights.sum())
    flat, _ = propagate_sparse(values, weights, guide, 5.0, 0.3, eps=1e3)
    np.testing.assert_allclose(flat, mean, rtol=1e-4)


def test_propagate_multichannel_values(rng):
    values = rng.random((10, 8, 2), dtype=np.float32)
    weights = (rng.random((10, 8)) > 0.7).astype(np.float32)
    guide = rng.random((10, 8), dtype=np.float32)
    dense, support = propagate_sparse(values, weights, guide, 4.0, 0.3)
    assert dense.shape == values.shape and support.shape == (10, 8)
    for c in range(2):
        one, _ = propagate_sparse(values[..., c], weights, guide, 4.0, 0.3)
        np.testing.assert_allclose(dense[..., c], one, atol=1e-6)
    # normalised interpolation stays within the range of the data
    lo, hi = values[weights > 0].min(0), values[weights > 0].max(0)
    assert (dense >= lo - 1e-5).all() and (dense <= hi + 1e-5).all()


def test_all_zero_weights_raise():
    with pytest.raises(ValueError, match="all weights are 0"):
        propagate_sparse(np.ones((5, 5)), np.zeros((5, 5)), np.zeros((5, 5)), 3.0, 0.5)


def test_simplify_image_flattens_texture_and_keeps_edges(rng):
    rgb = np.zeros((24, 24, 3), np.float32)
    rgb[:, 12:] = 0.8
    rgb += (0.02 * rng.standard_normal(rgb.shape)).astype(np.float32)
    rgb = np.clip(rgb, 0.0, 1.0)
    simple = simplify_image(rgb)
    np.testing.assert_array_equal(simple, domain_transform_rf(rgb, rgb, 7.0, 0.5))
    assert simple[:, 2:10].std() < rgb[:, 2:10].std() / 2
    assert float((simple[:, 12] - simple[:, 11]).min()) > 0.7
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        simplify_image(rgb * 255)


def test_input_validation():
    src = np.zeros((6, 7), np.float32)
    with pytest.raises(ValueError, match=r"src \(6, 7\) and guide \(7, 6\)"):
        domain_transform_rf(src, np.zeros((7, 6), np.float32), 3.0, 0.5)
    with pytest.raises(ValueError, match="sigma_s"):
        domain_transform_rf(src, src, 0.0, 0.5)
    with pytest.raises(ValueError, match="sigma_s"):
        domain_transform_rf(src, src, -1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_r"):
        domain_transform_rf(src, src, 3.0, 0.0)
    with pytest.raises(ValueError, match="iterations"):
        domain_transform_rf(src, src, 3.0, 0.5, iterations=0)
    with pytest.raises(ValueError, match=r"penalty must be \(H, W\)"):
        domain_transform_rf(src, src, 3.0, 0.5, penalty=np.zeros((6, 6)))
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        domain_transform_rf(src, src, 3.0, 0.5, penalty=np.full((6, 7), -1.0))
    with pytest.raises(ValueError, match="must be finite"):
        domain_transform_rf(np.full((6, 7), np.nan), src, 3.0, 0.5)
    with pytest.raises(ValueError, match=r"values \(6, 7\) and weights \(6, 6\)"):
        propagate_sparse(src, np.ones((6, 6)), src, 3.0, 0.5)
    with pytest.raises(ValueError, match=r"values \(6, 7\) and guide \(5, 7\)"):
        propagate_sparse(src, np.ones((6, 7)), np.zeros((5, 7)), 3.0, 0.5)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        propagate_sparse(src, np.full((6, 7), -1.0), src, 3.0, 0.5)
    with pytest.raises(ValueError, match="values must be finite where weights > 0"):
        propagate_sparse(np.full((6, 7), np.nan), np.ones((6, 7)), src, 3.0, 0.5)
