"""Metrics: numbers that can be checked by hand or by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defocus_cli.ops import metrics as M


# --------------------------------------------------------------------------------------------
# sigma errors and Spearman


def test_perfect_prediction_has_zero_error_and_spearman_one(rng):
    gt = rng.uniform(0, 5, (20, 30))
    e = M.sigma_errors(gt.copy(), gt, sigma_norm=7.0)
    assert e["mse"] == 0 and e["mae"] == 0 and e["mae_px"] == 0 and e["bias_px"] == 0
    assert e["spearman"] == pytest.approx(1.0)
    assert e["n"] == 600


def test_sigma_errors_by_hand():
    gt = np.array([[0.0, 1.0], [2.0, 3.0]])
    pred = np.array([[0.7, 1.0], [2.0, 1.6]])  # errors +0.7, 0, 0, -1.4
    e = M.sigma_errors(pred, gt, sigma_norm=7.0)
    assert e["mae_px"] == pytest.approx(2.1 / 4)
    assert e["mae"] == pytest.approx(2.1 / 4 / 7)
    assert e["mse"] == pytest.approx((0.1 ** 2 + 0.2 ** 2) / 4)  # (0.7/7)^2, (1.4/7)^2
    assert e["bias_px"] == pytest.approx(-0.7 / 4)
    assert e["rmse_px"] == pytest.approx(math.sqrt((0.49 + 1.96) / 4))


def test_sigma_errors_ignore_nan_and_rtf_norm():
    gt = np.array([1.0, np.nan, 3.275, 2.0])
    pred = np.array([1.0, 100.0, 0.0, np.nan])
    e = M.sigma_errors(pred, gt, sigma_norm=3.275)  # the paper's RTF normalisation
    assert e["n"] == 2
    assert e["mae"] == pytest.approx(3.275 / 2 / 3.275)
    assert e["mse"] == pytest.approx(0.5)


def test_sigma_errors_without_valid_pixels_is_nan():
    e = M.sigma_errors(np.ones((3, 3)), np.full((3, 3), np.nan))
    assert e["n"] == 0 and math.isnan(e["mae"]) and math.isnan(e["spearman"])


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        M.sigma_errors(np.zeros((2, 3)), np.zeros((3, 2)))


def _brute_ranks(x):
    """Average rank by definition: 1 + #smaller + (#equal - 1) / 2."""
    x = np.asarray(x)
    return np.array([1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])


def test_rankdata_matches_definition_with_ties(rng):
    for _ in range(20):
        x = rng.integers(0, 6, size=rng.integers(1, 40)).astype(float)
        np.testing.assert_allclose(M.rankdata(x), _brute_ranks(x))
    np.testing.assert_allclose(M.rankdata([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])


def _brute_spearman(a, b):
    ra, rb = _brute_ranks(a), _brute_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_spearman_matches_brute_force_reference(rng):
    for _ in range(20):
        n = int(rng.integers(3, 60))
        a = rng.integers(0, 5, n).astype(float)  # many ties
        b = a + rng.integers(-2, 3, n)
        assert M.spearman(a, b) == pytest.approx(_brute_spearman(a, b), abs=1e-12)


def test_spearman_monotone_and_reversed(rng):
    a = rng.uniform(0, 1, (10, 10))
    assert M.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(a, np.ones_like(a)))  # constant: no order


def test_spearman_agrees_with_scipy_with_ties_and_nans(rng):
    """Oracle: scipy.stats.spearmanr (ties get average ranks in both). The module documents that
    pixels not finite in either map are left out, so scipy gets the pairs finite in both.
    Tolerance 1e-12: both are float64 Pearson correlations of the same ranks."""
    from scipy.stats import spearmanr

    a = np.round(rng.normal(size=500), 1)  # rounding makes many ties
    b = np.round(a + rng.normal(size=500), 1)
    assert M.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    # 2-D maps with NaN and inf holes in either one
    a2 = np.round(rng.uniform(0, 3, (20, 25)), 1)
    b2 = np.round(a2 ** 2 + rng.normal(0, 1, a2.shape), 0)
    a2[rng.random(a2.shape) < 0.1] = np.nan
    b2[rng.random(b2.shape) < 0.1] = np.nan
    b2[0, :3] = np.inf
    ok = np.isfinite(a2) & np.isfinite(b2)
    assert M.spearman(a2, b2) == pytest.approx(spearmanr(a2[ok], b2[ok]).statistic, abs=1e-12)
    assert M.sigma_errors(a2, b2)["spearman"] == pytest.approx(spearmanr(a2[ok], b2[ok]).statistic, abs=1e-12)


# --------------------------------------------------------------------------------------------
# masks


def test_park_threshold_formula():
    v = np.array([1.0, 2.0, np.nan, 11.0])
    assert M.park_threshold(v) == pytest.approx(0.3 * 11 + 0.7 * 1)
    assert M.park_threshold(v, alpha=0.5) == pytest.approx(6.0)


def test_mask_accuracy_by_hand():
    pred = np.array([0.0, 1.0, 2.0, 10.0, 4.0])  # tau = 3.0 + 0 = 3.0 -> blurred: 10, 4
    gt = np.array([0, 0, 255, 255, 128], np.uint8)  # last pixel unknown -> ignored
    r = M.mask_accuracy(pred, gt)
    # labelled preds 0,1,2,10: tau = 0.3*10 = 3 -> predicted blurred only 10; 3 of 4 right
    assert r["tau"] == pytest.approx(3.0)
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["n"] == 4 and r["blurred_fraction"] == pytest.approx(0.5)


def test_average_precision_perfect_reversed_and_ties():
    gt = np.array([0, 0, 0, 1, 1], float)
    assert M.average_precision(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), gt) == pytest.approx(1.0)
    # reversed ranking: positives ranked 4th and 5th -> AP = 0.5*(1/4) + 0.5*(2/5)
    assert M.average_precision(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), gt) == pytest.approx(0.125 + 0.2)
    # a constant score ties everything: AP = blurred fraction
    assert M.average_precision(np.ones(5), gt) == pytest.approx(0.4)
    assert math.isnan(M.average_precision(np.ones(3), np.zeros(3)))


def _brute_ap(scores, labels):
    """Definition over the distinct thresholds: sum (R_k - R_{k-1}) P_k."""
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        sel = scores >= t
        tp = np.sum(labels & sel)
        r, p = tp / labels.sum(), tp / sel.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_average_precision_matches_brute_force(rng):
    for _ in range(20):
        s = rng.integers(0, 8, 50).astype(float)
        lab = rng.random(50) < 0.4
        if lab.any():
            assert M.average_precision(s, lab.astype(float)) == pytest.approx(_brute_ap(s, lab))


def test_precision_recall_curve_ends_and_monotone_recall(rng):
    gt = (rng.random((30, 30)) < 0.3).astype(float)
    pred = gt * 2 + rng.random((30, 30))  # every blurred pixel scores above every sharp one
    taus, p, r = M.precision_recall_curve(pred, gt, 11)
    assert taus[0] == pytest.approx(pred.min()) and taus[-1] == pytest.approx(pred.max())
    assert r[0] == 1.0 and p[0] == pytest.approx(gt.mean())  # tau = v_min: all blurred
    assert np.all(np.diff(r) <= 1e-12)  # recall falls as tau rises
    assert p[-1] == 1.0  # only the maximum is predicted, and it is blurred


# --------------------------------------------------------------------------------------------
# images


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3))
    b = np.full((4, 4, 3), 0.1)
    assert M.psnr(a, b) == pytest.approx(20.0)  # mse 0.01 -> 10 log10(1/0.01)
    assert M.psnr(a, a) == math.inf
    b[0, 0, 0] = np.nan  # ignored
    assert M.psnr(a, b) == pytest.approx(20.0)


def test_ssim_identical_is_one_and_constant_images_by_hand(rng):
    img = rng.random((32, 40, 3))
    assert M.ssim(img, img) == pytest.approx(1.0)
    assert M.ssim(img, img, mode="rgb") == pytest.approx(1.0)
    # two constants c1, c2: zero variances, so SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1)
    c1v, c2v = 0.2, 0.6
    C1 = (0.01 * 1.0) ** 2
    expected = (2 * c1v * c2v + C1) / (c1v ** 2 + c2v ** 2 + C1)
    assert M.ssim(np.full((16, 16), c1v), np.full((16, 16), c2v)) == pytest.approx(expected)


def test_ssim_image_vs_negated_noise_by_hand(rng):
    """Zero-mean x vs -x on a mean-0.5 pedestal: mu equal, cov = -var, so per window
    SSIM = (-2 var + C2) / (2 var + C2); with the window's weighted variance computed here."""
    x = rng.normal(0, 0.1, (11, 11))
    a, b = 0.5 + x, 0.5 - x
    w = M._gaussian_window()
    W2 = np.outer(w, w)
    mu = np.sum(W2 * x)
    var = np.sum(W2 * x * x) - mu * mu
    C1, C2 = (0.01) ** 2, (0.03) ** 2
    m_a, m_b = 0.5 + mu, 0.5 - mu
    expected = ((2 * m_a * m_b + C1) * (-2 * var + C2)) / ((m_a ** 2 + m_b ** 2 + C1) * (2 * var + C2))
    assert M.ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_with_blur_and_noise(rng):
    import cv2

    img = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 1.0).astype(np.float64)
    blurred = cv2.GaussianBlur(img, (0, 0), 2.0)
    noisy = img + rng.normal(0, 0.05, img.shape)
    assert 0 < M.ssim(img, blurred) < 0.9
    assert M.ssim(img, noisy) < 1.0
    assert M.ssim(img, cv2.GaussianBlur(img, (0, 0), 0.7)) > M.ssim(img, blurred)


def test_psnr_agrees_with_skimage(rng):
    """Oracle: skimage.metrics.peak_signal_noise_ratio at the same data_range (rel 1e-12: both
    are 10 log10(range^2 / MSE) in float64)."""
    from skimage.metrics import peak_signal_noise_ratio

    a = rng.random((30, 40, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert M.psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    assert M.psnr(255 * b, 255 * a, data_range=255.0) == pytest.approx(
        peak_signal_noise_ratio(255 * a, 255 * b, data_range=255.0), rel=1e-12)


def test_ssim_agrees_with_skimage(rng):
    """Oracle: skimage.metrics.structural_similarity with Wang et al.'s settings (Gaussian window
    sigma 1.5, 11 taps at skimage's truncate 3.5, population covariance, K1 0.01, K2 0.03), whose
    mean runs over the same window positions (it crops half a window at each border).
    Tolerance 1e-9: float64 both ways, only the filter's summation order differs."""
    import cv2
    from skimage.metrics import structural_similarity

    def oracle(x, y, data_range=1.0, **kw):
        return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=data_range, **kw)

    img = cv2.GaussianBlur(rng.random((48, 56, 3)).astype(np.float32), (0, 0), 1.0).astype(np.float64)
    for other in (cv2.GaussianBlur(img, (0, 0), 2.0), np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)):
        g, h = img[..., 1], other[..., 1]
        assert M.ssim(g, h) == pytest.approx(oracle(g, h), abs=1e-9)
        assert M.ssim(255 * g, 255 * h, data_range=255.0) == pytest.approx(oracle(255 * g, 255 * h, 255.0),
                                                                            abs=1e-9)
        # rgb: the mean of the per-channel SSIMs, as skimage's channel_axis
        assert M.ssim(img, other, mode="rgb") == pytest.approx(oracle(img, other, channel_axis=2), abs=1e-9)
        # luminance: SSIM of the BT.601 luma, computed here
        luma = np.array([0.299, 0.587, 0.114])
        assert M.ssim(img, other) == pytest.approx(oracle(img @ luma, other @ luma), abs=1e-9)


def test_ssim_ignores_windows_touching_nan(rng):
    img = rng.random((40, 40))
    other = img.copy()
    other[:12, :12] = 0  # damage a corner ...
    other[:12, :12] = np.nan  # ... that is then declared invalid
    assert M.ssim(img, other) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# sigma <-> disk radius


TABLE_S = np.array([0.3, 0.5, 0.65, 1.125, 3.275])
TABLE_R = np.array([0.5, 0.75, 1.0, 2.0, 6.0])


def test_radius_conversion_hits_table_rows_and_inverts():
    np.testing.assert_allclose(M.sigma_to_disk_radius(TABLE_S, TABLE_S, TABLE_R), TABLE_R)
    np.testing.assert_allclose(M.disk_radius_to_sigma(TABLE_R, TABLE_S, TABLE_R), TABLE_S)
    s = np.linspace(0, 5, 101)
    back = M.disk_radius_to_sigma(M.sigma_to_disk_radius(s, TABLE_S, TABLE_R), TABLE_S, TABLE_R)
    np.testing.assert_allclose(back, s, atol=1e-12)
    r = M.sigma_to_disk_radius(s, TABLE_S, TABLE_R)
    assert np.all(np.diff(r) > 0)  # monotone, also beyond the table
    assert M.sigma_to_disk_radius(0.0, TABLE_S, TABLE_R) == 0.0
    assert M.sigma_to_disk_radius(6.55, TABLE_S, TABLE_R) == pytest.approx(12.0)  # proportional
    assert np.isnan(M.sigma_to_disk_radius(np.array([np.nan]), TABLE_S, TABLE_R)[0])


def test_radius_table_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        M.sigma_to_disk_radius(1.0, [0.3, 0.2], [1.0, 2.0])


def test_real_rtf_table_when_present(shared_data):
    data = np.loadtxt(shared_data / "tables" / "rtf_sigma_to_disk_radius.csv", delimiter=",", skiprows=1)
    s, r = data[:, 0], data[:, 1]
    assert M.sigma_to_disk_radius(3.275, s, r) == pytest.approx(6.0)  # the table's last row
    assert M.disk_radius_to_sigma(2.0, s, r) == pytest.approx(1.125)

