"""The noise level of a photo, estimated from the photo itself.

White Gaussian noise of standard deviation s passes a zero-mean high-pass filter h with
standard deviation s * ||h||. Image content passes it too, but mostly at edges and texture;
where the photo is flat, the filter's output is noise. So: filter the luma with Immerkaer's
Laplacian-difference mask (1996; it cancels any locally linear content), keep the pixels whose
local gradient is in the lowest ``flat_fraction`` of the photo, and take the robust standard
deviation (1.4826 x median absolute value) of the filtered values there, divided by the mask's
norm (6). JPEG's 8x8 block artefacts are high-pass content too and are counted: what the
deconvolution has to fear is whatever is not the blurred scene, not only sensor noise.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Immerkaer's mask: the difference of two Laplacians, blind to constant and linear content
_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_MASK_NORM = 6.0  # sqrt(sum of squares)
#: Rec. 601 luma weights
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: median absolute deviation -> standard deviation of a Gaussian
_MAD_TO_STD = 1.4826


def estimate_noise(image: np.ndarray, flat_fraction: float = 0.5, max_pixels: int = 4_000_000) -> float:
    """Standard deviation of white noise in an image, in its own units (0-1 for float photos).

    image: (H, W) or (H, W, 3) float (RGB is reduced to Rec. 601 luma first; the estimate is
    then the luma's noise, which is what a luma deconvolution sees). flat_fraction: the share
    of pixels, those with the weakest local gradient, on which the noise is measured. Images
    over ``max_pixels`` are measured on a centre crop of that size (noise is stationary).
    Returns 0.0 for images smaller than 8x8 px.
    """
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        if a.shape[2] != 3:
            raise ValueError(f"estimate_noise: expected (H, W) or (H, W, 3), got {a.shape}")
        a = a @ _LUMA
    elif a.ndim != 2:
        raise ValueError(f"estimate_noise: expected (H, W) or (H, W, 3), got {a.shape}")
    if not 0 < flat_fraction <= 1:
        raise ValueError(f"estimate_noise: flat_fraction must be in (0, 1], got {flat_fraction}")
    h, w = a.shape
    if min(h, w) < 8:
        return 0.0
    if h * w > max_pixels:
        side = int(np.sqrt(max_pixels))
        ch, cw = min(h, side), min(w, max_pixels // min(h, side))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        a = a[y0:y0 + ch, x0:x0 + cw]
    a = np.ascontiguousarray(a)
    residual = cv2.filter2D(a, -1, _MASK, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1] / _MASK_NORM
    gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
    # the gradient over a 5x5 neighbourhood, so a pixel next to an edge is not called flat
    grad = cv2.blur(np.abs(gx) + np.abs(gy), (5, 5))[1:-1, 1:-1]
    r = np.abs(residual).ravel()
    g = grad.ravel()
    k = max(1, int(flat_fraction * g.size))
    flat = np.argpartition(g, k - 1)[:k] if k < g.size else np.arange(g.size)
    return float(_MAD_TO_STD * np.median(r[flat]))


def blockiness(image: np.ndarray) -> float:
    """How much more the image steps across an 8x8 grid than inside it: 1.0 for content with no
    grid, > 1 for a JPEG-decoded photo (block boundaries at multiples of 8 px from the top-left).

    The mean absolute difference between neighbouring columns (rows) at x = 8k-1 | 8k, over that
    at the other column pairs; both axes together. Survives re-saving as PNG, not cropping off
    the grid. image: (H, W) or (H, W, 3) float.
    """
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        a = a @ _LUMA
    h, w = a.shape
    if h < 16 or w < 16:
        return 1.0
    dx = np.abs(np.diff(a, axis=1)).mean(axis=0)  # dx[i]: between columns i and i+1
    dy = np.abs(np.diff(a, axis=0)).mean(axis=1)
    on_x, on_y = (np.arange(dx.size) % 8) == 7, (np.arange(dy.size) % 8) == 7
    across = dx[on_x].sum() + dy[on_y].sum()
    inside = dx[~on_x].sum() + dy[~on_y].sum()
    n_across, n_inside = on_x.sum() + on_y.sum(), (~on_x).sum() + (~on_y).sum()
    if inside <= 0:
        return 1.0
    return float((across / n_across) / (inside / n_inside))
