"""Photos on disk in, output files out: what each per-photo command does to one photo.

Each function reads the photo, obtains its defocus map (``maps.obtain_map``: given or
estimated), runs the pipeline, writes the outputs atomically next to the photo or in ``output``,
and returns a summary of plain values. The CLI adds batching, progress and printing; a library
user can call these directly:

    from defocus_cli import load_estimator
    from defocus_cli.photos import estimate_photo

    summary = estimate_photo(Path("photo.jpg"), load_estimator(), output=Path("maps"))
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defocus_cli import __version__
from defocus_cli.io.images import (
    PNG16_SCALE,
    Image,
    read_image,
    robust_max,
    save_json,
    save_npy,
    save_png16,
    save_preview,
    subsample,
    write_image,
)
from defocus_cli.maps import deblur_margin, is_estimated, map_estimator, obtain_map

if TYPE_CHECKING:
    from defocus_cli.estimator import Estimator, LazyEstimator
    from defocus_cli.pipelines.deblur import DeblurConfig, DeblurResult
    from defocus_cli.pipelines.deblur_net import DeblurNetwork
    from defocus_cli.pipelines.estimate import EstimateResult
    from defocus_cli.pipelines.magnify import MagnifyConfig

#: name parts of the files the tool writes: NAME.<suffix>
ESTIMATE_SUFFIXES = ("defocus.npy", "defocus.png", "defocus.preview.png", "defocus.json")
DEBLUR_SIDECAR = "deblurred.json"
DEPTH_SUFFIXES = ("depth.npy", "depth.png", "depth.preview.png", "depth.json")
#: markers of output names, so a folder scan does not take a previous run's outputs for photos
OUTPUT_MARKERS = (".defocus.", ".magnified.", ".deblurred.", ".depth.")
#: 16-bit depth PNG units: metric depth in mm; pseudo-depth in 1e-4 focus distances
PNG16_METRIC_SCALE = 1000.0
PNG16_PSEUDO_SCALE = 10000.0


def output_path(photo: Path, output: Path | None, suffix: str) -> Path:
    """NAME.<suffix> in ``output``, or beside the photo when ``output`` is None."""
    return (output or photo.parent) / f"{photo.stem}.{suffix}"


def _ensure_folder(output: Path | None) -> None:
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)


def image_suffix(photo: Path, kind: str) -> str:
    """``kind`` + the photo's own extension: outputs keep the input's format (NAME.deblurred.jpg)."""
    return f"{kind}{photo.suffix.lower() or '.png'}"


def is_output_name(path: Path) -> bool:
    return any(marker in path.name for marker in OUTPUT_MARKERS)


# ---------------------------------------------------------------------------------------------
# estimate


def map_statistics(sigma: np.ndarray) -> dict[str, float]:
    """min, mean, median, p99 and max of a map in px (percentiles from a subsample)."""
    sample = subsample(sigma)  # percentiles from <= ~1 M values: fast at 24 MP
    return {"min": float(sigma.min()), "mean": float(sigma.mean()),
            "median": float(np.median(sample)), "p99": float(np.percentile(sample, 99)),
            "max": float(sigma.max())}


#: the map files write_estimate can write, by name part (NAME.<part>)
MAP_FILES = ("defocus.npy", "defocus.png", "defocus.preview.png")


def write_estimate(photo: Path, output: Path | None, result: "EstimateResult", model: dict[str, Any],
                   input_info: dict[str, Any], refined: bool, preview_max: float = 0.0,
                   files: tuple[str, ...] = MAP_FILES) -> dict[str, Any]:
    """Write NAME.defocus.{npy,png,preview.png} (those of ``files``) and, last, the sidecar
    NAME.defocus.json of one estimated map; returns the sidecar.

    model: ``Estimator.describe()``. input_info: the photo's path, size, bit depth, format.
    preview_max: sigma (px) shown brightest in the preview; 0 = the map's 99.5th percentile.
    """
    unknown = set(files) - set(MAP_FILES)
    if unknown:
        raise ValueError(f"write_estimate: unknown files {sorted(unknown)}; known: {MAP_FILES}")
    sigma = result.sigma
    vmax = preview_max or max(robust_max(sigma), 1e-3)
    stats = map_statistics(sigma)
    writers = {"defocus.npy": lambda path: save_npy(path, sigma),
               "defocus.png": lambda path: save_png16(path, sigma, PNG16_SCALE),
               "defocus.preview.png": lambda path: save_preview(path, sigma, 0.0, vmax)}
    # the PNG encoders release the GIL: encoding the files side by side halves the write time
    # of a 12 MP map on two cores (benchmarks/README.md)
    with ThreadPoolExecutor(max_workers=len(files) or 1) as pool:
        for f in [pool.submit(writers[name], output_path(photo, output, name)) for name in files]:
            f.result()
    sidecar = {
        "units": "Gaussian blur sigma in pixels of the input photo at its full resolution",
        "definition": "sigma = c / 4, c = circle-of-confusion diameter (DMENet Eq. 1)",
        "npy": "float32 sigma, px",
        "png16_scale": PNG16_SCALE,
        "png16": f"uint16 = round(sigma * {PNG16_SCALE:g}); saturates at {65535 / PNG16_SCALE:g} px",
        "preview_range_px": [0.0, vmax],
        "input": input_info,
        "working_size": list(result.working_size),
        "scale": result.scale,
        "refined": refined,
        "model": model,
        "stats_px": stats,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "files": [f"{photo.stem}.{f}" for f in files],
        "defocus_version": __version__,
    }
    if result.info:
        sidecar["estimator_notes"] = result.info
    save_json(output_path(photo, output, "defocus.json"), sidecar)
    return sidecar


class Prefetcher:
    """Reads photos one ahead of their use, in a background thread.

    ``get(photo)`` returns the photo's Image (raising what ``read_image`` raised) and starts
    reading the photo that follows it in ``photos``. Decoding releases the GIL, so a photo is
    read while the previous one is estimated, and the first while torch is imported and the
    weights are loaded (at 12 MP a JPEG takes 0.2-0.4 s to read). At most one photo is held
    ahead. Use it as a context manager.
    """

    def __init__(self, photos: list[Path]) -> None:
        self._photos = list(photos)
        self._index = {p: i for i, p in reversed(list(enumerate(self._photos)))}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="defocus-read")
        self._pending: dict[Path, Any] = {}
        if self._photos:
            self._schedule(0)

    def _schedule(self, index: int) -> None:
        if index < len(self._photos) and self._photos[index] not in self._pending:
            self._pending = {self._photos[index]: self._pool.submit(read_image, self._photos[index])}

    def get(self, photo: Path) -> Image:
        future = self._pending.pop(photo, None)
        if photo in self._index:
            self._schedule(self._index[photo] + 1)
        return future.result() if future is not None else read_image(photo)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def estimate_photo(photo: Path, estimator: "Estimator | LazyEstimator", output: Path | None = None,
                   working_size: int | None = None, refine: bool = True,
                   preview_max: float = 0.0, image: Image | None = None) -> dict[str, Any]:
    """Estimate one photo's map and write its four files (``image``: the photo already read).
    Returns width, height, working size and the map's statistics (px)."""
    _ensure_folder(output)
    image = image if image is not None else read_image(photo)
    est = estimator.get()
    result = est.estimate(image.pixels, working_size, refine)
    W, H = image.size
    info = {"path": str(photo), "width": W, "height": H, "bit_depth": image.bit_depth,
            "format": image.format, "notes": image.notes}
    sidecar = write_estimate(photo, output, result, est.describe(), info, refine, preview_max)
    return {"width": W, "height": H, "working_size": tuple(result.working_size),
            "stats_px": sidecar["stats_px"]}


# ---------------------------------------------------------------------------------------------
# magnify


def magnify_photo(photo: Path, config: "MagnifyConfig", output: Path | None = None,
                  map_source: Path | None = None, estimator: "Estimator | LazyEstimator | None" = None,
                  working_size: int | None = None) -> dict[str, Any]:
    """Magnify one photo's defocus blur; writes NAME.magnified.EXT in its format and bit depth."""
    from defocus_cli.pipelines.magnify import magnify_defocus

    _ensure_folder(output)
    image = read_image(photo)
    sigma, origin = obtain_map(photo, image.pixels, map_source, estimator, working_size)
    result = magnify_defocus(image.pixels, sigma, config)
    write_image(output_path(photo, output, image_suffix(photo, "magnified")), result.image,
                bit_depth=image.bit_depth)
    W, H = image.size
    return {"width": W, "height": H, "map": origin, "max_sigma": float(sigma.max()),
            "max_added_sigma": float(result.added_sigma.max()), "layers": result.layers}


# ---------------------------------------------------------------------------------------------
# deblur


def deblur_pixels(pixels: np.ndarray, sigma: np.ndarray, origin: dict[str, Any], config: "DeblurConfig",
                  margin: float | None = None, device: Any = None, workers: int | None = None,
                  lam: float | None = None) -> tuple["DeblurResult", dict[str, Any]]:
    """Deblur with the project's policies; ``defocus deblur`` and ``defocus eval --deblur`` both run this.

    - margin: the map's margin (``maps.deblur_margin``: maps a network made are deblurred by
      their lower bound);
    - lam: the solver's data weight; None: from the photo's own noise, per level
      (``pipelines.deblur.noise_adaptive_lam``), capped for JPEG-compressed photos.
    Returns the result and the settings used (margin, lam or the noise it came from).
    """
    from defocus_cli.pipelines.deblur import deblur, measure_noise

    used: dict[str, Any] = {"margin_px": deblur_margin(origin, margin), "alpha": config.deconv.alpha}
    config = dataclasses.replace(config, map_margin=used["margin_px"])
    if lam is None:
        measured = measure_noise(pixels)
        config = dataclasses.replace(config, noise=measured["noise"], jpeg=measured["jpeg"])
        used.update(lam_source="noise", **measured)
    else:
        config = dataclasses.replace(config, deconv=dataclasses.replace(config.deconv, lam=lam), noise=None)
        used.update(lam_source="given", lam=lam)
    result = deblur(pixels, sigma, config, device=device, workers=workers)
    if lam is None:
        from defocus_cli.pipelines.deblur import noise_adaptive_lam

        used["lam_per_level"] = {f"{s:.3f}": round(noise_adaptive_lam(measured["noise"], s, measured["jpeg"]), 1)
                                 for s in result.levels[1:]}
    return result, used


#: how `defocus deblur` deblurs: the layered solver, or the map-conditioned network
DEBLUR_METHODS = ("solver", "network")


#: px; `deblur --method network` on a map no estimator made (a synthetic render's true map, a
#: hand-made one): pixels blurred by at most this keep the input, fading to the network's output
#: at twice it. Estimated maps keep ``DeblurConfig.sharp_sigma`` (0.5 px): they read sharp regions
#: about 0.5 px high. Chosen on the synthetic val split with the true maps (shipped weights,
#: threshold 0.5 / 0.25 / 0.2: +2.22 / +2.65 / +2.69 dB, worst render +0.00 / +0.01 / -0.58;
#: `benchmarks/bench_network_sharp.py`, benchmarks/README.md).
EXACT_MAP_SHARP_SIGMA = 0.25


def network_sharp_sigma(origin: dict[str, Any], config: "DeblurConfig", sharp: float | None = None) -> float:
    """px below which `deblur --method network` keeps the input: ``sharp`` when given, else
    ``config.sharp_sigma`` for maps a network made and ``EXACT_MAP_SHARP_SIGMA`` for others."""
    if sharp is not None:
        return float(sharp)
    return float(config.sharp_sigma) if is_estimated(origin) else EXACT_MAP_SHARP_SIGMA


#: px: `deblur --method network` returns a photo as it is when its estimated map (less the
#: margin, as the network would see it) is at most this at IN_FOCUS_PERCENTILE % of its pixels.
#: Such a photo is in focus as far as the map can tell: `fused` reads in-focus regions 0.2-0.9 px
#: where the truth is under 0.3 px, and sharpening an in-focus photo only loses (28 dB on a render
#: whose input PSNR is 93 dB). Chosen on the large synthetic set's val split (754 renders, none of
#: the test scenes; weights/README.md): with stage 6's weights the estimated-map row gains +0.91
#: dB without the rule, +1.04 with it; 0.9-1.1 px, and the 95th-99.5th percentile, give +1.03-1.04.
IN_FOCUS_SIGMA = 1.0
IN_FOCUS_PERCENTILE = 99.0


def network_in_focus_sigma(origin: dict[str, Any], in_focus: float | None = None) -> float:
    """px: ``in_focus`` when given, else IN_FOCUS_SIGMA for maps a network made and 0 (the rule
    off: an exact map says what it says) for others."""
    if in_focus is not None:
        return float(in_focus)
    return IN_FOCUS_SIGMA if is_estimated(origin) else 0.0


def in_focus_check(sigma: np.ndarray, threshold: float) -> tuple[float, bool]:
    """-> (the map's IN_FOCUS_PERCENTILE-th percentile in px, whether the photo is in focus by
    ``threshold``: that percentile is at most it; never for threshold 0)."""
    p = round(float(np.percentile(sigma, IN_FOCUS_PERCENTILE)), 4)
    return p, threshold > 0 and p <= threshold


def deblur_network_pixels(pixels: np.ndarray, sigma: np.ndarray, origin: dict[str, Any],
                          network: "DeblurNetwork", config: "DeblurConfig", margin: float | None = None,
                          device: Any = None, workers: int | None = None, lam: float | None = None,
                          sharp: float | None = None, in_focus: float | None = None,
                          ) -> tuple[np.ndarray, dict[str, Any]]:
    """Deblur with the map-conditioned network (``defocus deblur --method network``).

    The network sees the map less the margin policy's margin (``maps.deblur_margin``, as the
    solver does; none for maps of the estimator whose maps the network was trained on,
    ``DeblurNetwork.conditioned_on``: it learnt them as they are) and the photo, or, for a
    network trained on the solver's output (config.input "solver"), the solver's result
    (``deblur_pixels`` with config, device, workers, lam). As in the solver, pixels blurred by
    at most the sharp threshold (``network_sharp_sigma``: ``sharp``, or its policy) keep the
    input exactly; the network's output is blended in linearly up to twice that sigma, so no
    seam shows. A photo the map calls in focus (``network_in_focus_sigma``: ``in_focus``, or
    its policy; see IN_FOCUS_SIGMA) is returned as it is and the network does not run
    (``used["in_focus"]``). Returns (H, W, 3) float32 in [0, 1] and the settings used.
    """
    if margin is None and is_estimated(origin) and map_estimator(origin) == network.conditioned_on:
        margin = 0.0
    used: dict[str, Any] = {"margin_px": deblur_margin(origin, margin),
                            "sharp_sigma_px": network_sharp_sigma(origin, config, sharp),
                            "in_focus_sigma_px": network_in_focus_sigma(origin, in_focus), **network.describe()}
    s = np.maximum(np.nan_to_num(sigma) - used["margin_px"], 0.0).astype(np.float32)
    used["map_p99_px"], used["in_focus"] = in_focus_check(s, used["in_focus_sigma_px"])
    if used["in_focus"]:
        return pixels.astype(np.float32, copy=True), used
    base = pixels
    if network.config.input == "solver":
        result, used["deconvolution"] = deblur_pixels(pixels, sigma, origin, config, margin, device, workers, lam)
        base = result.image
    return keep_sharp(pixels, network.run(base, s), s, used["sharp_sigma_px"]), used


def keep_sharp(pixels: np.ndarray, restored: np.ndarray, sigma: np.ndarray, threshold: float) -> np.ndarray:
    """The network's output where the map (the one it saw) exceeds twice ``threshold``, the
    input where it is at most ``threshold``, blended linearly between (0: the output)."""
    if threshold <= 0:
        return restored.astype(np.float32)
    # the network changes every pixel a little (it was trained on noisy, compressed inputs):
    # an in-focus render (input = sharp) lost up to 22 dB to that; kept, it loses nothing
    w = np.clip(sigma / threshold - 1.0, 0.0, 1.0)[..., None]
    return (pixels + w * (restored - pixels)).astype(np.float32)


def deblur_photo(photo: Path, config: "DeblurConfig", output: Path | None = None,
                 map_source: Path | None = None, estimator: "Estimator | LazyEstimator | None" = None,
                 working_size: int | None = None, margin: float | None = None, device: Any = None,
                 workers: int | None = None, lam: float | None = None, method: str = "solver",
                 network: "DeblurNetwork | None" = None, sharp: float | None = None,
                 in_focus: float | None = None) -> dict[str, Any]:
    """All-in-focus image of one photo; writes NAME.deblurred.EXT in its format and bit depth,
    and NAME.deblurred.json (the method, the map's origin, the margin, and the noise measured
    and lam used by the solver, or the network's name and sha256).

    margin: px subtracted from the map (None: the policy of ``maps.deblur_margin``). lam: the
    solver's data weight (None: from the photo's noise). device: a torch.device for the FFTs
    (None: numpy); defaults to the estimator's when it runs.
    method: "solver" (layered hyper-Laplacian deconvolution, ``deblur_pixels``) or "network"
    (``deblur_network_pixels`` with ``network``, a loaded ``pipelines.deblur_net.DeblurNetwork``,
    and ``sharp``: its sharp threshold, None for ``network_sharp_sigma``'s policy, and
    ``in_focus``: px, None for ``network_in_focus_sigma``'s policy; the solver keeps
    ``config.sharp_sigma`` and deblurs every photo).
    """
    if method not in DEBLUR_METHODS:
        raise ValueError(f"deblur_photo: method must be one of {', '.join(DEBLUR_METHODS)}, got {method!r}")
    if method == "network" and network is None:
        raise ValueError("deblur_photo: method 'network' needs a loaded network")
    _ensure_folder(output)
    image = read_image(photo)
    sigma, origin = obtain_map(photo, image.pixels, map_source, estimator, working_size)
    if device is None and origin["source"] == "estimated":
        device = estimator.get().device
    W, H = image.size
    sidecar: dict[str, Any] = {
        "input": {"path": str(photo), "width": W, "height": H, "bit_depth": image.bit_depth},
        "method": method,
        "map": origin,
    }
    if method == "solver":
        result, used = deblur_pixels(image.pixels, sigma, origin, config, margin, device, workers, lam)
        restored = result.image
        sidecar.update(deconvolution=used, levels_px=[float(v) for v in result.levels])
        summary = {"margin": used["margin_px"], "noise": used.get("noise"), "jpeg": used.get("jpeg"),
                   "lam": used.get("lam"), "deblurred_fraction": float(1 - result.layer_fraction[0]),
                   "levels": int((result.layer_fraction[1:] > 0).sum())}
    else:
        restored, used = deblur_network_pixels(image.pixels, sigma, origin, network, config, margin,
                                               device, workers, lam, sharp, in_focus)
        sidecar["network"] = used
        summary = {"margin": used["margin_px"], "noise": None, "jpeg": None, "lam": None, "levels": 0,
                   "in_focus": used["in_focus"],
                   "deblurred_fraction": 0.0 if used["in_focus"] else
                   float(np.mean(sigma - used["margin_px"] > used["sharp_sigma_px"]))}
    write_image(output_path(photo, output, image_suffix(photo, "deblurred")), restored,
                bit_depth=image.bit_depth)
    sidecar["defocus_version"] = __version__
    save_json(output_path(photo, output, DEBLUR_SIDECAR), sidecar)
    return {"width": W, "height": H, "map": origin, "max_sigma": float(sigma.max()), "method": method,
            **summary}


# ---------------------------------------------------------------------------------------------
# depth


def depth_photo(photo: Path, focus: str = "near", lens_flags: dict[str, float | None] | None = None,
                output: Path | None = None, map_source: Path | None = None,
                estimator: "Estimator | LazyEstimator | None" = None,
                working_size: int | None = None) -> dict[str, Any]:
    """Depth of one photo: metric when the lens is known (EXIF and ``lens_flags``), else pseudo.

    Writes NAME.depth.npy (float32), NAME.depth.png (16-bit, near = dark), a preview and
    NAME.depth.json. Returns size, kind, range and the number of pixels beyond infinity.
    """
    from defocus_cli.pipelines.depth import DepthConfig, depth_from_sigma, resolve_lens

    _ensure_folder(output)
    image = read_image(photo)
    sigma, origin = obtain_map(photo, image.pixels, map_source, estimator, working_size)
    W, H = image.size
    lens, described = resolve_lens(image.exif, W, H, lens_flags or {})
    result = depth_from_sigma(sigma, DepthConfig(focus=focus, lens=lens))
    metric = result.kind == "metric"
    scale = PNG16_METRIC_SCALE if metric else PNG16_PSEUDO_SCALE
    finite = np.isfinite(result.depth)
    far = float(result.depth[finite].max()) if finite.any() else 1.0
    shown = np.where(finite, result.depth, far)
    save_npy(output_path(photo, output, "depth.npy"), result.depth)
    save_png16(output_path(photo, output, "depth.png"), np.minimum(shown, 65535 / scale), scale)
    save_preview(output_path(photo, output, "depth.preview.png"), shown, float(shown.min()), far)
    save_json(output_path(photo, output, "depth.json"), {
        **result.describe(),
        "npy": f"float32 depth in {result.units}; +inf where no depth on the chosen side fits",
        "png16_scale": scale,
        "png16": f"uint16 = round(depth * {scale:g}) ({'mm' if metric else '1e-4 focus distances'}), "
                 "near = dark, saturating at 65535",
        "lens": described if lens else None,
        "map": origin,
        "input": {"path": str(photo), "width": W, "height": H},
        "defocus_version": __version__,
    })
    return {"width": W, "height": H, "kind": result.kind, "units": result.units,
            "range": (float(shown.min()), far), "beyond": int(result.beyond),
            "pixels": int(result.depth.size), "map": origin}

