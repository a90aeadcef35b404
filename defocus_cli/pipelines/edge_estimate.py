"""The edge-based, depth-edge-aware estimator of paper 002, and its fusion with network B.

Edge map of one photo (``estimate_edges``), in the order it runs:

1. the photo at the *edge working resolution* (long side ``working_size``, INTER_AREA);
2. edge points (``ops.edges.detect_edges``: Canny at two smoothing scales), at most
   ``max_points`` (an even random subset above that);
3. both trunks of ``models.edge.EdgeNets`` once over the working image, then B-NET's sigma and
   E-NET's depth-edge probability at every point (the heads are the only per-point cost);
4. the **sparse map**: B-NET's sigma at pattern edges (depth probability < ``depth_threshold``);
   for photos at least twice the working size, the sharp ones (below ``fine_below`` px of the
   photo) are measured again on the photo itself (``fine_pass``), where the working size
   cannot resolve them;
5. the **dense map** (``propagate``): the paper's normalised domain-transform interpolation
   (Eq. 1-3), on a grid of long side ``grid_size``: the sparse values are pooled into the grid
   cells, the guide is the grid image simplified by the same filter (sigma_s 7, sigma_r 0.5),
   sigma_s = min(h, w) / ``spatial_divisor`` (the paper: 8; here 2), sigma_r = 3.75 and a
   penalty psi at depth-edge cells (dilated by one cell, since the points are a sample of the
   edge), which stops propagation across object boundaries; the grid map is brought to full
   resolution by the colour-guided up-sampling network B uses (``estimate.refine_upsample``);
6. after the fusion below, the map is pulled toward the full-resolution measurements near them
   (``local_correction``).

Units: sigma is Gaussian px of the working image, divided by its scale at the end (px of the
photo), as network B's maps are.

Fusion with network B's dense map (``config.fusion``): "residual": B's map keeps its shape and
is corrected toward the edge estimates where they exist (the residual, edge sigma - B's sigma
at pattern-edge points, is propagated by the same filter and added with the weight
support / (support + ``fuse_k``), support being the propagated density of edge points);
"blend": the edge map and B's map averaged with weight ``blend`` on B's; "edge": the edge map
alone. Which one ships is measured (``benchmarks/select_edge_fusion.py``, the model card).

Photos with few edges (flat sky, blur everywhere, noise that Canny rejects): below
``min_points`` pattern-edge points the edge map cannot be measured; the edge estimator then
returns network B's map (``EstimateResult.info["fallback"]`` says so), and the fused map is B's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from defocus_cli.device import autocast
from defocus_cli.models.edge import HALF, EdgeNets
from defocus_cli.ops.domain_transform import propagate_sparse, simplify_image
from defocus_cli.ops.edges import detect_edges, edge_points
from defocus_cli.pipelines.estimate import EstimateResult, refine_upsample, working_image

#: long side (px) at which edges are measured; see the model card for how it was chosen
EDGE_WORKING_SIZE = 1024
FUSIONS = ("edge", "residual", "blend")


@dataclass(frozen=True)
class EdgeConfig:
    """How the edge map is made. The simplification filter and sigma_r are the paper's; the
    depth threshold, psi, the spatial divisor, the grid and the blend weight were chosen on the
    validation splits (``benchmarks/select_edge_fusion.py``), the full-resolution pass's
    settings on the tuning half of 10 MP renders (``benchmarks/bench_full_res.py --synthetic``;
    the validation photos are too small to run it); the model card has the figures."""

    working_size: int = EDGE_WORKING_SIZE
    max_points: int = 20000
    depth_threshold: float = 0.85
    grid_size: int = 256
    simplify_sigma_s: float = 7.0
    simplify_sigma_r: float = 0.5
    sigma_r: float = 3.75
    #: sigma_s = min(h, w) / spatial_divisor at the grid (the paper: 8)
    spatial_divisor: float = 2.0
    psi: float = 300.0
    min_points: int = 50
    fuse_k: float = 1.0
    #: "residual" (B corrected toward the edges), "blend" ((1 - blend) x the edge map + blend x
    #: B's map) or "edge" (the edge map alone)
    fusion: str = "blend"
    blend: float = 0.2
    #: the full-resolution pass (``fine_pass``, ``local_correction``): it runs when the edge
    #: working scale is at most ``fine_max_scale``; pattern points that read below
    #: ``fine_below`` px of the photo at the working size are measured again by B-NET on the
    #: photo itself, ``fine_points`` of them at most (0: no pass), and the map is pulled toward
    #: them within ``fine_reach`` grid cells (sigma_s of that filter) with weight
    #: support / (support + ``fine_k``)
    fine_max_scale: float = 0.5
    fine_below: float = 1.5
    fine_points: int = 512
    fine_reach: float = 6.0
    fine_k: float = 0.001

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"EdgeConfig: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if min(self.fine_points, self.fine_below, self.fine_reach, self.fine_k) < 0:
            raise ValueError("EdgeConfig: fine_points, fine_below, fine_reach and fine_k must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EdgePoints:
    """Estimates at edge points of the working image (``scale`` = working / photo)."""

    ys: np.ndarray
    xs: np.ndarray
    sigma: np.ndarray  # working px
    p_depth: np.ndarray
    shape: tuple[int, int]
    scale: float

    def pattern(self, threshold: float) -> np.ndarray:
        return self.p_depth < threshold

    def subset(self, keep: np.ndarray) -> EdgePoints:
        return EdgePoints(self.ys[keep], self.xs[keep], self.sigma[keep], self.p_depth[keep], self.shape,
                          self.scale)


@torch.inference_mode()
def measure_points(work: np.ndarray, model: EdgeNets, config: EdgeConfig,
                   dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """B-NET and E-NET at the edge points of a working image -> (ys, xs, sigma px, p_depth)."""
    ys, xs = edge_points(detect_edges(work), max_points=config.max_points)
    if len(ys) == 0:
        empty = np.zeros(0, np.float32)
        return ys, xs, empty, empty
    device = next(model.parameters()).device
    t = torch.from_numpy(np.ascontiguousarray(work)).permute(2, 0, 1)[None].to(device)
    with autocast(device, dtype):
        feats = model.dense(t)
        p_depth, sigma = model.at_points(feats, torch.from_numpy(ys).to(device), torch.from_numpy(xs).to(device),
                                         config.depth_threshold)
    return ys, xs, sigma.float().cpu().numpy(), p_depth.float().cpu().numpy()


def photo_patches(rgb: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """PATCH x PATCH windows of an (H, W, 3) photo centred on pixels (ys, xs), replicating the
    border -> (N, PATCH, PATCH, 3) float32 (no padded copy of the photo is made)."""
    H, W = rgb.shape[:2]
    off = np.arange(-HALF, HALF + 1)
    rows = np.clip(ys[:, None] + off[None, :], 0, H - 1)
    cols = np.clip(xs[:, None] + off[None, :], 0, W - 1)
    return rgb[rows[:, :, None], cols[:, None, :]]


@torch.inference_mode()
def fine_pass(rgb: np.ndarray, points: EdgePoints, model: EdgeNets, config: EdgeConfig,
              dtype: torch.dtype | None = None, seed: int = 0) -> tuple[EdgePoints, np.ndarray]:
    """Sharp pattern edges measured again at the photo's own resolution -> (points with those
    estimates, mask of the points measured at full resolution).

    At a working scale s one working px is 1/s px of the photo, so B-NET's resolution (validation
    MAE 0.27 working px) becomes ~0.27/s px: at 10 MP (s = 0.26) no estimate reads below ~0.7
    px, and an in-focus edge cannot read sharp. Pattern points whose working estimate is below
    ``fine_below`` px of the photo are measured by B-NET in the patch form on the photo itself
    (an even random subset of ``fine_points``: each patch costs ~16 MFLOP; 512 and the rest of
    the pass take 0.20-0.25 s at 10 MP);
    their sigma replaces the working estimate. The other points of that range keep their place
    in the sparse map (its density steers the propagation) and take the least-squares line from
    working to full-resolution sigma fitted on the measured subset, i.e. the conditional mean
    (on the 10 MP dfd-outdoor photos the two correlate at 0.1-0.3 only: in this range the
    working estimate is mostly noise). Depth-edge probabilities stay those of the working size.
    """
    measured = np.zeros(len(points.ys), bool)
    if points.scale > config.fine_max_scale or config.fine_points == 0:
        return points, measured
    photo_px = points.sigma / np.float32(points.scale)
    candidates = np.flatnonzero(points.pattern(config.depth_threshold) & (photo_px < config.fine_below))
    if len(candidates) < 2:
        return points, measured
    chosen = candidates
    if len(candidates) > config.fine_points:
        chosen = np.sort(np.random.default_rng(seed).choice(candidates, config.fine_points, replace=False))
    H, W = rgb.shape[:2]
    ys = np.clip(np.round((points.ys[chosen] + 0.5) / points.scale - 0.5).astype(np.int64), 0, H - 1)
    xs = np.clip(np.round((points.xs[chosen] + 0.5) / points.scale - 0.5).astype(np.int64), 0, W - 1)
    device = next(model.parameters()).device
    patches = torch.from_numpy(photo_patches(rgb, ys, xs)).permute(0, 3, 1, 2).to(device)
    with autocast(device, dtype):
        sigma = model.sigma_of(model.forward_blur(patches.contiguous(memory_format=torch.channels_last)))
    fine = sigma.float().cpu().numpy()
    updated = points.sigma.copy()
    if len(chosen) < len(candidates):
        slope, offset = np.polyfit(photo_px[chosen].astype(np.float64), fine.astype(np.float64), 1)
        updated[candidates] = np.maximum(offset + slope * photo_px[candidates], 0) * points.scale
    updated[chosen] = fine * np.float32(points.scale)
    measured[chosen] = True
    return EdgePoints(points.ys, points.xs, updated, points.p_depth, points.shape, points.scale), measured


def _grid_of(work: np.ndarray, grid_size: int) -> tuple[np.ndarray, float]:
    h, w = work.shape[:2]
    g = min(1.0, grid_size / max(h, w))
    if g >= 1.0:
        return np.clip(work, 0.0, 1.0), 1.0
    size = (max(1, round(w * g)), max(1, round(h * g)))
    # INTER_AREA may round a hair outside [0, 1]
    return np.clip(cv2.resize(work, size, interpolation=cv2.INTER_AREA), 0.0, 1.0), size[0] / w


def _pool(ys: np.ndarray, xs: np.ndarray, values: np.ndarray, shape: tuple[int, int], g: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Sums of values and counts of points per grid cell -> (sum, count), both (h, w) float32."""
    h, w = shape
    gy = np.clip(((ys + 0.5) * g).astype(np.int64), 0, h - 1)
    gx = np.clip(((xs + 0.5) * g).astype(np.int64), 0, w - 1)
    flat = gy * w + gx
    total = np.bincount(flat, weights=values, minlength=h * w).reshape(h, w).astype(np.float32)
    count = np.bincount(flat, minlength=h * w).reshape(h, w).astype(np.float32)
    return total, count


@dataclass
class Propagation:
    """Everything the dense step needs on the grid, made once per photo."""

    grid_rgb: np.ndarray
    guide: np.ndarray
    penalty: np.ndarray
    g: float  # grid / working
    sigma_s: float

    def spread(self, ys, xs, values, config: EdgeConfig) -> tuple[np.ndarray, np.ndarray]:
        """Normalised interpolation of point values -> (dense (h, w), support (h, w))."""
        total, count = _pool(ys, xs, values, self.grid_rgb.shape[:2], self.g)
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return propagate_sparse(mean, count, self.guide, self.sigma_s, config.sigma_r, penalty=self.penalty)


def prepare_propagation(work: np.ndarray, points: EdgePoints, config: EdgeConfig) -> Propagation:
    grid_rgb, g = _grid_of(work, config.grid_size)
    guide = simplify_image(grid_rgb, config.simplify_sigma_s, config.simplify_sigma_r)
    depth = ~points.pattern(config.depth_threshold)
    _, depth_count = _pool(points.ys[depth], points.xs[depth], np.ones(int(depth.sum())), grid_rgb.shape[:2], g)
    # depth edges are sampled points: closing one-cell gaps keeps the barrier a line
    barrier = cv2.dilate((depth_count > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    penalty = np.where(barrier, np.float32(config.psi), np.float32(0)).astype(np.float32)
    h, w = grid_rgb.shape[:2]
    return Propagation(grid_rgb, guide, penalty, g, min(h, w) / config.spatial_divisor)


def local_correction(out: np.ndarray, points: EdgePoints, prop: Propagation,
                     config: EdgeConfig) -> np.ndarray:
    """The (H, W) map, px of the photo, pulled toward the full-resolution estimates near them.

    The residuals (a point's sigma - the map there) are spread by the same depth-edge-aware
    filter with a short reach (sigma_s ``fine_reach`` grid cells) and added with the weight
    support / (support + ``fine_k``): the map follows the measurements where they are dense and
    is unchanged away from them.
    """
    H, W = out.shape
    s = np.float32(points.scale)
    rows = np.minimum(((points.ys + 0.5) / s).astype(np.int64), H - 1)
    cols = np.minimum(((points.xs + 0.5) / s).astype(np.int64), W - 1)
    residual = points.sigma / s - out[rows, cols]
    total, count = _pool(points.ys, points.xs, residual, prop.grid_rgb.shape[:2], prop.g)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    spread, support = propagate_sparse(mean, count, prop.guide, config.fine_reach, config.sigma_r,
                                       penalty=prop.penalty)
    correction = spread * (support / (support + np.float32(config.fine_k)))
    up = cv2.resize(correction.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    out = out + up
    return np.maximum(out, 0, out=out)


def estimate_edges(rgb: np.ndarray, model: EdgeNets, config: EdgeConfig = EdgeConfig(),
                   dtype: torch.dtype | None = None, refine: bool = True,
                   fallback=None, base: EstimateResult | None = None,
                   points: EdgePoints | None = None) -> EstimateResult:
    """The edge-based map (``config.fusion == "edge"``) or its fusion with network B's map
    ``base`` ("residual", "blend") of one (H, W, 3) float32 photo -> EstimateResult (px of the photo).

    fallback(): network B's EstimateResult, called when the photo has too few pattern edges
    (and for the fusion, when ``base`` is None). points: measurements made earlier at this
    working size with B-NET at every point (``depth_threshold`` 1), to try settings of the
    dense step without running the networks again.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    work, scale = working_image(rgb, config.working_size)
    timings["edge_resize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if points is None:
        points = EdgePoints(*measure_points(work, model, config, dtype), work.shape[:2], scale)
    timings["edge_networks"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    points, measured = fine_pass(rgb, points, model, config, dtype)
    timings["edge_full_res"] = time.perf_counter() - t0
    ys, xs, sigma = points.ys, points.xs, points.sigma
    pattern = points.pattern(config.depth_threshold) & np.isfinite(sigma)
    info = {"edge_points": int(len(ys)), "pattern_points": int(pattern.sum()),
            "edge_working_size": [work.shape[1], work.shape[0]], "full_res_points": int(measured.sum())}
    if config.fusion != "edge" and base is None:
        if fallback is None:
            raise ValueError("estimate_edges: the residual fusion needs network B's map (base or fallback)")
        base = fallback()
    if pattern.sum() < config.min_points:
        if base is None:
            if fallback is None:
                raise ValueError("estimate_edges: too few edges and no fallback estimator")
            base = fallback()
        info["fallback"] = (f"{int(pattern.sum())} pattern-edge points (< {config.min_points}): "
                            "network B's map alone")
        return EstimateResult(base.sigma, base.scale, base.working_size, {**base.timings, **timings}, info)

    t0 = time.perf_counter()
    prop = prepare_propagation(work, points, config)
    py, px, ps = ys[pattern], xs[pattern], sigma[pattern]
    H, W = rgb.shape[:2]
    if config.fusion in ("edge", "blend"):
        dense, _ = prop.spread(py, px, ps, config)
        timings["edge_propagate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = refine_upsample(np.maximum(dense, 0).astype(np.float32) * np.float32(prop.g), prop.grid_rgb,
                              rgb, scale * prop.g, refine)
        if config.fusion == "blend":
            out = cv2.addWeighted(out, 1 - config.blend, base.sigma, config.blend, 0.0)
    else:
        # B's map at the points, in working px; the correction is smooth, so plain bilinear
        # up-sampling carries it, and B's own full-resolution detail stays
        b_pts = base.sigma[np.minimum(((py + 0.5) / scale).astype(np.int64), H - 1),
                           np.minimum(((px + 0.5) / scale).astype(np.int64), W - 1)] * np.float32(scale)
        residual, support = prop.spread(py, px, ps - b_pts, config)
        correction = residual * (support / (support + np.float32(config.fuse_k)))
        timings["edge_propagate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        up = cv2.resize(correction.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
        out = np.maximum(base.sigma + up * np.float32(1.0 / scale), 0).astype(np.float32)
    timings["edge_upsample"] = time.perf_counter() - t0
    if measured.any():
        t0 = time.perf_counter()
        out = local_correction(out, points.subset(measured), prop, config)
        timings["edge_full_res"] += time.perf_counter() - t0
    if base is not None:
        timings = {**base.timings, **timings}
    return EstimateResult(out, scale, (work.shape[1], work.shape[0]), timings, info)
