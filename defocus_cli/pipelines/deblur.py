"""All-in-focus image from a photo and its defocus map (DMENet paper, Sec. 5.4).

The paper deconvolves "the decomposed layers" and composes them. Here:

1. The map's sigma range above ``sharp_sigma`` is cut into ``layers`` levels
   s_1 < ... < s_N (geometric by default); level s_0 = sharp_sigma stands for the input itself.
2. Each pixel takes a convex combination of the two levels around its sigma (linear in
   sigma), so the result varies continuously with the map: no seam where the map crosses a
   level.
3. Level k is deconvolved (ops.deconv, Gaussian kernel of s_k) only where some pixel uses it:
   on the 512 px tiles that contain such pixels, cropped to their bounding box, each with a
   context margin of a few s_k. Tiles overlap and are cross-faded with a partition of unity,
   so tile borders leave no seam either.
4. Context that is sharper than the level (another depth) is marked unknown and extrapolated
   from the level's own pixels, so a depth edge does not ring into them; levels with a large
   sigma are solved on a box-downsampled frame, which loses nothing the blur left.
5. Clipped highlights are unknown data to every deconvolution, and pixels near them keep the
   input (clipping breaks the blur model); by default only the luma is deconvolved and its
   change added to R, G and B.

Memory is bounded by one tile's frame per worker plus the full-size output; the work is
proportional to the area each level actually covers. Frames are independent, so worker threads
deconvolve several at once (one torch thread each) and the main thread adds them to the output
in a fixed order (benchmarks/README.md, "deblur").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defocus_cli.ops.deconv import (
    DeconvConfig,
    deconvolve_frame,
    gaussian_kernel,
    good_fft_size,
    reflect_frame,
    scratch_buffers,
    thread_scratch_buffers,
)

#: px; DeblurConfig.map_margin for maps a network estimated: they over-estimate the small blur
#: of real photos, and deblurring by too large a sigma rings. Chosen on the dfd-real validation
#: scenes by the `defocus eval --deblur` protocol as the margin with the best mean PSNR change
#: whose worst scene stays near 0 dB (the table: benchmarks/README.md, "deblur margin").
ESTIMATED_MAP_MARGIN = 0.625
#: the same choice per estimator that measured a different one (`python
#: benchmarks/bench_deblur_margin.py --split val --model NAME`): the edge map and the fused map
#: are less biased than network B's (0.625 above is network B's, dmenet-lite)
ESTIMATOR_MARGINS = {"fused": 0.25, "edge": 0.25}


def estimated_map_margin(estimator: str | None) -> float:
    """px subtracted from a map that the named estimator made (unknown names: the default)."""
    return ESTIMATOR_MARGINS.get(str(estimator), ESTIMATED_MAP_MARGIN)


@dataclass(frozen=True)
class DeblurConfig:
    """How the layered deblur splits and recombines the work."""

    #: the per-layer deconvolution (prior exponent alpha, data weight lam, continuation)
    deconv: DeconvConfig = field(default_factory=DeconvConfig)
    #: the photo's noise (standard deviation of its luma, 0-1; ``ops.noise.estimate_noise``).
    #: Given, each level's lam comes from ``noise_adaptive_lam`` instead of deconv.lam.
    noise: float | None = None
    #: the photo was JPEG-compressed (``ops.noise.blockiness``): lam is capped at JPEG_LAM
    jpeg: bool = False
    #: number of deconvolved sigma levels (the input itself is one more, at sharp_sigma)
    layers: int = 16
    #: px; pixels at or below this sigma keep the input (a Gaussian this narrow is invisible)
    sharp_sigma: float = 0.5
    #: px; sigma above this is treated as this (None: the map's maximum)
    max_sigma: float | None = None
    #: px subtracted from the map (floored at 0) before it is split: a deconvolution with too
    #: large a sigma overshoots and rings, one with too small a sigma only sharpens less, so a
    #: map with known error is deblurred by its lower bound. 0 for exact maps; maps from the
    #: network use ESTIMATED_MAP_MARGIN (the CLI's and `eval --deblur`'s default).
    map_margin: float = 0.0
    #: "geometric": levels evenly spaced in log sigma, so a level is never more than a fixed
    #: ratio (not a fixed number of px) away from a pixel's sigma; what matters for a
    #: deconvolution is the relative error (0.3 px is a lot at sigma 1 and nothing at 30).
    #: "linear": evenly spaced in px.
    spacing: str = "geometric"
    #: px; a level of sigma s >= 2 * working_sigma is deconvolved on the frame box-downsampled
    #: by f = floor(s / working_sigma), where its sigma is working_sigma..2*working_sigma, and
    #: the upsampled (cubic) correction is added to the full-resolution frame. A Gaussian of
    #: sigma >= 4 px (in small pixels) leaves < 1e-30 of any frequency above the small
    #: frame's Nyquist, so nothing recoverable is lost there, and the work drops by f^2.
    #: 4 keeps the PSNR of full-resolution deconvolution on the two-depth test scene and costs no
    #: more time than 3 on 12 MP (benchmarks/README.md, "deblur working_sigma").
    working_sigma: float | None = 4.0
    #: fraction of the level spacing over which neighbouring levels cross-fade; 1 = linear
    #: interpolation over the whole spacing (smoothest), smaller = less overlap, less work
    blend: float = 1.0
    #: tile pitch in px; one tile's frame bounds the memory of one deconvolution
    tile: int = 512
    #: half-width (px) of the cross-fade between neighbouring tiles of one layer
    overlap: int = 16
    #: context around a tile in units of the layer's sigma (+ 8 px); measured in
    #: tests/pipelines/test_deblur.py: tiled equals whole-image deconvolution to < 1/255 mean
    margin_sigmas: float = 4.0
    #: "luma": deconvolve the luma (Rec. 601) and add its change to R, G and B alike;
    #: "rgb": deconvolve each channel. Measured on real JPEG photos (benchmarks/README.md):
    #: luma is as good or better (JPEG keeps chroma at half resolution and coarsely
    #: quantised, and deconvolving it amplifies those artefacts and colour fringes) at a third
    #: of the work.
    channels: str = "luma"
    #: pixels with any channel at or above this are clipped highlights; the blur model does
    #: not hold there, and deconvolving near them rings. Pixels within 2 sigma of one keep the
    #: input, fading to full deconvolution at 4 sigma + 1 px, and the deconvolutions treat
    #: that zone as unknown data (extrapolated from its neighbours, like context of another
    #: depth), so the halo does not ring into the pixels around it. The map itself is left
    #: alone, so highlights do not cut it into pieces that each need every level. None: off.
    saturation: float | None = 0.98

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"DeblurConfig: layers must be >= 1, got {self.layers}")
        if self.sharp_sigma < 0:
            raise ValueError(f"DeblurConfig: sharp_sigma must be >= 0, got {self.sharp_sigma}")
        if not self.map_margin >= 0:
            raise ValueError(f"DeblurConfig: map_margin must be >= 0, got {self.map_margin}")
        if self.max_sigma is not None and not self.max_sigma > self.sharp_sigma:
            raise ValueError("DeblurConfig: max_sigma must exceed sharp_sigma")
        if self.noise is not None and not self.noise >= 0:
            raise ValueError(f"DeblurConfig: noise must be >= 0, got {self.noise}")
        if self.channels not in ("luma", "rgb"):
            raise ValueError(f"DeblurConfig: channels must be luma or rgb, got {self.channels!r}")
        if self.spacing not in ("geometric", "linear"):
            raise ValueError(f"DeblurConfig: spacing must be geometric or linear, got {self.spacing!r}")
        if self.spacing == "geometric" and self.sharp_sigma <= 0:
            raise ValueError("DeblurConfig: geometric spacing needs sharp_sigma > 0")
        if self.working_sigma is not None and self.working_sigma < 2.0:
            raise ValueError("DeblurConfig: working_sigma must be >= 2 px (or None)")
        if not 0 < self.blend <= 1:
            raise ValueError(f"DeblurConfig: blend must be in (0, 1], got {self.blend}")
        if self.overlap < 1 or self.tile < 4 * self.overlap:
            raise ValueError("DeblurConfig: need overlap >= 1 and tile >= 4 * overlap")
        if self.margin_sigmas < 0:
            raise ValueError("DeblurConfig: margin_sigmas must be >= 0")


#: noise_adaptive_lam: lam = LAM_RULE_K * sigma^LAM_RULE_SIGMA_EXP / noise^LAM_RULE_NOISE_EXP,
#: fitted on synthetic blur with known noise (BSDS500 val photos, not the benchmark's Kodak24;
#: benchmarks/README.md, "deblur: noise-adaptive lam")
LAM_RULE_K = 1.27
LAM_RULE_SIGMA_EXP = 1.0
LAM_RULE_NOISE_EXP = 1.6
#: bounds of the rule: below LAM_MIN the prior wipes detail. Above LAM_MAX the rule still gains
#: on uniform blur but loses on layered scenes, whose blur is not one convolution at depth edges
#: (synthetic test renders with true maps: mean +0.65 dB at 10000, +1.01 at 3000, +0.89 at the
#: fixed 300; benchmarks/README.md, "deblur: noise-adaptive lam")
LAM_MIN, LAM_MAX = 200.0, 3000.0
#: the largest lam for JPEG photos: compression removes the noise the rule would see, and on
#: real f/2.8 JPEG photos (dfd-indoor, ground-truth maps) lam above 300 loses
JPEG_LAM = 300.0
#: ops.noise.blockiness above this: the photo was JPEG-compressed (PNG and raw renders measure
#: 0.98-1.02; JPEG q95 1.02-1.17, q75 1.2-1.75, the dfd-indoor photos 1.17-1.44)
JPEG_BLOCKINESS = 1.04


def noise_adaptive_lam(noise: float, sigma: float, jpeg: bool = False) -> float:
    """The data weight for deconvolving a Gaussian blur of ``sigma`` px under white noise of
    standard deviation ``noise`` (0-1 units): the fitted rule, within [LAM_MIN, LAM_MAX], at
    most JPEG_LAM for JPEG photos."""
    floor = 1.0 / (255.0 * math.sqrt(12.0))  # 8-bit quantisation: no photo is cleaner
    lam = LAM_RULE_K * max(sigma, 0.25) ** LAM_RULE_SIGMA_EXP / max(noise, floor) ** LAM_RULE_NOISE_EXP
    lam = min(max(lam, LAM_MIN), LAM_MAX)
    return min(lam, JPEG_LAM) if jpeg else lam


def level_deconv(config: "DeblurConfig", s_work: float, f: int = 1) -> DeconvConfig:
    """The deconvolution of one level: config.deconv, with lam from the noise when it is known.
    f: the level's frame is box-downsampled by f, which divides white noise by f."""
    if config.noise is None:
        return config.deconv
    lam = noise_adaptive_lam(config.noise / f, s_work, config.jpeg)
    return dataclasses.replace(config.deconv, lam=lam)


def measure_noise(rgb: np.ndarray) -> dict[str, Any]:
    """What the noise-adaptive deblur needs of a photo: its luma noise, its blockiness and
    whether that makes it a JPEG photo."""
    from defocus_cli.ops.noise import blockiness, estimate_noise

    b = blockiness(rgb)
    return {"noise": estimate_noise(rgb), "blockiness": b, "jpeg": b > JPEG_BLOCKINESS}


@dataclass
class DeblurResult:
    """image: (H, W, 3) float32 in [0, 1]. levels: (N+1,) sigma of each level, levels[0] the
    input's. layer_fraction: (N+1,) share of the image's weight each level carries.
    frames: deconvolutions run; frame_pixels: pixels they covered (margins included), the
    work done (compare with layers * H * W for a naive per-layer full-image deblur)."""

    image: np.ndarray
    levels: np.ndarray
    layer_fraction: np.ndarray
    frames: int
    frame_pixels: int


def sigma_levels(sigma_top: float, config: DeblurConfig) -> np.ndarray:
    """(N+1,) increasing levels: sharp_sigma (the input itself), then N levels up to sigma_top."""
    n = config.layers
    if config.spacing == "geometric":
        return config.sharp_sigma * (sigma_top / config.sharp_sigma) ** (np.arange(n + 1) / n)
    return np.linspace(config.sharp_sigma, sigma_top, n + 1)


def level_weights(
    sigma: np.ndarray, levels: np.ndarray, blend: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index j of the lower level and weight t of level j+1 (level j gets 1 - t).

    sigma: (H, W) px; levels: (N+1,) increasing. t is linear in sigma between levels j and
    j+1, steepened around the midpoint when blend < 1. Below levels[0]: j = 0, t = 0 (the
    input); above the top: the top level.
    """
    n = len(levels) - 1
    lv = levels.astype(np.float32)
    s = sigma.astype(np.float32, copy=False)
    j = np.clip(np.searchsorted(lv, s, side="right") - 1, 0, n - 1).astype(np.int16)
    lo, hi = lv[j], lv[j + 1]
    t = np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    if blend < 1.0:
        t = np.clip((t - 0.5) / blend + 0.5, 0.0, 1.0)
    return j, t.astype(np.float32)


def _tile_spans(n: int, pitch: int, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    """Split [0, n) into near-equal tiles; return (start, stop, weight) of each extended tile.

    Extended tiles reach ``overlap`` px past their neighbours' borders; their 1-D weights ramp
    linearly across each shared border so that they sum to 1 at every position.
    """
    count = max(1, math.ceil(n / pitch))
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    if count > 1 and np.min(np.diff(bounds)) < 2 * overlap:
        return [(0, n, np.ones(n, dtype=np.float32))]
    spans = []
    for i in range(count):
        lo = bounds[i] - overlap if i > 0 else 0
        hi = bounds[i + 1] + overlap if i < count - 1 else n
        w = np.ones(hi - lo, dtype=np.float32)
        ramp = (np.arange(2 * overlap, dtype=np.float32) + 0.5) / (2 * overlap)
        if i > 0:
            w[: 2 * overlap] = ramp
        if i < count - 1:
            w[-2 * overlap :] = ramp[::-1]
        spans.append((lo, hi, w))
    return spans


def _clamped_frame(a: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """a[y0:y1, x0:x1] with indices outside the array clamped to its edge (a copy)."""
    h, w = a.shape[:2]
    ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if yb <= ya or xb <= xa:  # no overlap with the array: index every pixel
        ys = np.clip(np.arange(y0, y1), 0, h - 1)
        xs = np.clip(np.arange(x0, x1), 0, w - 1)
        return a[ys[:, None], xs[None, :]]
    pad = ((ya - y0, y1 - yb), (xa - x0, x1 - xb)) + ((0, 0),) * (a.ndim - 2)
    return np.pad(a[ya:yb, xa:xb], pad, mode="edge")


def clipped_mask(rgb: np.ndarray, level: float) -> np.ndarray | None:
    """(H, W) bool: pixels with any channel >= level (clipped highlights); None if there are none."""
    clipped = rgb.max(axis=2) >= level
    return clipped if clipped.any() else None


def saturation_keep(clipped: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(H, W) float32 share of the deblurred value each pixel takes near clipped highlights.

    A pixel at distance d from the nearest clipped one gets clip((d - 2 sigma) / (2 sigma + 1),
    0, 1): the input within 2 sigma of a highlight, full deconvolution beyond 4 sigma + 1 px.
    """
    import cv2

    dist = cv2.distanceTransform((~clipped).astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip((dist - 2.0 * sigma) / (2.0 * sigma + 1.0), 0.0, 1.0).astype(np.float32)


#: Rec. 601 luma weights
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _restore_tile(
    src: np.ndarray,
    sigma: np.ndarray,
    levels: np.ndarray,
    k: int,
    region: tuple[int, int, int, int],
    config: DeblurConfig,
    device: Any,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Level k's deconvolution of src[y0:y1, x0:x1] -> ((h, w, C) float32, frame pixels).

    src: (H, W, C) with C = 3 (RGB) or 1 (luma). keep: optional (H, W) saturation_keep weights;
    1 - keep marks pixels that are not the blur model's data (clipped highlights, their halo).
    """
    import cv2

    y0, y1, x0, x1 = region
    eh, ew = y1 - y0, x1 - x0
    s_k = float(levels[k])
    f = 1
    if config.working_sigma is not None and s_k >= 2 * config.working_sigma:
        f = int(s_k // config.working_sigma)
    # full-resolution context margin; the frame is a multiple of f of FFT-friendly sizes
    margin = int(math.ceil(config.margin_sigmas * s_k)) + 8 * f
    fh = good_fft_size(math.ceil((eh + 2 * margin) / f))
    fw = good_fft_size(math.ceil((ew + 2 * margin) / f))
    top, left = (fh * f - eh) // 2, (fw * f - ew) // 2
    window = (y0 - top, y0 - top + fh * f, x0 - left, x0 - left + fw * f)
    frame = reflect_frame(src, *window)
    sig_frame = _clamped_frame(sigma, *window)
    bad_frame = None if keep is None else 1.0 - _clamped_frame(keep, *window)
    # a box filter of width f blurs by (f^2 - 1) / 12 px^2 per axis; the rest is left to undo
    s_work = math.sqrt(max(s_k**2 - (f * f - 1) / 12.0, 0.25)) / f
    if f > 1:
        frame_small = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
        frame_small = frame_small.reshape(fh, fw, -1)  # cv2 drops a single channel axis
        sig_frame = cv2.resize(sig_frame, (fw, fh), interpolation=cv2.INTER_AREA)
        if bad_frame is not None:
            bad_frame = cv2.resize(bad_frame, (fw, fh), interpolation=cv2.INTER_AREA)
    else:
        frame_small = frame
    # Context sharper than the level below this one (a nearer or farther depth in focus)
    # contradicts the kernel; at a depth edge it would ring into this level's pixels. It is
    # marked unknown, so the solver extrapolates this level's content there instead.
    below = float(levels[k - 1])
    gap = below - float(levels[k - 2]) if k >= 2 else float(levels[1] - levels[0])
    unknown = np.clip((below - sig_frame) / gap, 0.0, 1.0).astype(np.float32)
    if bad_frame is not None:
        # clipped highlights and their halo: brighter than recorded, not the blur model's data
        unknown = np.maximum(unknown, bad_frame)
    # keep one extra low-resolution pixel around the region so upsampling has neighbours
    ky0, kx0 = max(top // f - 1, 0), max(left // f - 1, 0)
    ky1, kx1 = min(-(-(top + eh) // f) + 1, fh), min(-(-(left + ew) // f) + 1, fw)
    restored = deconvolve_frame(
        np.ascontiguousarray(np.moveaxis(frame_small, -1, 0)),
        gaussian_kernel(s_work),
        (ky0, ky1, kx0, kx1),
        level_deconv(config, s_work, f),
        device,
        unknown if unknown.any() else None,
    )
    restored = np.moveaxis(restored, 0, -1)
    if f == 1:
        return restored[top - ky0 : top - ky0 + eh, left - kx0 : left - kx0 + ew], fh * fw
    # add the upsampled correction to the full-resolution frame: detail above the small
    # frame's Nyquist is kept as it is (the blur left none of the scene's there)
    correction = restored - frame_small[ky0:ky1, kx0:kx1]
    # no correction from pixels of another depth: interpolated across a depth edge it would
    # overshoot on this level's side
    correction *= 1.0 - unknown[ky0:ky1, kx0:kx1, None]
    up = cv2.resize(correction, ((kx1 - kx0) * f, (ky1 - ky0) * f), interpolation=cv2.INTER_CUBIC)
    up = up.reshape(up.shape[0], up.shape[1], -1)
    oy, ox = top - ky0 * f, left - kx0 * f
    return frame[top : top + eh, left : left + ew] + up[oy : oy + eh, ox : ox + ew], fh * fw


def _ordered_map(fn: Callable, jobs: list, workers: int | None, device: Any) -> Iterator:
    """fn over jobs, results yielded in job order; ``workers`` threads on the CPU.

    Each worker thread has its own deconvolution scratch buffers and torch runs with one
    thread meanwhile. At most 2 * workers jobs are in flight, so finished frames waiting for
    an earlier one stay few.
    """
    import torch

    on_cpu = device is None or torch.device(device).type == "cpu"
    if workers is None:
        workers = torch.get_num_threads() if on_cpu else 1
    workers = min(workers, max(len(jobs), 1)) if on_cpu else 1
    if workers == 1:
        with scratch_buffers():
            yield from map(fn, jobs)
        return

    def start_worker() -> None:
        torch.set_num_threads(1)
        thread_scratch_buffers()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, initializer=start_worker) as pool:
            queue = iter(jobs)
            pending = deque(pool.submit(fn, job) for job in itertools.islice(queue, 2 * workers))
            while pending:
                result = pending.popleft().result()
                job = next(queue, None)
                if job is not None:
                    pending.append(pool.submit(fn, job))
                yield result
    finally:
        torch.set_num_threads(threads)


def deblur(
    rgb: np.ndarray,
    sigma: np.ndarray,
    config: DeblurConfig = DeblurConfig(),
    *,
    device: Any = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DeblurResult:
    """Spatially varying deblur of ``rgb`` given its defocus map.

    rgb: (H, W, 3) float32 in [0, 1]. sigma: (H, W) float, Gaussian blur sigma in px of rgb,
    finite and >= 0 (ops.maps.resample_map brings a map of another size to it). device: None for
    numpy, or a torch.device for torch.fft on it (faster on CPU too). workers: frames
    deconvolved at once on the CPU, each by one thread (torch runs single-threaded meanwhile
    and its thread count is restored afterwards); independent frames scale better than
    threads inside each small FFT, and degrade gracefully on a busy machine. None: torch's
    thread count on the CPU, 1 on a GPU. Results are added in job order, so any worker count
    gives the same image as one worker with one torch thread, bit for bit.
    progress(done, total) is called after each frame.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"deblur: rgb must be (H, W, 3), got shape {rgb.shape}")
    sigma = np.asarray(sigma)
    if sigma.shape != rgb.shape[:2]:
        raise ValueError(
            f"deblur: defocus map shape {sigma.shape} must equal the image's {rgb.shape[:2]}"
        )
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError("deblur: the defocus map must be finite and >= 0 everywhere")
    if workers is not None and workers < 1:
        raise ValueError(f"deblur: workers must be >= 1, got {workers}")
    rgb = rgb.astype(np.float32, copy=False)
    if config.map_margin > 0:
        sigma = np.maximum(sigma - config.map_margin, 0)
    h, w = sigma.shape
    clipped = None if config.saturation is None else clipped_mask(rgb, config.saturation)
    keep = None if clipped is None else saturation_keep(clipped, sigma)

    top = float(sigma.max()) if config.max_sigma is None else float(config.max_sigma)
    if top <= config.sharp_sigma:
        # nothing is blurred enough to deconvolve
        levels = np.array([config.sharp_sigma])
        return DeblurResult(rgb.copy(), levels, np.ones(1), 0, 0)
    levels = sigma_levels(top, config)
    j, t = level_weights(sigma, levels, config.blend)
    n = config.layers

    src = rgb if config.channels == "rgb" else (rgb @ LUMA)[..., None]
    # level 0 is the input itself
    w0 = np.where(j == 0, 1.0 - t, 0.0).astype(np.float32)
    out = src * w0[..., None]
    fraction = np.zeros(n + 1)
    fraction[0] = w0.mean()
    del w0

    ys = _tile_spans(h, config.tile, config.overlap)
    xs = _tile_spans(w, config.tile, config.overlap)
    # which levels each extended tile needs
    jobs: list[tuple[int, int, int]] = []
    for ti, (y0, y1, _) in enumerate(ys):
        for tj, (x0, x1, _) in enumerate(xs):
            jj, tt = j[y0:y1, x0:x1], t[y0:y1, x0:x1]
            lower = np.bincount(jj[tt < 1.0].ravel(), minlength=n + 1)
            upper = np.bincount(jj[tt > 0.0].ravel() + 1, minlength=n + 2)
            for k in range(1, n + 1):
                if lower[k] or upper[k]:
                    jobs.append((k, ti, tj))
    jobs.sort()  # level-major: consecutive frames share kernel and FFT constants

    def run(job: tuple[int, int, int]) -> tuple | None:
        k, ti, tj = job
        y0, y1, wy = ys[ti]
        x0, x1, wx = xs[tj]
        jj, tt = j[y0:y1, x0:x1], t[y0:y1, x0:x1]
        # only the bounding box of this level's pixels in the tile is deconvolved
        used = ((jj == k) & (tt < 1.0)) | ((jj == k - 1) & (tt > 0.0))
        rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
        if rows.size == 0:
            return None
        by0, by1, bx0, bx1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        jb, tb = jj[by0:by1, bx0:bx1], tt[by0:by1, bx0:bx1]
        wk = np.where(jb == k, 1.0 - tb, np.where(jb == k - 1, tb, 0.0)).astype(np.float32)
        wk *= np.outer(wy[by0:by1], wx[bx0:bx1])
        box = (y0 + by0, y0 + by1, x0 + bx0, x0 + bx1)
        restored, pixels = _restore_tile(src, sigma, levels, k, box, config, device, keep)
        restored *= wk[..., None]
        return k, box, restored, float(wk.sum(dtype=np.float64)), pixels

    frame_pixels = 0
    # results are added in job order whatever the worker count: the same output bit for bit
    for done, result in enumerate(_ordered_map(run, jobs, workers, device), start=1):
        if result is not None:
            k, box, restored, weight, pixels = result
            out[box[0] : box[1], box[2] : box[3]] += restored
            fraction[k] += weight / (h * w)
            frame_pixels += pixels
        if progress is not None:
            progress(done, len(jobs))

    if keep is not None:
        # near clipped highlights the input stays (the blur model does not hold there)
        out = src + keep[..., None] * (out - src)
    if config.channels == "luma":
        out = rgb + (out - src)  # the luma's change, added to R, G and B alike
    np.clip(out, 0.0, 1.0, out=out)
    return DeblurResult(out, levels, fraction, len(jobs), frame_pixels)
