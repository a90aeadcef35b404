"""Binary blur masks: their values and their meaning as labels.

8-bit masks hold MASK_BLURRED (255) where the blur is at least a threshold, MASK_SHARP (0)
below it, and MASK_UNKNOWN (128) where there is no label (no depth, a depth edge). Every value
other than 0 and 255 is unknown: losses and metrics ignore it, never read it as "blurred".
"""

from __future__ import annotations

import numpy as np

MASK_SHARP = 0
MASK_UNKNOWN = 128
MASK_BLURRED = 255


def blur_mask(sigma: np.ndarray, threshold_px: float) -> np.ndarray:
    """(H, W) sigma in px (NaN = no label) -> (H, W) uint8 mask: blurred where sigma >= threshold."""
    sigma = np.asarray(sigma)
    out = np.full(sigma.shape, MASK_UNKNOWN, np.uint8)
    finite = np.isfinite(sigma)
    out[finite & (sigma >= threshold_px)] = MASK_BLURRED
    out[finite & (sigma < threshold_px)] = MASK_SHARP
    return out


def mask_labels(mask: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """A blur mask as labels: 1 = blurred, 0 = sharp, NaN = unknown.

    uint8 masks: MASK_BLURRED -> 1, MASK_SHARP -> 0, anything else -> NaN. Float masks are
    labels already (1 / 0; any other value, NaN included, -> NaN).
    """
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        out = np.full(mask.shape, np.nan, dtype)
        out[mask == MASK_BLURRED] = 1.0
        out[mask == MASK_SHARP] = 0.0
        return out
    m = mask.astype(dtype)
    return np.where((m == 0) | (m == 1), m, np.nan).astype(dtype)
