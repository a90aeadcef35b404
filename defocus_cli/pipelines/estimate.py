"""Defocus map estimation for one photo at any size.

The network sees the photo at a *working resolution* (long side ``working_size``, never
up-sampled), so that real defocus blur falls within the range it was trained on (sigma up to
sigma_max = 7 px there). Very large working images are processed in overlapping tiles. The map
is then brought back to the photo's full resolution: bilinear up-sampling, sigma divided by the
scale s (a blur of sigma_work px at scale s is sigma_work / s px at full resolution), and an
edge-aware refinement guided by the full-resolution photo (the domain-transform filter of
cv2.ximgproc, Gastal & Oliveira 2011) so map edges follow the photo's edges.
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


def refine_upsample(sigma_work: np.ndarray, guide: np.ndarray, scale: float, refine: bool = True) -> np.ndarray:
    """Bring a working-resolution sigma map to the guide's resolution, in the guide's pixels.

    sigma_work: (h, w) float32 sigma in px of the working image; guide: (H, W, 3) float32 RGB;
    scale: h / H. Returns (H, W) float32 sigma / scale, edge-aware filtered when ``refine``.
    """
    H, W = guide.shape[:2]
    if sigma_work.shape == (H, W):
        up = sigma_work.copy()
    else:
        up = cv2.resize(sigma_work, (W, H), interpolation=cv2.INTER_LINEAR) / np.float32(scale)
    if refine and min(H, W) >= 8:
        # Spatial extent about two working-resolution pixels: it fixes the up-sampling's
        # staircase and blur at object edges without smoothing the map across the photo's edges.
        sigma_spatial = max(2.0, 2.0 / scale)
        guide8 = np.clip(guide * 255 + 0.5, 0, 255).astype(np.uint8)
        up = cv2.ximgproc.dtFilter(guide8, up, sigma_spatial, 25.0, mode=cv2.ximgproc.DTF_RF, numIters=3)
    return np.maximum(up, 0).astype(np.float32)


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
    H, W = rgb.shape[:2]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    long_side = max(H, W)
    target = config.working_size or long_side
    scale = min(1.0, target / long_side)
    if scale < 1.0:
        w, h = max(1, round(W * scale)), max(1, round(H * scale))
        work = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        scale = max(w, h) / long_side
    else:
        work = rgb
    timings["resize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    norm = run_network(work, model, dtype, config.tile, config.tile_overlap)
    timings["network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sigma = refine_upsample(norm * np.float32(sigma_max), rgb, scale, config.refine)
    timings["upsample"] = time.perf_counter() - t0
    if not np.all(np.isfinite(sigma)):
        from defocus_cli.errors import ProcessingError

        raise ProcessingError("the network produced non-finite values (try --precision fp32)")
    return EstimateResult(sigma=sigma, scale=scale, working_size=(work.shape[1], work.shape[0]),
                          timings=timings)
