"""Multi-scale edge points: where the edge-based estimator measures blur.

Canny (L2 gradient, hysteresis ``low`` / ``high`` on 8-bit luma) after Gaussian smoothing at
each of ``scales`` px; an edge point is an edge at any scale. Fine scales find sharp and
textured edges, coarse ones the weak gradients of strongly blurred edges (a step of contrast
0.3 blurred by sigma 6 px still peaks at ~5 grey levels per px, 40 in Canny's Sobel units).
The same detector makes the training patches and runs at inference, so the networks see the
kind of points they will be asked about.
"""

from __future__ import annotations

import cv2
import numpy as np

#: px; Gaussian smoothing before each Canny pass
EDGE_SCALES = (1.0, 2.0)
#: Canny hysteresis thresholds (Sobel L2 gradient of 8-bit luma)
EDGE_LOW, EDGE_HIGH = 20.0, 40.0


def luma_u8(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] or uint8 -> (H, W) float32 Rec. 601 luma in [0, 255]."""
    a = rgb.astype(np.float32)
    if rgb.dtype != np.uint8:
        a = a * 255.0
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def detect_edges(rgb: np.ndarray, scales: tuple[float, ...] = EDGE_SCALES, low: float = EDGE_LOW,
                 high: float = EDGE_HIGH) -> np.ndarray:
    """Edge points of a photo -> (H, W) bool."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_edges: expected (H, W, 3) RGB, got {rgb.shape}")
    y = luma_u8(rgb)
    out = np.zeros(y.shape, bool)
    for s in scales:
        g = cv2.GaussianBlur(y, (0, 0), s) if s > 0 else y
        g8 = np.clip(np.round(g), 0, 255).astype(np.uint8)
        out |= cv2.Canny(g8, low, high, L2gradient=True) > 0
    return out


def edge_points(edges: np.ndarray, border: int = 0, max_points: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) int64 of the edge pixels at least ``border`` px inside the image; above
    ``max_points`` an evenly random subset (reproducible by ``seed``), in raster order."""
    e = edges
    if border > 0:
        e = np.zeros_like(edges)
        e[border:-border, border:-border] = edges[border:-border, border:-border]
    ys, xs = np.nonzero(e)
    if max_points is not None and len(ys) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(ys), max_points, replace=False))
        ys, xs = ys[keep], xs[keep]
    return ys.astype(np.int64), xs.astype(np.int64)
