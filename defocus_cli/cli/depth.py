"""`defocus depth`: pseudo or metric depth from defocus maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from defocus_cli.cli.common import (DeviceOpt, LazyEstimator, MapOpt, ModelOpt, OutputOpt, OverwriteOpt,
                                    PhotosArg, PrecisionOpt, RecursiveOpt, WeightsOpt, WorkingSizeOpt,
                                    check_map_option, expand_inputs, fail, output_path, prepare_output_dir,
                                    run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL

SUFFIXES = ("depth.npy", "depth.png", "depth.preview.png", "depth.json")
#: 16-bit PNG units: metric depth in mm; pseudo-depth in 1e-4 focus distances
PNG16_METRIC_SCALE = 1000.0
PNG16_PSEUDO_SCALE = 10000.0


def depth(
    photos: PhotosArg,
    map_opt: MapOpt = None,
    focus: Annotated[str, typer.Option(
        "--focus", help="near: the focus is on the nearest things and blur grows with depth (the "
                        "usual photo); far: the focus is at the far end.")] = "near",
    focal_length: Annotated[Optional[float], typer.Option("--focal-length", help="Focal length, mm.")] = None,
    f_number: Annotated[Optional[float], typer.Option("--f-number", help="Aperture f-number N.")] = None,
    focus_distance: Annotated[Optional[float], typer.Option(
        "--focus-distance", help="Focus distance, m (EXIF SubjectDistance when present).")] = None,
    pixel_pitch: Annotated[Optional[float], typer.Option(
        "--pixel-pitch", help="Pixel pitch in um at the photo's resolution (EXIF focal-plane "
                              "resolution when present).")] = None,
    output: OutputOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    working_size: WorkingSizeOpt = 768,
) -> None:
    """Depth from defocus: metric (metres) when the lens is known from flags or EXIF, else
    pseudo-depth (order only), by inverting the thin-lens model (Eq. 1) on the --focus side.

    Writes NAME.depth.npy (float32), NAME.depth.png (16-bit, near = dark: mm for metric depth,
    1e-4 focus distances for pseudo-depth), NAME.depth.preview.png and NAME.depth.json.
    """
    try:
        if focus not in ("near", "far"):
            raise InputError(f"--focus must be near or far, got {focus!r}")
        paths = expand_inputs(photos, recursive)
        check_map_option(map_opt, paths)
        prepare_output_dir(output)
        estimator = LazyEstimator(model, weights, device, precision)
        if map_opt is None:
            estimator.get()
    except DefocusError as e:
        raise fail(e)
    flags = {"focal_length_mm": focal_length, "f_number": f_number,
             "focus_distance_m": focus_distance, "pixel_pitch_um": pixel_pitch}

    def process(photo: Path) -> dict:
        return _depth_one(photo, output, focus, flags, map_opt, estimator, working_size)

    code = run_batch(paths, process, lambda p: [output_path(p, output, s) for s in SUFFIXES],
                     overwrite, title="defocus depth")
    raise typer.Exit(code)


def _depth_one(photo: Path, output: Path | None, focus: str, flags: dict, map_opt: Path | None,
               estimator: LazyEstimator, working_size: int) -> dict:
    import numpy as np

    from defocus_cli import __version__
    from defocus_cli.cli.common import obtain_map
    from defocus_cli.io.images import read_image, save_json, save_npy, save_png16, save_preview
    from defocus_cli.pipelines.depth import DepthConfig, LensParams, depth_from_sigma, lens_from_exif

    image = read_image(photo)
    sigma, origin = obtain_map(photo, image, map_opt, estimator, working_size)
    w, h = image.size
    known = lens_from_exif(image.exif, w, h)
    sources = {k: "exif" for k in known}
    for k, v in flags.items():
        if v is not None:
            known[k], sources[k] = v, "flag"
    lens = None
    if len(known) == 4:
        try:
            lens = LensParams(**known)
        except ValueError as e:
            raise InputError(f"{photo}: {e}") from None
    elif known and any(src == "flag" for src in sources.values()):
        missing = sorted(set(LensParams.__dataclass_fields__) - set(known))
        raise InputError(f"{photo}: metric depth needs all four lens parameters; missing "
                         f"{', '.join(missing)} (give them as flags, or none for pseudo-depth)")
    result = depth_from_sigma(sigma, DepthConfig(focus=focus, lens=lens))
    scale = PNG16_METRIC_SCALE if result.kind == "metric" else PNG16_PSEUDO_SCALE
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
        "png16": f"uint16 = round(depth * {scale:g}) "
                 f"({'mm' if result.kind == 'metric' else '1e-4 focus distances'}), "
                 "near = dark, saturating at 65535",
        "lens": {k: {"value": v, "source": sources[k]} for k, v in known.items()} if lens else None,
        "map": origin,
        "input": {"path": str(photo), "width": w, "height": h},
        "defocus_version": __version__,
    })
    row = {"size": f"{w}x{h}", "kind": result.kind,
           "range": f"{float(shown.min()):.2f}-{far:.2f} {'m' if result.kind == 'metric' else 'S1'}"}
    if result.beyond:
        # blur no depth on the --focus side explains: say so where people look, not only in JSON
        row["beyond ∞"] = f"{100 * result.beyond / result.depth.size:.1f}%"
    return row
