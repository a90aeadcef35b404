"""Defocus blur magnification (DMENet paper, Sec. 5.4, Fig. 8).

Each pixel of the photo already carries a Gaussian blur sigma (its defocus map). Magnifying the
defocus by M means the pixel should end up blurred by M * sigma. Gaussian blurs compose by
adding variances, so the photo is re-rendered with an *added* blur of sqrt(M^2 - 1) * sigma, by
the same layered algorithm that synthesises the training data (:mod:`defocus_cli.ops.layered`):
layers ordered back to front from the map and the focus side, each blurred and composited over
the ones behind it. M = 1 adds nothing and returns the photo unchanged.

The focus side decides the order: with the focus at the near end (``focus="near"``, the usual
portrait / macro case) a larger blur is farther away; with ``focus="far"`` a larger blur is
nearer. Pixels blurred less than ``in_focus`` px are taken as in focus and left as they are;
between ``in_focus`` and twice that the added blur fades in, so no edge appears in the map.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from defocus_cli.ops.layered import DEFAULT_BETA, MAX_LAYERS, layers_from_sigma, render_layers


@dataclass(frozen=True)
class MagnifyConfig:
    """scale: the magnification M >= 1 of every pixel's blur sigma.
    focus: "near" (larger blur = farther) or "far" (larger blur = nearer).
    in_focus: sigma (px) below which a pixel is kept as it is (0 = magnify every blur).
    max_layers: depth layers of the re-rendering (paper: 350).
    beta: accuracy of the renderer's pyramid (see ops.layered.render_layers).
    """

    scale: float
    focus: Literal["near", "far"] = "near"
    in_focus: float = 0.5
    max_layers: int = MAX_LAYERS
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 1.0):
            raise ValueError(f"magnify: scale must be >= 1, got {self.scale}")
        if self.focus not in ("near", "far"):
            raise ValueError(f"magnify: focus must be 'near' or 'far', got {self.focus!r}")
        if not self.in_focus >= 0:
            raise ValueError(f"magnify: in_focus must be >= 0, got {self.in_focus}")
        if not 1 <= self.max_layers <= MAX_LAYERS:
            raise ValueError(f"magnify: max_layers must be 1..{MAX_LAYERS}, got {self.max_layers}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MagnifyResult:
    """image: (H, W, 3) float32 RGB in [0, 1]; added_sigma: (H, W) float32 px actually added."""

    image: np.ndarray
    added_sigma: np.ndarray
    layers: int
    timings: dict[str, float] = field(default_factory=dict)


def added_blur(sigma: np.ndarray, config: MagnifyConfig) -> np.ndarray:
    """(H, W) float32: the blur to add so a pixel's blur becomes scale * sigma
    (sqrt(M^2 - 1) * sigma), faded out below ``in_focus``."""
    add = np.float32(math.sqrt(config.scale**2 - 1.0)) * sigma
    if config.in_focus > 0:
        ramp = np.clip((sigma - config.in_focus) / config.in_focus, 0.0, 1.0)
        add = add * ramp
    return add.astype(np.float32)


def magnify_defocus(rgb: np.ndarray, sigma: np.ndarray, config: MagnifyConfig) -> MagnifyResult:
    """Magnify the defocus blur of a photo.

    rgb: (H, W, 3) float32 in [0, 1]. sigma: (H, W) float32 >= 0, the photo's defocus map
    (Gaussian sigma in px of this image). Returns a :class:`MagnifyResult`.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"magnify: rgb must be (H, W, 3), got {getattr(rgb, 'shape', type(rgb))}")
    if rgb.dtype != np.float32:
        raise ValueError(f"magnify: rgb must be float32 in [0, 1], got {rgb.dtype}")
    if sigma.shape != rgb.shape[:2]:
        raise ValueError(f"magnify: map shape {sigma.shape} does not match the photo {rgb.shape[:2]}")
    if not np.isfinite(sigma).all() or sigma.min() < 0:
        raise ValueError("magnify: the defocus map must be finite and >= 0")
    t0 = time.perf_counter()
    add = added_blur(sigma.astype(np.float32), config)
    if float(add.max()) == 0.0:  # scale 1, or nothing out of focus: the photo as it is
        return MagnifyResult(rgb.copy(), add, 1, {"total": time.perf_counter() - t0})
    layers = layers_from_sigma(add, config.focus, max_layers=config.max_layers)
    t1 = time.perf_counter()
    out = render_layers(rgb, layers, beta=config.beta)
    t2 = time.perf_counter()
    return MagnifyResult(out, add, layers.count,
                         {"layers": t1 - t0, "render": t2 - t1, "total": t2 - t0})
