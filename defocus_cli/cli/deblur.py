"""`defocus deblur`: all-in-focus photos by layered hyper-Laplacian deconvolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from defocus_cli.cli.common import (DeviceOpt, MapOpt, ModelOpt, OutputOpt, OverwriteOpt, PhotosArg,
                                    PrecisionOpt, RecursiveOpt, WeightsOpt, WorkingSizeOpt, expand_inputs,
                                    fail, map_label, prepare_estimator, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL


def deblur(
    photos: PhotosArg,
    map_opt: MapOpt = None,
    alpha: Annotated[Optional[float], typer.Option(
        "--alpha", help="Exponent of the hyper-Laplacian gradient prior, 0 < alpha <= 1 "
                        "(default 0.8, measured best on real JPEG photos; 0.5 and 2/3 are "
                        "solved in closed form).")] = None,
    lam: Annotated[Optional[float], typer.Option(
        "--lam", help="Weight of the data term; larger trusts the photo more. Default: from each "
                      "photo's own noise and each level's sigma (a rule fitted on synthetic blur "
                      "with known noise), at most 300 for JPEG-compressed photos; the noise and "
                      "the weights go in NAME.deblurred.json.")] = None,
    layers: Annotated[int, typer.Option(
        "--layers", help="Number of blur levels the map is split into.")] = 16,
    sharp: Annotated[Optional[float], typer.Option(
        "--sharp", help="Pixels blurred by at most this sigma (px) keep the input. Default 0.5; "
                        "with --method network on a map no estimator made (a true or hand-made "
                        "map), 0.25.")] = None,
    in_focus: Annotated[Optional[float], typer.Option(
        "--in-focus", help="With --method network: a photo whose map (less the margin) is at most "
                           "this sigma (px) at 99 % of its pixels is in focus and written as it is. "
                           "Default 1.0 for estimated maps, also a --map whose JSON sidecar from "
                           "`defocus estimate` names the model; 0 (off) for other maps.")] = None,
    margin: Annotated[Optional[float], typer.Option(
        "--margin", help="px subtracted from the map before deblurring (too large a sigma rings, "
                         "too small only sharpens less). Default for estimated maps, also a --map whose JSON "
                         "sidecar from `defocus estimate` names the model: the estimator's margin, chosen "
                         "on real photos (0.25 for fused and edge, 0.625 for dmenet-lite); 0 for other "
                         "maps.")] = None,
    channels: Annotated[str, typer.Option(
        "--channels", help="luma: deconvolve brightness only (default; 3x faster, as good on "
                           "JPEG photos); rgb: each colour channel.")] = "luma",
    method: Annotated[str, typer.Option(
        "--method", help="solver: layered hyper-Laplacian deconvolution (default); network: the "
                         "map-conditioned deblurring network (SFT, `defocus train sft`), on the "
                         "photo and the same map less the same margin.")] = "solver",
    model_deblur: Annotated[str, typer.Option(
        "--model-deblur", help="With --method network: registry name or .pt file of the "
                               "deblurring network.")] = "sft-deblur",
    ensemble: Annotated[int, typer.Option(
        "--ensemble", help="With --method network: average the network over 1, 2, 4 or 8 flips "
                           "and quarter turns of the photo (self-ensemble; N times the time).")] = 1,
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
    2009) where it is used, and the levels are blended per pixel. --method network instead runs
    a map-conditioned deblurring network (spatial feature transform, Ye et al.). Writes
    NAME.deblurred.EXT in the input's format and bit depth, and NAME.deblurred.json (method,
    noise, weights, margin, or the network's name and sha256).
    """
    try:
        from defocus_cli.ops.deconv import DeconvConfig
        from defocus_cli.pipelines.deblur import DeblurConfig

        try:
            deconv = DeconvConfig(**{k: v for k, v in (("alpha", alpha), ("lam", lam)) if v is not None})
            # --lam given: that weight everywhere (checked above); not given: from the noise
            config = DeblurConfig(deconv=deconv, layers=layers, channels=channels,
                                  **({} if sharp is None else {"sharp_sigma": sharp}),
                                  map_margin=0.0 if margin is None else margin)
        except ValueError as e:
            # "DeconvConfig: lam must be > 0" -> "--lam must be > 0"
            raise InputError("--" + str(e).split(": ", 1)[-1].replace("sharp_sigma", "sharp")
                             .replace("map_margin", "margin")) from None
        if in_focus is not None and in_focus < 0:
            raise InputError(f"--in-focus must be >= 0, got {in_focus:g}")
        if in_focus is not None and method != "network":
            raise InputError("--in-focus is the deblurring network's rule: use it with --method network")
        if threads < 0:
            raise InputError(f"--threads must be >= 0, got {threads}")
        if method not in ("solver", "network"):
            raise InputError(f"--method must be solver or network, got {method!r}")
        from defocus_cli.maps import check_map_source

        paths = expand_inputs(photos, recursive)
        check_map_source(map_opt, paths)
        prepare_output_dir(output)
        estimator = prepare_estimator(model, weights, device, precision, needed=map_opt is None)
        if map_opt is None:
            fft_device = estimator.get().device
        else:
            from defocus_cli.device import resolve_device

            fft_device = resolve_device(device)
        if threads:
            import torch

            torch.set_num_threads(threads)
        network = None
        if method == "network":
            from defocus_cli.pipelines.deblur_net import load_deblur_network

            network = load_deblur_network(model_deblur, device, precision, ensemble)
        elif ensemble != 1:
            raise InputError("--ensemble averages the deblurring network: use it with --method network")
    except DefocusError as e:
        raise fail(e)
    from defocus_cli.photos import DEBLUR_SIDECAR, deblur_photo, image_suffix, output_path

    def process(photo: Path) -> dict:
        r = deblur_photo(photo, config, output, map_opt, estimator, working_size, margin, fft_device,
                         lam=lam, method=method, network=network, sharp=sharp, in_focus=in_focus)
        if r["method"] == "network":
            return {"size": f"{r['width']}x{r['height']}", "map": map_label(r["map"]),
                    "max σ px": f"{r['max_sigma']:.2f}", "margin": f"{r['margin']:g}",
                    "method": "network (in focus: kept)" if r["in_focus"] else "network"}
        return {"size": f"{r['width']}x{r['height']}", "map": map_label(r["map"]),
                "max σ px": f"{r['max_sigma']:.2f}", "deblurred": f"{100 * r['deblurred_fraction']:.0f}%",
                # the solver's weight: given, or from the noise (in 8-bit steps; J: JPEG-capped)
                "λ": f"{r['lam']:g}" if r["lam"] is not None else
                     f"n{255 * r['noise']:.1f}" + ("J" if r["jpeg"] else "")}

    code = run_batch(paths, process, lambda p: [output_path(p, output, s)
                                                for s in (image_suffix(p, "deblurred"), DEBLUR_SIDECAR)],
                     overwrite, title="defocus deblur")
    raise typer.Exit(code)
