"""Defocus maps as arrays: resampling a map to another image size.

A map holds, per pixel, Gaussian sigma in pixels *of the image it belongs to*; resizing the map
by a factor f therefore multiplies its values by f too.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: largest relative difference of aspect ratio between a map and its image that resampling allows
ASPECT_TOLERANCE = 0.02


def resample_map(sigma: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample an (h, w) map of sigma in px to an image of ``shape`` (H, W), values rescaled.

    Bilinear; sigma is multiplied by the geometric mean of the two scale factors. Raises
    ValueError when the aspect ratios differ by more than ASPECT_TOLERANCE (the map belongs to
    another photo). Returns (H, W) float32 (the input itself, as float32, when the size matches).
    """
    if sigma.ndim != 2:
        raise ValueError(f"resample_map: expected an (H, W) map, got shape {sigma.shape}")
    h, w = (int(v) for v in shape)
    mh, mw = sigma.shape
    if (mh, mw) == (h, w):
        return sigma.astype(np.float32, copy=False)
    fy, fx = h / mh, w / mw
    if abs(fy / fx - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(f"a {mw}x{mh} px defocus map does not fit a {w}x{h} px photo "
                         "(different aspect ratio)")
    resized = cv2.resize(sigma.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return resized * np.float32(math.sqrt(fx * fy))
