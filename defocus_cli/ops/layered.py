"""Layered defocus rendering (DMENet paper, Sec. 3.3 "SYNDOF"; reused by `magnify`).

The scene is cut into at most 350 layers of (nearly) equal blur. Each layer's premultiplied
colour and its coverage mask are blurred with that layer's Gaussian sigma, and the blurred layers
are alpha-blended **back to front** with the blurred masks as alpha (the "over" operator on
premultiplied colour). The result is divided by the accumulated alpha, which renormalises the
pixels where blurred near layers only partly cover what lies behind them.

Layers are numbered in compositing order: label 0 is the farthest layer (drawn first), label
L-1 the nearest (drawn last).

Two renderers share one decomposition:

* :func:`render_layers_reference` is the definition: one full-resolution ``cv2.GaussianBlur`` of
  the whole image per layer (cost O(L * H * W * sigma)). Tests and benchmarks compare against it.
* :func:`render_layers` is what the product uses. It gives the same result within a stated error
  at a cost that does not grow with sigma:

  - a layer with sigma < ``SHARP_SIGMA`` is copied (its kernel's off-centre weights are < 4e-6);
  - a layer with a small sigma is blurred at full resolution, exactly like the reference;
  - a layer with a larger sigma is reduced k times with ``cv2.pyrDown`` (each step is a 5-tap
    binomial filter of variance 1 px^2 at its level), blurred at that level with the residual
    sigma so that the total variance matches (down + residual + the ``cv2.pyrUp`` interpolation
    on the way back up, each pyramid step adding 4^j px^2). k is the deepest level at which the
    residual sigma stays >= ``beta`` pixels of that level, so the signal is smooth enough for
    the 5-tap interpolation to be accurate;
  - a layer is processed only on the boxes of its connected parts (found on an 8-px tile grid,
    grown by the blur's reach and merged until disjoint), not on one bounding box: layers of
    real depth maps are thin iso-depth contours, sensor speckle and mixed pixels at depth
    edges, whose bounding boxes cover most of the frame;
  - consecutive layers (in depth order) that use the same pyramid level are composited with each
    other at that level and brought back to full resolution once per group. "Over" is
    associative, so this only changes the result by the interpolation error of the group.
    Layers of equal sigma therefore share the up-sampling and the full-resolution compositing,
    and adjacent depths whose sigma rounds to the same value share one layer.

  Accuracy (``beta = 0.7``; checked by ``tests/ops/test_layered.py``, measured on real RGB-D
  scenes by ``benchmarks/bench_synth.py``): a plain Gaussian blur of a natural image through the
  pyramid is within 1/255 of ``cv2.GaussianBlur`` at every pixel; a full layered render is within
  ``REFERENCE_MAX_ERROR`` (max) and ``REFERENCE_MEAN_ERROR`` (mean) absolute error of the
  reference. Level-0 layers are bit-for-bit the reference's; the error comes from the pyramid
  interpolation and from compositing a group at its reduced level.

Image borders follow ``cv2.GaussianBlur``'s default (BORDER_REFLECT_101): the image is padded by
reflection wide enough for the largest blur (at most ``MAX_MARGIN`` px), so the reduced levels'
own border effects stay outside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

#: the paper's limit on the number of depth layers (Sec. 3.3)
MAX_LAYERS = 350
#: layers blurred less than this (px) are copied unblurred: the 3x3 neighbour weight of a
#: Gaussian with sigma 0.2 is exp(-12.5) ~ 4e-6 of the centre weight
SHARP_SIGMA = 0.2
#: the smallest blur step (px) between neighbouring layers of a signed-sigma decomposition:
#: with 350 layers over the paper's largest range (-7 .. 7 px) the step is 0.04 px; finer steps
#: only add layers without a visible difference
MIN_LAYER_STEP = 0.02
#: default residual sigma (in pixels of the pyramid level) below which a deeper level is not used
DEFAULT_BETA = 0.7
#: error bounds of render_layers vs render_layers_reference on [0, 1] images, checked by tests
REFERENCE_MEAN_ERROR = 0.25 / 255
REFERENCE_MAX_ERROR = 6.0 / 255
#: deepest pyramid level; 2^10 px covers any blur a photo can have
MAX_LEVEL = 10

#: widest reflected border added around the image; blurs reaching farther see zeros there
MAX_MARGIN = 256

_ZERO4 = (0.0, 0.0, 0.0, 0.0)
#: strips of a sparse layer piece are this many tiles high (64 px at the finest grid)
_STRIP_TILES = 8
#: a piece whose box is more than this full of the layer's tiles is not cut into strips
_DENSE = 0.35
#: fixed cost of one more block in _run_blocks, in tiles of work (Python and OpenCV call
#: overhead against the pixels a merged block would process for nothing)
_BLOCK_COST = 24


@dataclass(frozen=True)
class Layers:
    """A decomposition of an image into blur layers.

    labels: (H, W) int32, the layer of each pixel; 0 = farthest (composited first).
    sigmas: (L,) float32 >= 0, the Gaussian sigma of each layer in pixels (0 = left sharp).
    """

    labels: np.ndarray
    sigmas: np.ndarray

    @property
    def count(self) -> int:
        return int(self.sigmas.shape[0])

    def sigma_map(self) -> np.ndarray:
        """(H, W) float32: the sigma each pixel is rendered with."""
        return self.sigmas[self.labels]


# --------------------------------------------------------------------------------------------
# decomposition


def signed_sigma_from_depth(
    depth: np.ndarray, focus_distance: float, alpha: float
) -> np.ndarray:
    """Signed blur coordinate alpha * (x - S1) / (4 x) of Eq. 1, per pixel.

    Its absolute value is the Gaussian sigma c(x)/4 (in alpha's unit, normally pixels); its sign
    says on which side of the focus plane the pixel is (negative = nearer than S1), and it grows
    monotonically with depth, so it orders the layers as well as depth does and spaces them
    evenly in blur. depth: (H, W) > 0 in the unit of focus_distance (NaN passes through).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"signed_sigma_from_depth: depth must be (H, W), got shape {depth.shape}")
    if not focus_distance > 0:
        raise ValueError(f"signed_sigma_from_depth: focus distance must be > 0, got {focus_distance}")
    if not alpha >= 0:
        raise ValueError(f"signed_sigma_from_depth: alpha must be >= 0, got {alpha}")
    x = depth.astype(np.float64)
    with np.errstate(invalid="ignore"):
        if np.any(x <= 0):
            raise ValueError("signed_sigma_from_depth: depth must be > 0 where it is not NaN")
        s = alpha * (x - focus_distance) / (4.0 * x)
    return s.astype(np.float32)


def layers_from_key(
    sigma: np.ndarray, key: np.ndarray, max_layers: int = MAX_LAYERS, n_bins: int | None = None
) -> Layers:
    """Decompose by an ordering key: larger key = farther (composited earlier).

    sigma: (H, W) float >= 0, the blur (px) each pixel should get. key: (H, W) float, e.g. depth
    or any "far-ness". The key's range is cut into ``n_bins`` (default ``max_layers``) equal
    bins; every non-empty bin is one layer, blurred with the mean sigma of its pixels, so sigma
    should vary little within a bin (true when it is a smooth function of the key on each side of
    the focus plane). Consecutive layers that are all sharp (sigma < SHARP_SIGMA) are merged:
    copying binary layers over each other is the same as copying their union.
    """
    sigma = np.asarray(sigma, dtype=np.float32)
    key = np.asarray(key, dtype=np.float32)
    if sigma.ndim != 2 or key.shape != sigma.shape:
        raise ValueError(
            f"layers_from_key: sigma and key must be (H, W) of one shape, got {sigma.shape} "
            f"and {key.shape}"
        )
    if sigma.size == 0:
        raise ValueError("layers_from_key: empty image")
    if not (np.isfinite(sigma).all() and np.isfinite(key).all()):
        raise ValueError("layers_from_key: sigma and key must be finite (fill invalid pixels first)")
    if sigma.min() < 0:
        raise ValueError(f"layers_from_key: sigma must be >= 0, got min {sigma.min()}")
    if not 1 <= max_layers:
        raise ValueError(f"layers_from_key: max_layers must be >= 1, got {max_layers}")
    n = max_layers if n_bins is None else max(1, min(n_bins, max_layers))
    lo, hi = float(key.min()), float(key.max())
    if hi > lo:
        bins = np.floor((key.astype(np.float64) - lo) * (n / (hi - lo))).astype(np.int64)
        np.clip(bins, 0, n - 1, out=bins)
    else:
        bins = np.zeros(key.shape, np.int64)
    # bin n-1 is the farthest: compositing order is reversed bin order
    order = (n - 1) - bins
    counts = np.bincount(order.ravel(), minlength=n)
    sums = np.bincount(order.ravel(), weights=sigma.ravel().astype(np.float64), minlength=n)
    present = np.flatnonzero(counts)
    layer_sigma = sums[present] / counts[present]
    layer_sigma[layer_sigma < SHARP_SIGMA] = 0.0
    # merge runs of consecutive sharp layers into one
    keep = np.ones(present.size, bool)
    keep[1:] = ~((layer_sigma[1:] == 0) & (layer_sigma[:-1] == 0))
    new_index = np.cumsum(keep) - 1
    lut = np.full(n, -1, np.int64)
    lut[present] = new_index
    labels = lut[order].astype(np.int32)
    return Layers(labels=labels, sigmas=layer_sigma[keep].astype(np.float32))


def layers_from_signed_sigma(
    signed_sigma: np.ndarray, max_layers: int = MAX_LAYERS, min_step: float = MIN_LAYER_STEP
) -> Layers:
    """Decompose by a signed blur coordinate (see :func:`signed_sigma_from_depth`).

    signed_sigma: (H, W) float, finite; |value| is the blur sigma in px, larger = farther.
    Bins are equal steps of blur (at least ``min_step`` px wide), at most ``max_layers``.
    """
    s = np.asarray(signed_sigma, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"layers_from_signed_sigma: expected (H, W), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("layers_from_signed_sigma: values must be finite (fill invalid pixels first)")
    span = float(s.max() - s.min()) if s.size else 0.0
    n_bins = max(1, min(max_layers, math.ceil(span / min_step)))
    return layers_from_key(np.abs(s), s, max_layers=max_layers, n_bins=n_bins)


def layers_from_depth(
    depth: np.ndarray, focus_distance: float, alpha: float, max_layers: int = MAX_LAYERS
) -> Layers:
    """Thin-lens decomposition (Eq. 1): depth (H, W) > 0, finite, in focus_distance's unit;
    alpha in pixels of the image (CoC diameter = alpha |x - S1| / x, sigma = CoC / 4)."""
    return layers_from_signed_sigma(
        signed_sigma_from_depth(depth, focus_distance, alpha), max_layers=max_layers
    )


def layers_from_sigma(
    sigma: np.ndarray, focus: Literal["near", "far"], max_layers: int = MAX_LAYERS
) -> Layers:
    """Decompose a defocus map alone, assuming all of the scene lies on one side of the focus.

    focus="near": the focus is at the near end, so larger sigma is farther.
    focus="far": the focus is at the far end, so larger sigma is nearer.
    """
    sigma = np.asarray(sigma, dtype=np.float32)
    if focus == "near":
        key = sigma
    elif focus == "far":
        key = -sigma
    else:
        raise ValueError(f"layers_from_sigma: focus must be 'near' or 'far', got {focus!r}")
    span = float(sigma.max() - sigma.min()) if sigma.size else 0.0
    n_bins = max(1, min(max_layers, math.ceil(span / MIN_LAYER_STEP)))
    return layers_from_key(sigma, key, max_layers=max_layers, n_bins=n_bins)


# --------------------------------------------------------------------------------------------
# rendering


def _check_inputs(rgb: np.ndarray, layers: Layers) -> tuple[int, int]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"layered render: rgb must be (H, W, 3), got {getattr(rgb, 'shape', type(rgb))}"
        )
    if rgb.dtype != np.float32:
        raise ValueError(f"layered render: rgb must be float32 in [0, 1], got {rgb.dtype}")
    h, w = rgb.shape[:2]
    if layers.labels.shape != (h, w):
        raise ValueError(
            f"layered render: labels shape {layers.labels.shape} does not match image {(h, w)}"
        )
    if layers.count < 1 or layers.sigmas.ndim != 1:
        raise ValueError("layered render: need at least one layer")
    return h, w


def _rgba(rgb: np.ndarray) -> np.ndarray:
    rgba = np.empty(rgb.shape[:2] + (4,), np.float32)
    rgba[..., :3] = rgb
    rgba[..., 3] = 1.0
    return rgba


def _over(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src + (1 - alpha_src) * dst for premultiplied RGBA (h, w, 4) float32, in place.

    dst may be a view into a larger array (OpenCV writes through its row stride). OpenCV does
    this about five times faster than numpy's broadcast over the 4-element channel axis.
    """
    inv = 1.0 - src[..., 3]
    cv2.multiply(dst, cv2.merge((inv, inv, inv, inv)), dst=dst)
    cv2.add(dst, src, dst=dst)


def _normalise(acc: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA -> RGB: colour / alpha, clipped to [0, 1]."""
    alpha = acc[..., 3]
    # alpha > 0 wherever some layer covers the pixel, i.e. everywhere; the guard only protects
    # against float underflow and keeps the input there
    safe = np.maximum(alpha, np.float32(1e-6))
    out = cv2.cvtColor(cv2.divide(acc, cv2.merge((safe, safe, safe, safe))), cv2.COLOR_RGBA2RGB)
    bad = alpha <= 1e-6
    if bad.any():
        out[bad] = rgb[bad]
    return np.clip(out, 0.0, 1.0, out=out)


def render_layers_reference(rgb: np.ndarray, layers: Layers) -> np.ndarray:
    """The straightforward layered render: per layer, a full-resolution cv2.GaussianBlur of its
    premultiplied colour and mask, composited back to front. rgb: (H, W, 3) float32 in [0, 1].
    Returns (H, W, 3) float32 in [0, 1]. Slow (O(L H W sigma)); for tests and benchmarks."""
    _check_inputs(rgb, layers)
    rgba = _rgba(rgb)
    acc = np.zeros_like(rgba)
    for index, sigma in enumerate(layers.sigmas):
        mask = (layers.labels == index).astype(np.float32)
        if not mask.any():
            continue
        pre = rgba * mask[..., None]
        if sigma > 0:
            pre = cv2.GaussianBlur(pre, (0, 0), float(sigma))
        _over(acc, pre)
    return _normalise(acc, rgb)


def _pyramid_level(sigma: float, beta: float, max_level: int) -> tuple[int, float]:
    """Deepest level k whose residual sigma (px of level k) is >= beta, and that residual.

    Variance budget in full-resolution px^2: k pyrDown steps add (4^k - 1)/3, k pyrUp steps the
    same again, and a residual blur r at level k adds r^2 4^k.
    """
    k = 0
    while k < max_level:
        nxt = k + 1
        if sigma * sigma - 2.0 * (4.0**nxt - 1.0) / 3.0 < (beta * 2.0**nxt) ** 2:
            break
        k = nxt
    residual = math.sqrt(max(sigma * sigma - 2.0 * (4.0**k - 1.0) / 3.0, 0.0)) / 2.0**k
    return k, residual


class _Presence:
    """Which layers occur in which tile of a coarse grid, computed once per render.

    Layer regions are planned on this grid: a layer made of thin curves or scattered pixels
    (iso-depth contours, sensor noise, mixed pixels at depth edges) is processed on its connected
    pieces, and a sparse piece (a diagonal band) row by row, instead of on one bounding box that
    may cover the whole image.
    """

    def __init__(self, labels: np.ndarray, count: int) -> None:
        h, w = labels.shape
        tile = 8
        while (-(-h // tile)) * (-(-w // tile)) * count > 64_000_000:
            tile *= 2  # keeps the (layers x tiles) table small for big photos (64 MB at most)
        self.tile = tile
        self.shape = (h, w)
        self.nty, self.ntx = -(-h // tile), -(-w // tile)
        n_tiles = self.nty * self.ntx
        tiles = (np.arange(h, dtype=np.int32) // tile)[:, None] * self.ntx + (
            np.arange(w, dtype=np.int32) // tile
        )[None, :]
        table = np.zeros(count * n_tiles, np.uint8)
        table[labels * n_tiles + tiles] = 1
        self.grid = table.reshape(count, self.nty, self.ntx)

    def pieces(self, index: int, reach: float, align: int) -> list[tuple[tuple, tuple]]:
        """(core, window) tile boxes [y0, y1, x0, x1) of the layer's connected pieces.

        core: the tiles holding the piece's pixels; window: core grown by ``reach`` px, where
        the blurred piece can be non-zero. Pieces whose windows overlap are merged, so windows
        are disjoint and each holds the pixels of its own piece only. At levels coarser than a
        tile (align > tile) the whole layer is one piece.
        """
        grid = self.grid[index]
        rt = int(math.ceil(reach / self.tile))
        if align > self.tile:
            return [_grid_box(grid, rt)]
        dilated = cv2.dilate(grid, np.ones((2 * rt + 1, 2 * rt + 1), np.uint8)) if rt else grid
        n, cc = cv2.connectedComponents(dilated, connectivity=8)
        if n <= 2:
            return [_grid_box(grid, rt)]
        return _merge_overlapping(_component_boxes(cc[grid > 0], *np.nonzero(grid), n, rt))

    def spans(self, index: int, box: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Per tile row of ``box``: first and end column (tiles) of the layer; -1, -1 if none."""
        y0, y1, x0, x1 = (max(box[0], 0), min(box[1], self.nty), max(box[2], 0), min(box[3], self.ntx))
        sub = self.grid[index, y0:y1, x0:x1].astype(bool)
        has = sub.any(axis=1)
        first = np.where(has, x0 + sub.argmax(axis=1), -1)
        end = np.where(has, x1 - sub[:, ::-1].argmax(axis=1), -1)
        return first, end

    def strips(self, index: int, window: tuple, reach: float, height: int) -> list[tuple[tuple, tuple]]:
        """(out, inp) tile boxes covering a piece's window with disjoint out boxes.

        A dense or short piece is one strip (out = inp = window). A sparse tall one is cut into
        strips ``height`` tiles high: out = the strip's rows x the columns the layer reaches from
        its pixels within ``reach`` of those rows; inp = out plus ``reach`` rows above and below
        (what the blur of out reads).
        """
        rt = int(math.ceil(reach / self.tile))
        wy0, wy1 = max(window[0], 0), min(window[1], self.nty)
        wx0, wx1 = max(window[2], 0), min(window[3], self.ntx)
        height = max(height, 2 * rt)
        sub = self.grid[index, wy0:wy1, wx0:wx1]
        if wy1 - wy0 < 2 * height or sub.mean() > _DENSE:
            return [(window, window)]
        first, end = self.spans(index, (wy0, wy1, wx0, wx1))
        out = []
        for y in range(wy0, wy1, height):
            r0, r1 = max(y - rt, wy0), min(y + height + rt, wy1)
            f, e = first[r0 - wy0 : r1 - wy0], end[r0 - wy0 : r1 - wy0]
            if not (e > 0).any():
                continue  # no pixel of the layer within reach of these rows
            c0 = max(int(f[f >= 0].min()) - rt, wx0)
            c1 = min(int(e.max()) + rt, wx1)
            out.append(((y, min(y + height, wy1), c0, c1), (r0, r1, c0, c1)))
        return out


def _grid_box(grid: np.ndarray, rt: int) -> tuple[tuple, tuple]:
    rows, cols = np.flatnonzero(grid.any(axis=1)), np.flatnonzero(grid.any(axis=0))
    core = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return core, (core[0] - rt, core[1] + rt, core[2] - rt, core[3] + rt)


def _component_boxes(comp, ys, xs, n, rt) -> list[tuple[tuple, tuple]]:
    y0 = np.full(n, 1 << 30)
    x0 = np.full(n, 1 << 30)
    y1 = np.full(n, -1)
    x1 = np.full(n, -1)
    np.minimum.at(y0, comp, ys)
    np.minimum.at(x0, comp, xs)
    np.maximum.at(y1, comp, ys + 1)
    np.maximum.at(x1, comp, xs + 1)
    boxes = []
    for c in np.flatnonzero(y1 >= 0):
        core = (int(y0[c]), int(y1[c]), int(x0[c]), int(x1[c]))
        boxes.append((core, (core[0] - rt, core[1] + rt, core[2] - rt, core[3] + rt)))
    return boxes


def _merge_overlapping(boxes: list[tuple[tuple, tuple]]) -> list[tuple[tuple, tuple]]:
    """Merge (core, window) pairs whose windows overlap until all windows are disjoint."""
    boxes = list(boxes)
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        out: list[tuple[tuple, tuple]] = []
        for core, win in boxes:
            for i, (c2, w2) in enumerate(out):
                if win[0] < w2[1] and w2[0] < win[1] and win[2] < w2[3] and w2[2] < win[3]:
                    out[i] = (
                        (min(core[0], c2[0]), max(core[1], c2[1]), min(core[2], c2[2]), max(core[3], c2[3])),
                        (min(win[0], w2[0]), max(win[1], w2[1]), min(win[2], w2[2]), max(win[3], w2[3])),
                    )
                    merged = True
                    break
            else:
                out.append((core, win))
        boxes = out
    return boxes


def _to_pixels(box, tile: int, align: int, h: int, w: int) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = (v * tile for v in box)
    y0, x0 = max(y0 // align * align, 0), max(x0 // align * align, 0)
    y1, x1 = min(-(-y1 // align) * align, h), min(-(-x1 // align) * align, w)
    return y0, y1, x0, x1


def _premultiplied(rgba: np.ndarray, labels: np.ndarray, index: int, box) -> np.ndarray:
    y0, y1, x0, x1 = box
    mask = cv2.compare(labels[y0:y1, x0:x1], index, cv2.CMP_EQ)
    pre = np.zeros((y1 - y0, x1 - x0, 4), np.float32)
    return cv2.copyTo(rgba[y0:y1, x0:x1], mask, pre)


def _render_full_res_layer(acc, rgba, labels, index, sigma, presence) -> None:
    """Level 0: blur the layer exactly like the reference, on its pieces (strips of sparse ones)
    plus a margin wider than cv2's kernel (radius <= 4 sigma + 1.25); inside the frame the
    margin holds zeros, so cv2's border rule changes nothing there."""
    h, w = labels.shape
    t = presence.tile
    if sigma == 0:
        for core, _ in presence.pieces(index, 0, 1):
            y0, y1, x0, x1 = _to_pixels(core, t, 1, h, w)
            sub = labels[y0:y1, x0:x1] == index
            acc[y0:y1, x0:x1][sub] = rgba[y0:y1, x0:x1][sub]
        return
    reach = _reach(sigma, 0, sigma)
    for _, window in presence.pieces(index, reach, 1):
        for out_t, inp_t in presence.strips(index, window, reach, _STRIP_TILES):
            out, inp = _to_pixels(out_t, t, 1, h, w), _to_pixels(inp_t, t, 1, h, w)
            blurred = cv2.GaussianBlur(_premultiplied(rgba, labels, index, inp), (0, 0), sigma)
            _over(acc[out[0] : out[1], out[2] : out[3]],
                  blurred[out[0] - inp[0] : out[1] - inp[0], out[2] - inp[2] : out[3] - inp[2]])


def _reach(sigma: float, k: int, residual: float) -> float:
    """How far (full-resolution px) a layer's blur reaches beyond its pixels: cv2's kernel
    (radius <= 4 sigma + 1.25) at level 0; at level k the residual kernel plus the pyrDown and
    pyrUp supports (2 px each), in px of level k."""
    if k == 0:
        return 4.0 * sigma + 2.0
    return float((math.ceil(4.0 * residual) + 6) * (1 << k))


def _level_sizes(height: int, width: int, k: int) -> list[tuple[int, int]]:
    sizes = [(height, width)]
    for _ in range(k):
        height, width = (height + 1) // 2, (width + 1) // 2
        sizes.append((height, width))
    return sizes


def _run_blocks(grid: np.ndarray, ring: int) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Cover the set tiles of ``grid`` with boxes (r0, r1, c0, c1) that hug them.

    Each tile row is cut into runs of set tiles; a run joins the box above it (one that reached
    the previous row and overlaps it) when the merged box costs no more than the two apart,
    counting a ring of ``ring`` tiles around each box and a fixed cost per box. A vertical line
    becomes one tall thin box, the two sides of a U two boxes, not the U's bounding box.
    Boxes may overlap; ``owner`` (same shape as grid, -1 where unset) says which box each tile
    belongs to, so that no pixel is taken twice.
    """
    rows, cols = grid.shape
    padded = np.zeros((rows, cols + 2), np.int8)
    padded[:, 1:-1] = grid
    step = np.diff(padded, axis=1)
    run_rows, starts = np.nonzero(step == 1)
    ends = np.nonzero(step == -1)[1]
    owner = np.full(grid.shape, -1, np.int32)
    boxes: list[list[int]] = []
    open_boxes: list[int] = []
    for r, c0, c1 in zip(run_rows.tolist(), starts.tolist(), ends.tolist()):
        open_boxes = [i for i in open_boxes if boxes[i][1] >= r]
        for i in open_boxes:
            b = boxes[i]
            if b[1] != r or c0 > b[3] or c1 < b[2]:
                continue
            u0, u1 = min(b[2], c0), max(b[3], c1)
            height = b[1] - b[0]
            merged = (height + 1 + 2 * ring) * (u1 - u0 + 2 * ring)
            apart = (height + 2 * ring) * (b[3] - b[2] + 2 * ring) + (1 + 2 * ring) * (c1 - c0 + 2 * ring)
            if merged <= apart + _BLOCK_COST:
                b[1], b[2], b[3] = r + 1, u0, u1
                owner[r, c0:c1] = i
                break
        else:
            owner[r, c0:c1] = len(boxes)
            open_boxes.append(len(boxes))
            boxes.append([r, r + 1, c0, c1])
    return [tuple(b) for b in boxes], owner


def _reduced_piece(rgba, labels, index, presence, core_t, window, k) -> np.ndarray:
    """pyrDown^k of a piece's premultiplied pixels, on the piece window at level k.

    pyrDown is linear, so the piece is reduced in blocks (tile rows hugging the layer's columns,
    shrunk to the exact box of their pixels) and the results are added. Each block gets its ring
    of zeros one level at a time, so a thin contour costs about its own area plus a few pixels
    of its length per level, not its bounding box and not the 2 (2^k - 1) px ring of k steps.
    """
    h, w = labels.shape
    t, f = presence.tile, 1 << k
    wy0, wy1, wx0, wx1 = window
    out = np.zeros((-(-wy1 // f) - wy0 // f, -(-wx1 // f) - wx0 // f, 4), np.float32)
    cy0, cy1 = max(core_t[0], 0), min(core_t[1], presence.nty)
    cx0, cx1 = max(core_t[2], 0), min(core_t[3], presence.ntx)
    blocks, owner = _run_blocks(presence.grid[index, cy0:cy1, cx0:cx1], 1)
    for number, (r0, r1, c0, c1) in enumerate(blocks):
        by0, by1 = (cy0 + r0) * t, min((cy0 + r1) * t, h)
        bx0, bx1 = (cx0 + c0) * t, min((cx0 + c1) * t, w)
        mask = cv2.compare(labels[by0:by1, bx0:bx1], index, cv2.CMP_EQ)
        own = owner[r0:r1, c0:c1] == number
        if not own.all():  # the box covers tiles of another block: leave their pixels to it
            own = cv2.resize(own.view(np.uint8) * np.uint8(255), None, fx=t, fy=t,
                             interpolation=cv2.INTER_NEAREST)
            cv2.bitwise_and(mask, own[: by1 - by0, : bx1 - bx0], dst=mask)
        # shrink the tile block to the exact box of its pixels (tiles are coarse on big
        # photos), keeping an even origin for the next level's grid
        x, y, bw, bh = cv2.boundingRect(mask)
        y0, x0 = y - y % 2, x - x % 2
        mask = mask[y0 : y + bh, x0 : x + bw]
        by0, bx0 = by0 + y0, bx0 + x0
        by1, bx1 = by0 + mask.shape[0], bx0 + mask.shape[1]
        # the first ring of zeros is allocated with the block: 4 px before (keeps the origin
        # even), 3 after
        block = np.zeros((by1 - by0 + 7, bx1 - bx0 + 7, 4), np.float32)
        cv2.copyTo(rgba[by0:by1, bx0:bx1], mask, block[4:-3, 4:-3])
        block = cv2.pyrDown(block)
        oy, ox = (by0 - 4) // 2, (bx0 - 4) // 2  # the block's origin at the current level
        for _ in range(k - 1):
            # pyrDown reads 2 px beyond a sample and reflects at the array's edges, so 3 px of
            # zeros on each side keep the reflection empty; one more keeps the origin even
            py, px = 3 + (oy - 3) % 2, 3 + (ox - 3) % 2
            block = cv2.copyMakeBorder(block, py, 3, px, 3, cv2.BORDER_CONSTANT, value=_ZERO4)
            block = cv2.pyrDown(block)
            oy, ox = (oy - py) // 2, (ox - px) // 2
        oy, ox = oy - wy0 // f, ox - wx0 // f
        sy, sx = max(-oy, 0), max(-ox, 0)
        ey, ex = min(block.shape[0], out.shape[0] - oy), min(block.shape[1], out.shape[1] - ox)
        if ey > sy and ex > sx:
            region = out[oy + sy : oy + ey, ox + sx : ox + ex]
            cv2.add(region, block[sy:ey, sx:ex], dst=region)
    return out


def _render_group(acc, rgba, labels, members, k, residuals, presence) -> None:
    """Layers sharing pyramid level k >= 1: each piece is reduced k times with pyrDown, blurred
    and composited at level k (in strips if sparse); the group is brought back to full
    resolution once."""
    h, w = labels.shape
    t, f = presence.tile, 1 << k
    plans = []
    for index in members:
        reach = _reach(0.0, k, residuals[index])
        for core, window in presence.pieces(index, reach, f):
            plans.append((index, core, window, reach))
    boxes = [_to_pixels(p[2], t, f, h, w) for p in plans]
    gy0 = min(b[0] for b in boxes) // f
    gy1 = -(-max(b[1] for b in boxes) // f)
    gx0 = min(b[2] for b in boxes) // f
    gx1 = -(-max(b[3] for b in boxes) // f)
    group = np.zeros((gy1 - gy0, gx1 - gx0, 4), np.float32)

    def down(box):  # a full-resolution box at level k
        return box[0] // f, -(-box[1] // f), box[2] // f, -(-box[3] // f)

    for (index, core, window_t, reach), window in zip(plans, boxes):
        reduced = _reduced_piece(rgba, labels, index, presence, core, window, k)
        wy0, _, wx0, _ = down(window)
        strips = [(window_t, window_t)] if f > t else presence.strips(
            index, window_t, reach, max(_STRIP_TILES, 16 * f // t))
        for out_t, inp_t in strips:
            oy0, oy1, ox0, ox1 = down(_to_pixels(out_t, t, f, h, w))
            iy0, iy1, ix0, ix1 = down(_to_pixels(inp_t, t, f, h, w))
            blurred = reduced[iy0 - wy0 : iy1 - wy0, ix0 - wx0 : ix1 - wx0]
            if residuals[index] > 0:
                blurred = cv2.GaussianBlur(blurred, (0, 0), float(residuals[index]))
            _over(group[oy0 - gy0 : oy1 - gy0, ox0 - gx0 : ox1 - gx0],
                  blurred[oy0 - iy0 : oy1 - iy0, ox0 - ix0 : ox1 - ix0])

    fy0, fy1, fx0, fx1 = gy0 * f, min(gy1 * f, h), gx0 * f, min(gx1 * f, w)
    sizes = _level_sizes(fy1 - fy0, fx1 - fx0, k)
    up = group
    for j in range(k - 1, -1, -1):
        up = cv2.pyrUp(up, dstsize=(sizes[j][1], sizes[j][0]))
    _over(acc[fy0:fy1, fx0:fx1], up)


def render_layers(
    rgb: np.ndarray,
    layers: Layers,
    *,
    beta: float = DEFAULT_BETA,
    max_level: int = MAX_LEVEL,
    max_margin: int = MAX_MARGIN,
) -> np.ndarray:
    """Layered defocus render, cost independent of sigma (see the module docstring).

    rgb: (H, W, 3) float32 in [0, 1]; layers: from one of the ``layers_from_*`` functions.
    beta: the smallest residual sigma (px of a pyramid level) for using that level; larger is
    more accurate and slower. max_margin: the widest reflected border (px) added around the image.
    Returns (H, W, 3) float32 in [0, 1].
    """
    h, w = _check_inputs(rgb, layers)
    if not beta > 0:
        raise ValueError(f"render_layers: beta must be > 0, got {beta}")
    sigmas = [float(s) for s in layers.sigmas]
    plan = [_pyramid_level(s, beta, max_level) if s > 0 else (0, 0.0) for s in sigmas]
    residuals = [p[1] for p in plan]
    # Work in a frame padded by reflection (the reference's border rule) wide enough for the
    # largest blur and pyramid support; edge effects of the reduced levels then stay outside
    # the image. Beyond max_margin a huge blur sees zeros instead, which the final division by
    # alpha turns into a renormalised kernel.
    reach = max((_reach(s, k, r) for s, (k, r) in zip(sigmas, plan) if s > 0), default=0.0)
    pad = min(int(math.ceil(reach)), max_margin)
    rgba = cv2.copyMakeBorder(_rgba(np.ascontiguousarray(rgb)), pad, pad, pad, pad,
                              cv2.BORDER_REFLECT_101)
    labels = cv2.copyMakeBorder(np.ascontiguousarray(layers.labels, dtype=np.int32),
                                pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    acc = np.zeros_like(rgba)
    presence = _Presence(labels, len(sigmas))
    present = presence.grid.reshape(len(sigmas), -1).any(axis=1)

    index = 0
    while index < len(sigmas):
        k = plan[index][0]
        end = index
        while end < len(sigmas) and plan[end][0] == k:
            end += 1
        members = [i for i in range(index, end) if present[i]]
        if members:
            if k == 0:
                for i in members:
                    _render_full_res_layer(acc, rgba, labels, i, sigmas[i], presence)
            else:
                _render_group(acc, rgba, labels, members, k, residuals, presence)
        index = end
    return _normalise(acc[pad : pad + h, pad : pad + w], rgb)
