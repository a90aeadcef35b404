"""`defocus estimate`: per-pixel defocus maps of photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from defocus_cli.cli.common import (DeviceOpt, ModelOpt, OutputOpt, OverwriteOpt, PhotosArg, PrecisionOpt,
                                    RecursiveOpt, WeightsOpt, WorkingSizeOpt, expand_inputs, fail,
                                    prepare_estimator, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError
from defocus_cli.models import DEFAULT_MODEL


def estimate(
    photos: PhotosArg,
    output: OutputOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    working_size: WorkingSizeOpt = 768,
    no_refine: Annotated[bool, typer.Option(
        "--no-refine", help="Skip the edge-aware refinement guided by the full-resolution photo.")] = False,
    preview_max: Annotated[float, typer.Option(
        "--preview-max", help="Sigma (px) shown as the brightest preview colour; 0 = per photo.")] = 0.0,
) -> None:
    """Estimate per-pixel defocus maps: Gaussian blur sigma in pixels of each photo's full resolution.

    Writes NAME.defocus.npy (float32 sigma, px), NAME.defocus.png (16-bit, sigma x 1000),
    NAME.defocus.preview.png (colour, for viewing) and NAME.defocus.json (units, scale, model).
    """
    try:
        paths = expand_inputs(photos, recursive)
        prepare_output_dir(output)
        estimator = prepare_estimator(model, weights, device, precision, needed=True)
    except DefocusError as e:
        raise fail(e)
    from defocus_cli.photos import ESTIMATE_SUFFIXES, estimate_photo, output_path

    def process(photo: Path) -> dict:
        r = estimate_photo(photo, estimator, output, working_size, not no_refine, preview_max)
        return {"size": f"{r['width']}x{r['height']}", "work": "x".join(map(str, r["working_size"])),
                "mean σ px": f"{r['stats_px']['mean']:.2f}", "max σ px": f"{r['stats_px']['max']:.2f}"}

    code = run_batch(paths, process, lambda p: [output_path(p, output, s) for s in ESTIMATE_SUFFIXES],
                     overwrite, title="defocus estimate")
    raise typer.Exit(code)

