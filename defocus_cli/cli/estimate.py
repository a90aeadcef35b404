"""`defocus estimate`: per-pixel defocus maps of photos."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from defocus_cli.cli.common import (DeviceOpt, LazyEstimator, ModelOpt, OutputOpt, OverwriteOpt,
                                    PhotosArg, PrecisionOpt, RecursiveOpt, WeightsOpt, WorkingSizeOpt,
                                    expand_inputs, fail, output_path, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError
from defocus_cli.models import DEFAULT_MODEL

SUFFIXES = ("defocus.npy", "defocus.png", "defocus.preview.png", "defocus.json")


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
        estimator = LazyEstimator(model, weights, device, precision)
        estimator.get()  # a bad model or device is one error, not one per photo
    except DefocusError as e:
        raise fail(e)

    def process(photo: Path) -> dict:
        return _estimate_one(photo, output, estimator, working_size, not no_refine, preview_max)

    code = run_batch(paths, process, lambda p: [output_path(p, output, s) for s in SUFFIXES],
                     overwrite, title="defocus estimate")
    raise typer.Exit(code)


def _estimate_one(photo: Path, output: Path | None, estimator: LazyEstimator, working_size: int,
                  refine: bool, preview_max: float) -> dict:
    import numpy as np

    from defocus_cli import __version__
    from defocus_cli.io.images import (PNG16_SCALE, read_image, robust_max, save_json, save_npy, save_png16,
                                      save_preview, subsample)

    image = read_image(photo)
    est = estimator.get()
    result = est.estimate(image.pixels, working_size, refine)
    sigma = result.sigma
    vmax = preview_max or max(robust_max(sigma), 1e-3)
    sample = subsample(sigma)  # percentiles from <= ~1 M values: fast at 24 MP
    stats = {"min": float(sigma.min()), "mean": float(sigma.mean()),
             "median": float(np.median(sample)), "p99": float(np.percentile(sample, 99)),
             "max": float(sigma.max())}
    save_npy(output_path(photo, output, "defocus.npy"), sigma)
    save_png16(output_path(photo, output, "defocus.png"), sigma, PNG16_SCALE)
    save_preview(output_path(photo, output, "defocus.preview.png"), sigma, 0.0, vmax)
    W, H = image.size
    save_json(output_path(photo, output, "defocus.json"), {
        "units": "Gaussian blur sigma in pixels of the input photo at its full resolution",
        "definition": "sigma = c / 4, c = circle-of-confusion diameter (DMENet Eq. 1)",
        "npy": "float32 sigma, px",
        "png16_scale": PNG16_SCALE,
        "png16": f"uint16 = round(sigma * {PNG16_SCALE:g}); saturates at {65535 / PNG16_SCALE:g} px",
        "preview_range_px": [0.0, vmax],
        "input": {"path": str(photo), "width": W, "height": H, "bit_depth": image.bit_depth,
                  "format": image.format, "notes": image.notes},
        "working_size": list(result.working_size),
        "scale": result.scale,
        "refined": refine,
        "model": est.describe(),
        "stats_px": stats,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "defocus_version": __version__,
    })
    return {"size": f"{W}x{H}", "work": "x".join(map(str, result.working_size)),
            "mean σ px": f"{stats['mean']:.2f}", "max σ px": f"{stats['max']:.2f}"}
