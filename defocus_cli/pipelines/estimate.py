"""Defocus map estimation for one photo at any size.

The network sees the photo at a *working resolution* (long side ``working_size``, never
up-sampled), so that real defocus blur falls within the range it was trained on (sigma up to
sigma_max = 7 px there). Very large working images are processed in overlapping tiles. The map
is then brought back to the photo's full resolution: bilinear up-sampling, sigma divided by the
scale s (a blur of sigma_work px at scale s is sigma_work / s px at full resolution), and an
edge-aware refinement guided by the full-resolution photo (a colour guided up-sampling,
the fast guided filter of He & Sun 2015: the map is modelled as a local linear function of the
colour at the working resolution and that model is applied to the full-resolution photo) so the
map's edges follow the photo's edges rather than the working grid.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from defocus_cli.device import autocast
from defocus_cli.models.b import BlurNet

#: default long side of the working resolution, px. See README "Units and resolution".
DEFAULT_WORKING_SIZE = 768


@dataclass(frozen=True)
class EstimateConfig:
    """How a photo is mapped.

    working_size: long side (px) at which the network runs; None or 0 = the photo's own size.
    refine: edge-aware refinement of the up-sampled map, guided by the full-resolution photo.
    tile / tile_overlap: above ``tile`` px on a side the working image is cut into overlapping
        tiles (bounded memory); overlaps are blended with linear ramps.
    """

    working_size: int | None = DEFAULT_WORKING_SIZE
    refine: bool = True
    tile: int = 1024
    tile_overlap: int = 96

    def __post_init__(self) -> None:
        if self.working_size is not None and self.working_size < 0:
            raise ValueError(f"working_size must be >= 0, got {self.working_size}")
        if self.tile < 64 or not 0 <= self.tile_overlap < self.tile // 2:
            raise ValueError(f"need tile >= 64 and 0 <= tile_overlap < tile/2, got {self.tile}, "
                             f"{self.tile_overlap}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EstimateResult:
    """sigma: (H, W) float32 Gaussian blur sigma in px of the input photo (full resolution)."""

    sigma: np.ndarray
    scale: float  # working / full resolution (<= 1)
    working_size: tuple[int, int]  # (width, height) the network saw
    timings: dict[str, float] = field(default_factory=dict)
    #: what the estimator wants recorded beside the map (e.g. a fallback it took), JSON values
    info: dict = field(default_factory=dict)


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.float32:
        raise ValueError(f"estimate_defocus: expected (H, W, 3) float32 RGB in [0, 1], got "
                         f"{rgb.shape} {rgb.dtype}")


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(n, np.float32)
    if overlap:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = r
        if not at_end:
            w[-overlap:] = r[::-1]
    return w


@torch.inference_mode()
def run_network(rgb: np.ndarray, model: BlurNet, dtype: torch.dtype | None = None,
                tile: int = 1024, overlap: int = 96) -> np.ndarray:
    """Network B on an (H, W, 3) float32 RGB image -> (H, W) float32 sigma / sigma_max in [0, 1].

    Runs on the model's device, under autocast ``dtype`` (None = fp32), in overlapping tiles
    when a side exceeds ``tile``.
    """
    device = next(model.parameters()).device
    h, w = rgb.shape[:2]
    out = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            crop = rgb[y:y + tile, x:x + tile]
            t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].to(device)
            t = t.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                pred = model(t)
            pred = pred.float()[0, 0].cpu().numpy()
            ch, cw = pred.shape
            wy = _ramp(ch, overlap, y == ys[0], y == ys[-1])
            wx = _ramp(cw, overlap, x == xs[0], x == xs[-1])
            wt = wy[:, None] * wx[None, :]
            out[y:y + ch, x:x + cw] += pred * wt
            weight[y:y + ch, x:x + cw] += wt
    return out / weight


def _box(a: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(a, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def guided_upsample(sigma_work: np.ndarray, work_rgb: np.ndarray, full_rgb: np.ndarray,
                    radius: int = 4, eps: float = 1e-3) -> np.ndarray:
    """Edge-aware up-sampling of a working-resolution map (fast colour guided filter, He & Sun 2015).

    At the working resolution the map is modelled, in each (2r+1)^2 window, as a linear function
    of the photo's colour, q = a . I + b (the colour guided filter of He et al., eps regularising
    a). The coefficients are up-sampled bilinearly and applied to the *full-resolution* photo, so
    the map's edges land on the photo's edges instead of the working grid's.

    sigma_work: (h, w) float32; work_rgb: (h, w, 3) float32, the photo at that size;
    full_rgb: (H, W, 3) float32. Returns (H, W) float32 in the map's units.
    """
    p = sigma_work.astype(np.float32)
    I = work_rgb.astype(np.float32)
    r = int(max(1, min(radius, (min(p.shape) - 1) // 2)))
    mean_I = _box(I, r)
    mean_p = _box(p, r)
    cov_Ip = _box(I * p[..., None], r) - mean_I * mean_p[..., None]
    # var_I: the symmetric 3x3 colour covariance per pixel, plus eps on the diagonal
    var = {}
    for i in range(3):
        for j in range(i, 3):
            var[i, j] = _box(I[..., i] * I[..., j], r) - mean_I[..., i] * mean_I[..., j]
            if i == j:
                var[i, j] = var[i, j] + np.float32(eps)
    a00, a01, a02, a11, a12, a22 = var[0, 0], var[0, 1], var[0, 2], var[1, 1], var[1, 2], var[2, 2]
    # inverse by cofactors (symmetric)
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    x, y, z = cov_Ip[..., 0], cov_Ip[..., 1], cov_Ip[..., 2]
    a = np.stack([(c00 * x + c01 * y + c02 * z) / det,
                  (c01 * x + c11 * y + c12 * z) / det,
                  (c02 * x + c12 * y + c22 * z) / det], axis=2)
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_I)
    coeffs = np.concatenate([_box(a, r), _box(b, r)[..., None]], axis=2)
    H, W = full_rgb.shape[:2]
    up = cv2.resize(coeffs, (W, H), interpolation=cv2.INTER_LINEAR)
    q = np.einsum("hwc,hwc->hw", up[..., :3], full_rgb)
    q += up[..., 3]
    return q


def refine_upsample(sigma_work: np.ndarray, work_rgb: np.ndarray, full_rgb: np.ndarray,
                    scale: float, refine: bool = True) -> np.ndarray:
    """Bring a working-resolution sigma map to the photo's resolution, in the photo's pixels.

    sigma_work: (h, w) float32 sigma in px of the working image work_rgb (h, w, 3);
    full_rgb: (H, W, 3) float32 photo; scale = h / H. Returns (H, W) float32 sigma / scale,
    >= 0: guided (edge-aware) when ``refine``, bilinear otherwise. At scale 1 the map is returned.
    """
    H, W = full_rgb.shape[:2]
    if sigma_work.shape == (H, W):
        return np.maximum(sigma_work, 0).astype(np.float32)
    if refine and min(sigma_work.shape) >= 3:
        up = guided_upsample(sigma_work, work_rgb, full_rgb)
        # a linear model can overshoot at strong colour edges: keep within the map's own range
        np.clip(up, float(sigma_work.min()), float(sigma_work.max()), out=up)
    else:
        up = cv2.resize(sigma_work.astype(np.float32, copy=False), (W, H), interpolation=cv2.INTER_LINEAR)
    # in place: at 12 MP every extra pass over the map costs ~30 ms
    up *= np.float32(1.0 / scale)
    return np.maximum(up, 0, out=up)


def working_image(rgb: np.ndarray, working_size: int | None) -> tuple[np.ndarray, float]:
    """The photo reduced to long side ``working_size`` (INTER_AREA; never enlarged; None or 0:
    as it is) -> (image, scale = working / full)."""
    H, W = rgb.shape[:2]
    long_side = max(H, W)
    scale = min(1.0, (working_size or long_side) / long_side)
    if scale >= 1.0:
        return rgb, 1.0
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), max(w, h) / long_side


def estimate_defocus(rgb: np.ndarray, model: BlurNet, meta: dict | None = None,
                     config: EstimateConfig = EstimateConfig(),
                     dtype: torch.dtype | None = None) -> EstimateResult:
    """Per-pixel defocus map of one photo.

    rgb: (H, W, 3) float32 RGB in [0, 1]. model: BlurNet in eval mode on its device.
    meta: the weights' metadata (its ``sigma_max`` is used; default the model config's).
    Returns an EstimateResult whose sigma is (H, W) float32, px of the input's full resolution.
    """
    _check_rgb(rgb)
    sigma_max = float((meta or {}).get("sigma_max", model.config.sigma_max))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    work, scale = working_image(rgb, config.working_size)
    timings["resize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    norm = run_network(work, model, dtype, config.tile, config.tile_overlap)
    timings["network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sigma = refine_upsample(norm * np.float32(sigma_max), work, rgb, scale, config.refine)
    timings["upsample"] = time.perf_counter() - t0
    if not np.all(np.isfinite(sigma)):
        from defocus_cli.errors import ProcessingError

        raise ProcessingError("the network produced non-finite values (try --precision fp32)")
    return EstimateResult(sigma=sigma, scale=scale, working_size=(work.shape[1], work.shape[0]),
                          timings=timings)
