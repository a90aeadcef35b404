"""Where a photo's defocus map comes from, and the policies that depend on it.

A map is given (a ``.npy`` or 16-bit ``.png`` from `defocus estimate`, one file or a folder of
NAME.defocus.npy) or estimated by a network. A given map of another size with the photo's aspect
ratio is resampled (``ops.maps.resample_map``). Maps that a network made over-estimate small
blur, so deblurring subtracts a margin from them (``deblur_margin``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from defocus_cli.errors import InputError

if TYPE_CHECKING:
    from defocus_cli.estimator import Estimator, LazyEstimator


def check_map_source(map_source: Path | None, photos: Sequence[Path]) -> None:
    """A map source is a folder of NAME.defocus.npy maps, or one map file for a single photo."""
    if map_source is None or map_source.is_dir():
        return
    if not map_source.is_file():
        raise InputError(f"{map_source}: --map not found")
    if len(photos) > 1:
        raise InputError(f"{map_source}: one map file fits one photo; for {len(photos)} photos "
                         "give a folder of NAME.defocus.npy maps")


def map_path_for(photo: Path, map_source: Path) -> Path:
    """The map file of ``photo``: ``map_source`` itself, or NAME.defocus.npy inside that folder."""
    return map_source / f"{photo.stem}.defocus.npy" if map_source.is_dir() else map_source


def read_map_for(path: Path, shape: tuple[int, int], photo_name: str = "the photo") -> np.ndarray:
    """A map file as (H, W) float32 sigma in px of a photo of ``shape`` (H, W), resampled if needed.

    Raises InputError for an unreadable map, another aspect ratio, or values that are not
    finite and >= 0.
    """
    from defocus_cli.io.images import load_map
    from defocus_cli.ops.maps import resample_map

    sigma = load_map(path)
    try:
        sigma = resample_map(sigma, shape)
    except ValueError as e:
        raise InputError(f"{path}: {e} ({photo_name})") from None
    if not np.all(np.isfinite(sigma)) or sigma.min() < 0:
        raise InputError(f"{path}: map must be finite and >= 0 (Gaussian sigma in px)")
    return sigma


def estimated_by(map_path: Path) -> str | None:
    """The model named by a map file's JSON sidecar (NAME.defocus.json from `defocus estimate`),
    or None when no sidecar says a network made it."""
    try:
        meta = json.loads(map_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    model = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(model, dict):
        return None
    return str(model.get("name") or model.get("sha256") or "a network")


def obtain_map(photo: Path, pixels: np.ndarray, map_source: Path | None,
               estimator: "Estimator | LazyEstimator | None",
               working_size: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The defocus map of a photo and where it came from.

    pixels: the photo, (H, W, 3) float32 RGB in [0, 1]. map_source: a map file, a folder of
    NAME.defocus.npy, or None to estimate with ``estimator`` (an Estimator, or a LazyEstimator
    that loads on first use). Returns ((H, W) float32 sigma in px, origin), origin being
    {"source": "estimated", "model": ..., "working_size": [w, h]} or {"source": PATH} plus
    {"estimated_by": NAME} when the map's sidecar names a model.
    """
    if map_source is None:
        if estimator is None:
            raise InputError(f"{photo}: no map given and no estimator to make one")
        est = estimator.get()
        result = est.estimate(pixels, working_size)
        return result.sigma, {"source": "estimated", "model": est.describe(),
                              "working_size": list(result.working_size)}
    path = map_path_for(photo, map_source)
    sigma = read_map_for(path, pixels.shape[:2], photo.name)
    origin: dict[str, Any] = {"source": str(path)}
    model = estimated_by(path)
    if model is not None:
        origin["estimated_by"] = model
    return sigma, origin


def is_estimated(origin: dict[str, Any]) -> bool:
    """True for maps a network made: estimated now, or given with a sidecar naming the model."""
    return origin.get("source") == "estimated" or "estimated_by" in origin


def deblur_margin(origin: dict[str, Any], margin: float | None = None) -> float:
    """px subtracted from a map before deblurring: ``margin`` when given, else the margin of
    the estimator that made it (pipelines.deblur.estimated_map_margin) and 0 for maps no
    estimator made."""
    from defocus_cli.pipelines.deblur import estimated_map_margin

    if margin is not None:
        return float(margin)
    if not is_estimated(origin):
        return 0.0
    return estimated_map_margin(map_estimator(origin))


def map_estimator(origin: dict[str, Any]) -> str | None:
    """The name of the estimator that made a map (None when it is not known)."""
    model = origin.get("model")
    return model.get("name") if isinstance(model, dict) else origin.get("estimated_by")
