"""Evaluation metrics of defocus maps, blur masks and deblurred images (numpy only).

The paper's protocol (DMENet Sec. 5.3, supplement Tables 4-6):

- sigma maps with ground truth (SYNDOF, RTF): MSE and MAE of the *normalised* map, i.e. of
  sigma / sigma_norm, with sigma_norm = 7 px for SYNDOF-style data (the network's sigma_max) and
  3.275 px for RTF (the largest sigma of the RTF authors' sigma <-> disk-radius table). We add
  the MAE in pixels and Spearman's rank correlation (order right even where scale is off).
- binary blur masks (CUHK): the estimated map is binarised at tau = 0.3 v_max + 0.7 v_min (Park
  et al. 2017; v_min/v_max of that map) and compared pixel by pixel (accuracy); the
  precision-recall curve slides tau from v_min to v_max; positives are *blurred* pixels.
- deblurring: PSNR and SSIM against the sharp reference.

NaN convention: every function ignores pixels where an input is NaN (no label, outside a valid
region); binary masks may hold 1 / 0 / NaN floats or 255 / 0 / 128 bytes (128 = unknown).
A metric with no valid pixel returns NaN instead of raising, so one empty image does not stop an
evaluation; means over images should use np.nanmean.
"""

from __future__ import annotations

import numpy as np

from defocus_cli.ops.masks import mask_labels

#: the paper's sigma normalisations: SYNDOF-style data (sigma_max of the network) and RTF
SIGMA_NORM_SYNDOF = 7.0
SIGMA_NORM_RTF = 3.275
#: Park et al.'s binarisation weight: tau = PARK_ALPHA * v_max + (1 - PARK_ALPHA) * v_min
PARK_ALPHA = 0.3
#: SSIM constants of Wang et al. 2004
SSIM_K1, SSIM_K2, SSIM_WINDOW_SIGMA, SSIM_WINDOW_SIZE = 0.01, 0.03, 1.5, 11
#: ITU-R BT.601 luma weights (MATLAB's rgb2gray), for SSIM on luminance
LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def _pair(pred: np.ndarray, gt: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite pixels of two maps of one shape, as float64 vectors."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"{what}: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    ok = np.isfinite(pred) & np.isfinite(gt)
    return pred[ok], gt[ok]


# --------------------------------------------------------------------------------------------
# sigma maps


def sigma_errors(pred: np.ndarray, gt: np.ndarray, sigma_norm: float = SIGMA_NORM_SYNDOF) -> dict[str, float]:
    """Errors of a sigma map against ground truth (both (H, W) px, NaN = ignore).

    Returns mse / mae of sigma / sigma_norm (the paper's normalised figures), mae_px, rmse_px,
    bias_px (mean of pred - gt), spearman and n (valid pixels). NaN figures when n == 0.
    """
    if not sigma_norm > 0:
        raise ValueError(f"sigma_errors: sigma_norm must be > 0, got {sigma_norm}")
    p, g = _pair(pred, gt, "sigma_errors")
    if p.size == 0:
        nan = float("nan")
        return {"mse": nan, "mae": nan, "mae_px": nan, "rmse_px": nan, "bias_px": nan,
                "spearman": nan, "n": 0}
    d = p - g
    return {
        "mse": float(np.mean((d / sigma_norm) ** 2)),
        "mae": float(np.mean(np.abs(d)) / sigma_norm),
        "mae_px": float(np.mean(np.abs(d))),
        "rmse_px": float(np.sqrt(np.mean(d ** 2))),
        "bias_px": float(np.mean(d)),
        "spearman": _spearman_vectors(p, g),
        "n": int(p.size),
    }


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (scipy's 'average' method)."""
    x = np.asarray(x).ravel()
    n = x.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values in the sorted order
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    # average of ranks start+1 .. end of each run, spread back over its members
    avg = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _spearman_vectors(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    # a constant input has no order to correlate with
    return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one shape over pixels finite in both
    (Pearson correlation of tie-averaged ranks). NaN if fewer than 2 pixels or a constant map."""
    p, g = _pair(a, b, "spearman")
    return _spearman_vectors(p, g)


# --------------------------------------------------------------------------------------------
# binary blur masks


def park_threshold(values: np.ndarray, alpha: float = PARK_ALPHA) -> float:
    """tau = alpha * v_max + (1 - alpha) * v_min over the finite values of an estimated map."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(alpha * v.max() + (1.0 - alpha) * v.min())


def _scores_labels(pred: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = mask_labels(mask)
    p, lab = _pair(pred, labels, what)
    return p, lab.astype(bool)


def mask_accuracy(pred: np.ndarray, mask: np.ndarray, alpha: float = PARK_ALPHA) -> dict[str, float]:
    """Accuracy of the estimated map binarised at park_threshold(pred over labelled pixels).

    pred: (H, W) estimated sigma (any monotone blur measure). mask: ground truth (see mask_labels).
    Returns accuracy, tau, blurred_fraction (ground truth), n. Pixels >= tau count as blurred.
    """
    p, lab = _scores_labels(pred, mask, "mask_accuracy")
    if p.size == 0:
        return {"accuracy": float("nan"), "tau": float("nan"), "blurred_fraction": float("nan"), "n": 0}
    tau = park_threshold(p, alpha)
    return {"accuracy": float(np.mean((p >= tau) == lab)), "tau": tau,
            "blurred_fraction": float(lab.mean()), "n": int(p.size)}


def precision_recall_curve(pred: np.ndarray, mask: np.ndarray, n_thresholds: int = 101
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's precision-recall curve: tau slides linearly from v_min to v_max of pred.

    Returns (thresholds, precision, recall), each (n_thresholds,); blurred = pred >= tau.
    Precision is 1 where nothing is predicted blurred (the usual convention at the top end);
    recall is NaN if the ground truth has no blurred pixel. All NaN when no pixel is labelled.
    """
    if n_thresholds < 2:
        raise ValueError(f"precision_recall_curve: n_thresholds must be >= 2, got {n_thresholds}")
    p, lab = _scores_labels(pred, mask, "precision_recall_curve")
    if p.size == 0:
        nan = np.full(n_thresholds, np.nan)
        return nan, nan.copy(), nan.copy()
    taus = np.linspace(p.min(), p.max(), n_thresholds)
    order = np.sort(p)
    pos_sorted = np.sort(p[lab])
    # predicted positives at tau: count of p >= tau; true positives likewise among blurred pixels
    predicted = p.size - np.searchsorted(order, taus, side="left")
    tp = pos_sorted.size - np.searchsorted(pos_sorted, taus, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
        recall = tp / pos_sorted.size if pos_sorted.size else np.full(n_thresholds, np.nan)
    return taus, precision.astype(np.float64), np.asarray(recall, np.float64)


def average_precision(pred: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of ranking pixels by pred for "blurred": sum over every distinct score
    (descending) of (R_k - R_{k-1}) * P_k, tied scores taken together. 1 for a perfect ranking;
    the blurred fraction for an uninformative one. NaN without labelled blurred pixels."""
    p, lab = _scores_labels(pred, mask, "average_precision")
    n_pos = int(lab.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ps, ls = p[order], lab[order]
    # the last index of each run of equal scores: a threshold can only fall between runs
    last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
    tp = np.cumsum(ls)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --------------------------------------------------------------------------------------------
# images


def _check_images(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
        raise ValueError(f"{what}: expected two (H, W) or (H, W, 3) images of one shape, got "
                         f"{a.shape} and {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB over all channels of the pixels finite in both images ((H, W[, 3]) in
    [0, data_range]). +inf for identical images, NaN if nothing is finite."""
    a, b = _check_images(a, b, "psnr")
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    mse = float(np.mean((a[ok] - b[ok]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) luma 0.299 R + 0.587 G + 0.114 B (BT.601, as MATLAB's rgb2gray)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"to_luminance: expected (H, W, 3), got {rgb.shape}")
    return rgb @ LUMA


def _gaussian_window(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_WINDOW_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with w, 'valid' part only (as MATLAB's filter2(..., 'valid'))."""
    k = w.size
    h, wd = img.shape
    rows = sum(w[i] * img[i:h - k + 1 + i, :] for i in range(k))
    return sum(w[j] * rows[:, j:wd - k + 1 + j] for j in range(k))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """SSIM index map of two single-channel images (Wang et al. 2004): 11x11 Gaussian window of
    sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' window positions only (so (H-10, W-10)), no
    down-sampling. Images smaller than the window give an empty map."""
    a, b = _check_images(a, b, "ssim_map")
    if a.ndim != 2:
        raise ValueError(f"ssim_map: expected (H, W) images, got {a.shape}")
    w = _gaussian_window()
    if min(a.shape) < w.size:
        return np.zeros((0, 0))
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a ** 2
    var_b = _filter_valid(b * b, w) - mu_b ** 2
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, mode: str = "luminance") -> float:
    """Mean SSIM of two images, (H, W) or (H, W, 3) in [0, data_range].

    mode "luminance" (default): SSIM of the BT.601 luma of RGB inputs (the usual choice for
    deblurring papers); "rgb": the mean of the three per-channel SSIMs. Windows touching a
    non-finite pixel are left out of the mean. NaN if no window fits.
    """
    a, b = _check_images(a, b, "ssim")
    if mode not in ("luminance", "rgb"):
        raise ValueError(f"ssim: mode must be 'luminance' or 'rgb', got {mode!r}")
    if a.ndim == 3 and a.shape[2] == 1:
        a, b = a[..., 0], b[..., 0]
    if a.ndim == 2:
        channels = [(a, b)]
    elif mode == "luminance":
        channels = [(to_luminance(a), to_luminance(b))]
    else:
        channels = [(a[..., c], b[..., c]) for c in range(3)]
    values = []
    for x, y in channels:
        bad = ~(np.isfinite(x) & np.isfinite(y))
        m = ssim_map(np.where(bad, 0.0, x), np.where(bad, 0.0, y), data_range)
        if m.size == 0:
            return float("nan")
        if bad.any():
            # a window is valid only if none of its pixels is: the 'valid' box-filter of bad == 0
            k = SSIM_WINDOW_SIZE
            touched = _filter_valid(bad.astype(np.float64), np.ones(k) / k) > 0
            m = m[~touched]
        if m.size == 0:
            return float("nan")
        values.append(float(np.mean(m)))
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------
# Gaussian sigma <-> disk radius (RTF)


def _check_table(table_sigma: np.ndarray, table_radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(table_sigma, dtype=np.float64).ravel()
    r = np.asarray(table_radius, dtype=np.float64).ravel()
    if s.size != r.size or s.size < 2:
        raise ValueError(f"sigma/radius table: need >= 2 rows of equal length, got {s.size} and {r.size}")
    if not (np.all(np.diff(s) > 0) and np.all(np.diff(r) > 0) and s[0] > 0 and r[0] > 0):
        raise ValueError("sigma/radius table: both columns must be > 0 and strictly increasing")
    # sigma 0 is a sharp point, i.e. disk radius 0: anchor the curve there
    return np.r_[0.0, s], np.r_[0.0, r]


def _interp_monotone(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear through the table (monotone like the table); beyond its end,
    proportional extrapolation y = x * ys[-1] / xs[-1]. NaN stays NaN; negative input raises."""
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError("sigma/radius conversion: values must be >= 0")
    y = np.interp(x, xs, ys)
    beyond = x > xs[-1]
    return np.where(beyond, x * (ys[-1] / xs[-1]), y)


def sigma_to_disk_radius(sigma: np.ndarray, table_sigma: np.ndarray, table_radius: np.ndarray) -> np.ndarray:
    """Gaussian sigma (px) -> radius (px) of the closest-fitting disk PSF, by the RTF authors'
    table (e.g. ../shared/data/tables/rtf_sigma_to_disk_radius.csv, read by the caller)."""
    s, r = _check_table(table_sigma, table_radius)
    return _interp_monotone(sigma, s, r)


def disk_radius_to_sigma(radius: np.ndarray, table_sigma: np.ndarray, table_radius: np.ndarray) -> np.ndarray:
    """Disk PSF radius (px) -> Gaussian sigma (px): the inverse of sigma_to_disk_radius."""
    s, r = _check_table(table_sigma, table_radius)
    return _interp_monotone(radius, r, s)
