"""All-in-focus image from a photo and its defocus map with the map-conditioned network
(``models.sft.SFTDeblurNet``, paper 004), tiled so a photo of any size fits in memory.

The photo is cut into tiles of ``tile`` px; each runs through the network inside a frame that
adds ``context`` px on every side (at least the network's receptive radius, and a multiple of its
size multiple so every frame's down-sampling grid lines up with the whole image's), and only the
tile's own pixels are kept. Frames therefore see everything that can reach their tile, and the
tiled output equals the whole-image output up to floating-point summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from defocus_cli.device import autocast, precision_name, resolve_device, resolve_precision
from defocus_cli.errors import InputError
from defocus_cli.models.sft import SFTDeblurNet, SFTNetConfig

#: px; the default tile side (frames add the context on each side: ~700 px, ~0.2 GB in fp32)
TILE = 512


def receptive_radius(config: SFTNetConfig) -> int:
    """An upper bound (px of the image) on how far a pixel of the input reaches the output.

    Counted per resolution level s = shuffle * 2**i: each 3x3 convolution adds s; a stride-2
    convolution, an average pool and a bilinear up-sampling each add at most s more.
    """
    s0 = config.shuffle
    # level 0: head, tail, the condition network's two 3x3 convolutions
    r = 4 * s0
    for i in range(config.levels):
        s = s0 * 2 ** i
        # SFT block down (2), down-sampling conv (1), its pool (1), up conv (1), up-sampling (1), block up (2)
        r += 8 * s
    r += 2 * (config.blocks - 2 * config.levels) * s0 * 2 ** config.levels
    return r


def default_context(config: SFTNetConfig) -> int:
    """The receptive radius rounded up to the network's size multiple (tile frames stay aligned)."""
    m = config.size_multiple
    return int(math.ceil(receptive_radius(config) / m) * m)


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(a, min(a + tile, n)) for a in range(0, n, tile)]


def deblur_with_network(rgb: np.ndarray, sigma: np.ndarray, model: SFTDeblurNet, device: Any = None,
                        dtype: torch.dtype | None = None, tile: int = TILE,
                        context: int | None = None) -> np.ndarray:
    """Run ``model`` on ``rgb`` conditioned on ``sigma``, tile by tile.

    rgb: (H, W, 3) float32 in [0, 1] (the photo, or the solver's output for a network whose
    config.input is "solver"). sigma: (H, W) Gaussian sigma in px of rgb; NaN (unknown) counts
    as 0. device: where the network runs (None: where its weights are); dtype: autocast dtype
    (None: fp32). tile: tile side in px, rounded up to the network's size multiple; 0 = the
    whole image at once. context: px around each tile (None: ``default_context``).
    Returns (H, W, 3) float32 in [0, 1].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"deblur_with_network: rgb must be (H, W, 3), got {rgb.shape}")
    if sigma.shape != rgb.shape[:2]:
        raise ValueError(f"deblur_with_network: sigma must be (H, W) = {rgb.shape[:2]}, got {sigma.shape}")
    if tile < 0:
        raise ValueError(f"deblur_with_network: tile must be >= 0, got {tile}")
    config = model.config
    m = config.size_multiple
    context = default_context(config) if context is None else context
    if context % m:
        raise ValueError(f"deblur_with_network: context must be a multiple of {m}, got {context}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    H, W = sigma.shape
    tile = int(math.ceil(tile / m) * m) if tile else max(H, W)
    image = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    smap = torch.from_numpy(np.nan_to_num(sigma.astype(np.float32), nan=0.0))[None, None]
    out = np.empty((H, W, 3), np.float32)
    with torch.inference_mode(), autocast(device, dtype):
        for y0, y1 in _spans(H, tile):
            for x0, x1 in _spans(W, tile):
                # frames start on multiples of m (tiles and context are multiples of m)
                fy0, fx0 = max(0, y0 - context), max(0, x0 - context)
                fy1, fx1 = min(H, y1 + context), min(W, x1 + context)
                x = image[..., fy0:fy1, fx0:fx1].to(device)
                s = smap[..., fy0:fy1, fx0:fx1].to(device)
                y = model(x, s).float().clamp_(0, 1)
                y = y[0, :, y0 - fy0:y1 - fy0, x0 - fx0:x1 - fx0].permute(1, 2, 0)
                out[y0:y1, x0:x1] = y.cpu().numpy()
    return out


#: self-ensemble sizes: the first N of the 8 flips and quarter turns of the image
ENSEMBLE_SIZES = (1, 2, 4, 8)
#: quarter turns of transforms 2k and 2k + 1, ordered so that the first 1, 2, 4 or 8 transforms
#: form a group (``self_ensemble``)
_TURNS = (0, 2, 1, 3)


def check_ensemble(n: int) -> None:
    """InputError unless ``n`` is a self-ensemble size (``ENSEMBLE_SIZES``)."""
    if n not in ENSEMBLE_SIZES:
        raise InputError(f"--ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {n}")


def self_ensemble(run: Callable[[np.ndarray, np.ndarray], np.ndarray], rgb: np.ndarray,
                  sigma: np.ndarray, n: int) -> np.ndarray:
    """The mean of ``run`` over ``n`` geometric transforms of (rgb, sigma), each transformed back.

    Transform t (0 <= t < n) is a horizontal flip when t is odd, then ``_TURNS[t // 2]`` quarter
    turns, so each n is a group of the image's symmetries: {identity}, + the flip, + the half
    turn and the vertical flip, + the four quarter-turned ones. A Gaussian blur map is unchanged
    by all of them, a trained network's errors are not, so the mean averages some of them away
    (Lim et al.'s self-ensemble, EDSR 2017). n = 1 is ``run`` alone. Costs n runs.
    """
    check_ensemble(n)
    if n == 1:
        return run(rgb, sigma)
    total = np.zeros(rgb.shape, np.float32)
    for t in range(n):
        flip, turns = t & 1, _TURNS[t >> 1]
        x, s = (rgb[:, ::-1], sigma[:, ::-1]) if flip else (rgb, sigma)
        y = run(np.ascontiguousarray(np.rot90(x, turns)), np.ascontiguousarray(np.rot90(s, turns)))
        y = np.rot90(y, -turns)
        total += y[:, ::-1] if flip else y
    total *= np.float32(1.0 / n)
    return total


@dataclass
class DeblurNetwork:
    """A loaded deblurring network with its metadata and where it runs; ``ensemble``: the
    self-ensemble size every run uses (``self_ensemble``)."""

    model: SFTDeblurNet
    meta: dict[str, Any]
    device: torch.device
    dtype: torch.dtype | None
    ensemble: int = 1

    def __post_init__(self) -> None:
        check_ensemble(self.ensemble)

    @property
    def config(self) -> SFTNetConfig:
        return self.model.config

    @property
    def conditioned_on(self) -> str | None:
        """The estimator whose maps the network was trained on (stage 2), or None (true maps)."""
        return self.meta.get("maps_estimator")

    def describe(self) -> dict[str, Any]:
        """What deblurred a photo: name, sha256, architecture, config, the maps it was trained on,
        the self-ensemble size, device, precision."""
        return {"name": self.meta.get("name"), "sha256": self.meta.get("sha256"),
                "architecture": self.meta.get("architecture"), "config": self.meta.get("config"),
                "conditioned_on": self.conditioned_on, "ensemble": self.ensemble,
                "device": str(self.device), "precision": precision_name(self.dtype)}

    def run(self, rgb: np.ndarray, sigma: np.ndarray, tile: int = TILE) -> np.ndarray:
        def once(x: np.ndarray, s: np.ndarray) -> np.ndarray:
            return deblur_with_network(x, s, self.model, self.device, self.dtype, tile)

        return self_ensemble(once, rgb, sigma, self.ensemble)


def load_deblur_network(name_or_path: str | Path = "sft-deblur", device: str = "auto",
                        precision: str = "auto", ensemble: int = 1) -> DeblurNetwork:
    """Load a deblurring network from the registry (``models.registry.DEBLUR_MODEL``) or a file.

    precision "auto" is fp32 on a CPU without AMX (bf16 there is far slower) and bf16 on GPUs.
    ensemble: self-ensemble size of every run (1, 2, 4 or 8; n times the cost).
    Raises WeightsError for missing, corrupt or non-deblurring weights, InputError (from
    DeblurNetwork) for another ensemble size.
    """
    from defocus_cli.models.registry import SFT_ARCHITECTURE, load_model

    dev = resolve_device(device)
    model, meta = load_model(name_or_path, dev, architecture=SFT_ARCHITECTURE)
    return DeblurNetwork(model, meta, dev, resolve_precision(precision, dev), ensemble)
