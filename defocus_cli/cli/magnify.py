"""`defocus magnify`: magnify the defocus blur of photos (layered re-rendering)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from defocus_cli.cli.common import (DeviceOpt, MapOpt, ModelOpt, OutputOpt, OverwriteOpt, PhotosArg,
                                    PrecisionOpt, RecursiveOpt, WeightsOpt, WorkingSizeOpt, expand_inputs,
                                    fail, map_label, prepare_estimator, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL


def magnify(
    photos: PhotosArg,
    scale: Annotated[float, typer.Option(
        "--scale", "-s", help="Magnification M of every pixel's blur (1 = unchanged; the paper shows 8).")],
    map_opt: MapOpt = None,
    focus: Annotated[str, typer.Option(
        "--focus", help="near: the focus is at the near end, larger blur is farther; far: the opposite.")] = "near",
    in_focus: Annotated[float, typer.Option(
        "--in-focus", help="Pixels blurred less than this sigma (px) stay as they are; the added blur "
                           "fades in up to twice it. 0 = magnify every blur.")] = 0.5,
    output: OutputOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    working_size: WorkingSizeOpt = 768,
) -> None:
    """Magnify defocus blur: each pixel's blur sigma becomes SCALE times its estimated sigma.

    Adds a Gaussian blur of sqrt(SCALE^2 - 1) * sigma with the layered renderer (back to front,
    in-focus regions unchanged). Takes the defocus map from --map, or estimates it with the
    network. Writes NAME.magnified.EXT in the input's format and bit depth.
    """
    try:
        from defocus_cli.pipelines.magnify import MagnifyConfig

        try:
            config = MagnifyConfig(scale=scale, focus=focus, in_focus=in_focus)
        except ValueError as e:
            raise InputError(str(e)) from None
        from defocus_cli.maps import check_map_source

        paths = expand_inputs(photos, recursive)
        check_map_source(map_opt, paths)
        prepare_output_dir(output)
        estimator = prepare_estimator(model, weights, device, precision, needed=map_opt is None)
    except DefocusError as e:
        raise fail(e)
    from defocus_cli.photos import image_suffix, magnify_photo, output_path

    def process(photo: Path) -> dict:
        r = magnify_photo(photo, config, output, map_opt, estimator, working_size)
        return {"size": f"{r['width']}x{r['height']}", "map": map_label(r["map"]),
                "max σ px": f"{r['max_sigma']:.2f}", "added max px": f"{r['max_added_sigma']:.1f}",
                "layers": r["layers"]}

    code = run_batch(paths, process, lambda p: [output_path(p, output, image_suffix(p, "magnified"))],
                     overwrite, title="defocus magnify")
    raise typer.Exit(code)

