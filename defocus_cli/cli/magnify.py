"""`defocus magnify`: magnify the defocus blur of photos (layered re-rendering)."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from defocus_cli.cli.common import (DeviceOpt, LazyEstimator, MapOpt, ModelOpt, OutputOpt,
                                    OverwriteOpt, PhotosArg, PrecisionOpt, RecursiveOpt, WeightsOpt,
                                    WorkingSizeOpt, check_map_option, expand_inputs, fail, output_path,
                                    prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL


def _suffix(photo: Path) -> str:
    """NAME.magnified.EXT, in the input's format."""
    return "magnified" + (photo.suffix.lower() or ".png")


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
        paths = expand_inputs(photos, recursive)
        check_map_option(map_opt, paths)
        prepare_output_dir(output)
        estimator = LazyEstimator(model, weights, device, precision)
        if map_opt is None:
            estimator.get()  # a bad model or device is one error, not one per photo
    except DefocusError as e:
        raise fail(e)

    def process(photo: Path) -> dict:
        return _magnify_one(photo, output, config, map_opt, estimator, working_size)

    code = run_batch(paths, process, lambda p: [output_path(p, output, _suffix(p))],
                     overwrite, title="defocus magnify")
    raise typer.Exit(code)


def _magnify_one(photo: Path, output: Path | None, config, map_opt: Path | None,
                 estimator: LazyEstimator, working_size: int) -> dict:
    from defocus_cli.cli.common import obtain_map
    from defocus_cli.io.images import read_image, write_image
    from defocus_cli.pipelines.magnify import magnify_defocus

    image = read_image(photo)
    sigma, origin = obtain_map(photo, image, map_opt, estimator, working_size)
    result = magnify_defocus(image.pixels, sigma, config)
    write_image(output_path(photo, output, _suffix(photo)), result.image, bit_depth=image.bit_depth)
    w, h = image.size
    return {"size": f"{w}x{h}", "map": "estimated" if origin["source"] == "estimated" else "given",
            "max σ px": f"{float(sigma.max()):.2f}", "added max px": f"{float(result.added_sigma.max()):.1f}",
            "layers": result.layers}
