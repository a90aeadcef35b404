"""`defocus deblur`: all-in-focus photos by layered hyper-Laplacian deconvolution."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from defocus_cli.cli.common import (DeviceOpt, LazyEstimator, MapOpt, ModelOpt, OutputOpt,
                                    OverwriteOpt, PhotosArg, PrecisionOpt, RecursiveOpt, WeightsOpt,
                                    WorkingSizeOpt, check_map_option, expand_inputs, fail, output_path,
                                    prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL


def _suffix(photo: Path) -> str:
    """NAME.deblurred.EXT, in the input's format."""
    return "deblurred" + (photo.suffix.lower() or ".png")


def deblur(
    photos: PhotosArg,
    map_opt: MapOpt = None,
    alpha: Annotated[Optional[float], typer.Option(
        "--alpha", help="Exponent of the hyper-Laplacian gradient prior, 0 < alpha <= 1 "
                        "(default 0.8, measured best on real JPEG photos; 0.5 and 2/3 are "
                        "solved in closed form).")] = None,
    lam: Annotated[Optional[float], typer.Option(
        "--lam", help="Weight of the data term (default 300, for JPEG photos); larger trusts the "
                      "photo more: ~2000 suits clean, uncompressed input.")] = None,
    layers: Annotated[int, typer.Option(
        "--layers", help="Number of blur levels the map is split into.")] = 16,
    sharp: Annotated[float, typer.Option(
        "--sharp", help="Pixels blurred by at most this sigma (px) keep the input.")] = 0.5,
    margin: Annotated[Optional[float], typer.Option(
        "--margin", help="px subtracted from the map before deblurring (too large a sigma rings, "
                         "too small only sharpens less). Default: 0.625 for estimated maps (their "
                         "measured error on real photos), also a --map whose JSON sidecar from "
                         "`defocus estimate` names the model; 0 for other maps.")] = None,
    channels: Annotated[str, typer.Option(
        "--channels", help="luma: deconvolve brightness only (default; 3x faster, as good on "
                           "JPEG photos); rgb: each colour channel.")] = "luma",
    threads: Annotated[int, typer.Option(
        "--threads", help="CPU threads (0 = torch's default, one per core): frames are "
                          "deconvolved in parallel, one per thread.")] = 0,
    output: OutputOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    working_size: WorkingSizeOpt = 768,
) -> None:
    """All-in-focus images: undo each pixel's defocus blur by non-blind deconvolution.

    The defocus map (from --map, or estimated with the network) is split into blur levels; each
    level is deconvolved with its Gaussian kernel (hyper-Laplacian prior, Krishnan & Fergus
    2009) where it is used, and the levels are blended per pixel. Writes NAME.deblurred.EXT in
    the input's format and bit depth.
    """
    try:
        from defocus_cli.ops.deconv import DeconvConfig
        from defocus_cli.pipelines.deblur import DeblurConfig

        try:
            deconv = DeconvConfig(**{k: v for k, v in (("alpha", alpha), ("lam", lam)) if v is not None})
            config = DeblurConfig(deconv=deconv, layers=layers, sharp_sigma=sharp, channels=channels,
                                  map_margin=0.0 if margin is None else margin)
        except ValueError as e:
            # "DeconvConfig: lam must be > 0" -> "--lam must be > 0"
            raise InputError("--" + str(e).split(": ", 1)[-1].replace("sharp_sigma", "sharp")
                             .replace("map_margin", "margin")) from None
        if threads < 0:
            raise InputError(f"--threads must be >= 0, got {threads}")
        paths = expand_inputs(photos, recursive)
        check_map_option(map_opt, paths)
        prepare_output_dir(output)
        estimator = LazyEstimator(model, weights, device, precision)
        if map_opt is None:
            estimator.get()  # a bad model or device is one error, not one per photo
            fft_device = estimator.get().device
        else:
            from defocus_cli.device import resolve_device

            fft_device = resolve_device(device)
        if threads:
            import torch

            torch.set_num_threads(threads)
    except DefocusError as e:
        raise fail(e)

    def process(photo: Path) -> dict:
        return _deblur_one(photo, output, config, map_opt, estimator, working_size, fft_device,
                           margin is None)

    code = run_batch(paths, process, lambda p: [output_path(p, output, _suffix(p))],
                     overwrite, title="defocus deblur")
    raise typer.Exit(code)


def _deblur_one(photo: Path, output: Path | None, config, map_opt: Path | None,
                estimator: LazyEstimator, working_size: int, fft_device, default_margin: bool) -> dict:
    import dataclasses

    from defocus_cli.cli.common import obtain_map
    from defocus_cli.io.images import read_image, write_image
    from defocus_cli.pipelines.deblur import ESTIMATED_MAP_MARGIN, deblur as deblur_photo

    image = read_image(photo)
    sigma, origin = obtain_map(photo, image, map_opt, estimator, working_size)
    estimated = origin["source"] == "estimated" or "estimated_by" in origin
    if default_margin and estimated:
        config = dataclasses.replace(config, map_margin=ESTIMATED_MAP_MARGIN)
    result = deblur_photo(image.pixels, sigma, config, device=fft_device)
    write_image(output_path(photo, output, _suffix(photo)), result.image, bit_depth=image.bit_depth)
    w, h = image.size
    used = int((result.layer_fraction[1:] > 0).sum())
    return {"size": f"{w}x{h}", "map": "estimated" if origin["source"] == "estimated" else
            "given (estimated)" if estimated else "given",
            "max σ px": f"{float(sigma.max()):.2f}",
            "deblurred": f"{100 * (1 - result.layer_fraction[0]):.0f}%", "levels": used}
