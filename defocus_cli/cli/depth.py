"""`defocus depth`: pseudo or metric depth from defocus maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from defocus_cli.cli.common import (DeviceOpt, MapOpt, ModelOpt, OutputOpt, OverwriteOpt, PhotosArg,
                                    PrecisionOpt, RecursiveOpt, WeightsOpt, WorkingSizeOpt, expand_inputs,
                                    fail, prepare_estimator, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL


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
        from defocus_cli.maps import check_map_source

        paths = expand_inputs(photos, recursive)
        check_map_source(map_opt, paths)
        prepare_output_dir(output)
        estimator = prepare_estimator(model, weights, device, precision, needed=map_opt is None)
    except DefocusError as e:
        raise fail(e)
    from defocus_cli.photos import DEPTH_SUFFIXES, depth_photo, output_path

    flags = {"focal_length_mm": focal_length, "f_number": f_number,
             "focus_distance_m": focus_distance, "pixel_pitch_um": pixel_pitch}

    def process(photo: Path) -> dict:
        r = depth_photo(photo, focus, flags, output, map_opt, estimator, working_size)
        lo, hi = r["range"]
        row = {"size": f"{r['width']}x{r['height']}", "kind": r["kind"],
               "range": f"{lo:.2f}-{hi:.2f} {'m' if r['kind'] == 'metric' else 'S1'}"}
        if r["beyond"]:
            # blur no depth on the --focus side explains: say so where people look, not only in JSON
            row["beyond ∞"] = f"{100 * r['beyond'] / r['pixels']:.1f}%"
        return row

    code = run_batch(paths, process, lambda p: [output_path(p, output, s) for s in DEPTH_SUFFIXES],
                     overwrite, title="defocus depth")
    raise typer.Exit(code)
