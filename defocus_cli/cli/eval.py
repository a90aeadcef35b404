"""`defocus eval`: measure an estimator on a dataset folder; `defocus eval prepare-dfd`: make the
real DFD indoor evaluation set.

    defocus eval DATASET [--model NAME | --weights FILE] [--split test] [-o report.json] ...
    defocus eval prepare-dfd SRC -o DATASET

``defocus eval DATASET`` is short for ``defocus eval run DATASET``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from defocus_cli.cli.common import DeviceOpt, ModelOpt, PrecisionOpt, WeightsOpt, console, fail
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL

#: the origin of every map `defocus eval` deblurs with (maps.deblur_margin's policy applies)
ESTIMATED = {"source": "estimated"}


class _RunByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunByDefault,
    help="Measure an estimator on a dataset (sigma errors, blur-mask accuracy, deblurring). "
         "`defocus eval DATASET ...` runs `defocus eval run DATASET ...`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return "-" if v is None else str(v)


@app.command("run")
def run(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (image/ + sigma/, mask/, sharp/ ...).", metavar="DATASET",
                                            show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    split: Annotated[str, typer.Option("--split", help="Manifest split: train, val, test or all.")] = "test",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the report (per-image and mean figures) to this JSON file.")] = None,
    sigma_norm: Annotated[float, typer.Option(
        "--sigma-norm", help="px; MSE/MAE are of sigma / this (paper: 7 for SYNDOF-style data, "
                             "3.275 for RTF).")] = 7.0,
    working_size: Annotated[int, typer.Option(
        "--working-size", help="Long side (px) at which the network sees each image; 0 = the "
                               "image's own size (default: labels are in its pixels).")] = 0,
    no_refine: Annotated[bool, typer.Option(
        "--no-refine", help="Skip the edge-aware refinement (only acts with --working-size).")] = False,
    deblur: Annotated[bool, typer.Option(
        "--deblur", help="Also deblur each photo with its estimated map and measure PSNR/SSIM against "
                         "sharp/ (deblurring pairs), with the gain over the input. Deblurs as `defocus "
                         "deblur` does with an estimated map (its defaults: the estimator's margin).")] = False,
    radius_table: Annotated[Optional[Path], typer.Option(
        "--radius-table", help="CSV gaussian_sigma_px,disk_radius_px for datasets with disk-radius labels "
                               "(radius/), e.g. ../shared/data/tables/rtf_sigma_to_disk_radius.csv.")] = None,
    ssim_mode: Annotated[str, typer.Option("--ssim", help="SSIM on 'luminance' (BT.601) or mean over 'rgb'.")] = "luminance",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N samples.")] = None,
    per_image: Annotated[bool, typer.Option("--per-image/--no-per-image",
                                            help="Print a row per image.")] = True,
) -> None:
    """Evaluate a defocus estimator on a dataset folder (DMENet paper Sec. 5.3 protocol).

    Sigma labels: MSE and MAE of sigma / --sigma-norm, MAE in px, Spearman rank correlation.
    Masks (255 blurred / 0 sharp / 128 unknown): accuracy at tau = 0.3 v_max + 0.7 v_min of the
    estimated map, average precision. Deblurring pairs with --deblur: PSNR / SSIM vs sharp/.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from defocus_cli.estimator import load_estimator
    from defocus_cli.io.images import save_json
    from defocus_cli.pipelines.eval import EvalConfig, evaluate_dataset, read_sigma_radius_table

    try:
        try:
            config = EvalConfig(split=split, sigma_norm=sigma_norm, ssim_mode=ssim_mode, limit=limit)
        except ValueError as e:
            raise InputError(str(e)) from None
        if working_size < 0:
            raise InputError(f"--working-size must be >= 0, got {working_size}")
        if output is not None and output.is_dir():
            raise InputError(f"{output}: is a folder; -o takes the report's file name (e.g. report.json)")
        table = read_sigma_radius_table(radius_table) if radius_table is not None else None
        estimator = load_estimator(model, weights, device, precision)
    except DefocusError as e:
        raise fail(e)

    def estimate(rgb):
        return estimator.estimate(rgb, working_size, refine=not no_refine).sigma

    # an estimated map's origin, as `defocus deblur` records it: the estimator decides the margin
    origin = {**ESTIMATED, "model": estimator.describe()}
    deblur_fn = None
    if deblur:
        from defocus_cli.photos import deblur_pixels
        from defocus_cli.pipelines.deblur import DeblurConfig

        def deblur_fn(rgb, sigma):  # what `defocus deblur` runs on an estimated map, on its device
            return deblur_pixels(rgb, sigma, origin, DeblurConfig(), device=estimator.device)[0].image

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]defocus eval"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[name]}"), console=console,
                  transient=True) as progress:
        task = progress.add_task("eval", total=None, name="")

        def on_progress(name: str, done: int, total: int) -> None:
            progress.update(task, total=total, completed=done, name=name)

        try:
            report = evaluate_dataset(dataset, estimate, config, deblur=deblur_fn, radius_table=table,
                                      progress=on_progress)
        except DefocusError as e:
            raise fail(e)
    elapsed = time.perf_counter() - t0

    result = report.to_dict()
    result["estimator"] = estimator.describe()
    result["estimate"] = {"working_size": working_size or "native", "refine": not no_refine}
    result["deblur"] = {"enabled": deblur}
    if deblur:
        from defocus_cli.maps import deblur_margin

        result["deblur"]["map_margin_px"] = deblur_margin(origin)
        result["deblur"]["device"] = str(estimator.device)
    result["seconds"] = elapsed
    _print_report(result, per_image)
    if output is not None:
        try:
            save_json(output, result)
        except DefocusError as e:
            raise fail(e)
        console.print(f"report written to {output}", highlight=False)
    if report.failures:
        for name, message in report.failures:
            console.print(f"[red]error:[/red] {name}: {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


#: (report key, column title, digits)
_COLUMNS = (
    ("mse", "MSE/n", 4), ("mae", "MAE/n", 4), ("mae_px", "MAE px", 3), ("spearman", "Spearman", 3),
    ("accuracy", "acc", 3), ("ap", "AP", 3), ("psnr_input", "PSNR in", 2),
    ("psnr_deblurred", "PSNR out", 2), ("psnr_gain", "dPSNR", 2), ("ssim_input", "SSIM in", 3),
    ("ssim_deblurred", "SSIM out", 3), ("ssim_gain", "dSSIM", 3),
)


def _print_report(result: dict, per_image: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    images = result["images"]
    columns = [c for c in _COLUMNS if any(c[0] in r for r in images)]
    est = result["estimator"]
    title = escape(f"defocus eval: {est.get('name') or 'weights'} on {result['dataset']}, split "
                   f"{result['split']}, {len(images)} images, sigma_norm {result['config']['sigma_norm']} px")
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("image")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    if per_image:
        for r in images:
            table.add_row(escape(r["name"]), *(_fmt(r.get(k, float("nan")), d) for k, _, d in columns))
        table.add_section()
    mean = result["mean"]
    table.add_row("[bold]mean[/bold]", *(_fmt(mean.get(k, float("nan")), d) for k, _, d in columns))
    console.print(table)


@app.command("prepare-dfd")
def prepare_dfd(
    src: Annotated[Path, typer.Argument(help="The DFD indoor folder (defocused/, allinfocus/, depth/, "
                                             "scenes.csv), e.g. ../shared/data/rgbd/dfd-indoor.",
                                        metavar="SRC", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write.")],
    blur_threshold: Annotated[float, typer.Option(
        "--blur-threshold", help="Sigma (px) from which mask/ calls a pixel blurred.")] = 1.0,
    edge_band: Annotated[float, typer.Option(
        "--edge-band", help="px around depth discontinuities without labels (RGB-depth misregistration).")] = 8.0,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the scene-group split.")] = 0,
    no_register: Annotated[bool, typer.Option(
        "--no-register", help="Write the f/8 photo as shot (no alignment or gain onto the f/2.8 one).")] = False,
) -> None:
    """Make a labelled real dataset from DFD indoor: f/2.8 photos with thin-lens sigma from depth.

    Writes image/ (f/2.8), sigma/ (px; NaN = no label), mask/ (255 blurred, 0 sharp, 128 unknown),
    sharp/ (f/8, registered), manifest.jsonl (split by groups of overlapping views: 57 train /
    8 val / 16 test scenes by default) and dataset.json. Usable by `train` (--real / --real-masks)
    and by `defocus eval`.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from defocus_cli.pipelines.realdata import DfdIndoorConfig, list_scenes, prepare_dfd_indoor

    try:
        try:
            config = DfdIndoorConfig(blur_threshold_px=blur_threshold, edge_band_px=edge_band,
                                     split_seed=split_seed, register_sharp=not no_register)
        except ValueError as e:
            raise InputError(str(e)) from None
        if output.resolve() == src.resolve() or src.resolve() in output.resolve().parents:
            raise InputError(f"{output}: would write inside the source folder {src}; choose another -o")
        total = len(list_scenes(src))
    except DefocusError as e:
        raise fail(e)

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]defocus eval prepare-dfd"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[name]}"), console=console,
                  transient=True) as progress:
        task = progress.add_task("prepare", total=total, name="")
        try:
            report = prepare_dfd_indoor(src, output, config,
                                        progress=lambda name: progress.update(task, advance=1, name=name))
        except DefocusError as e:
            raise fail(e)
    table = Table(title=f"defocus eval prepare-dfd -> {output}", title_justify="left", show_edge=False)
    for column in ("split", "scenes", "labelled px", "blurred (of labelled)"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split in ("train", "val", "test"):
        rows = [e for e in report.samples if e["split"] == split]
        if rows:
            valid = sum(e["label"]["valid_fraction"] for e in rows) / len(rows)
            blurred = sum(e["label"]["blurred_fraction_of_valid"] or 0.0 for e in rows) / len(rows)
            table.add_row(split, str(len(rows)), f"{100 * valid:.1f}%", f"{100 * blurred:.1f}%")
    console.print(table)
    console.print(f"{len(report.samples)} scenes written, {len(report.failures)} failed in "
                  f"{time.perf_counter() - t0:.0f} s", highlight=False)
    for scene, message in report.failures:
        console.print(f"[red]error:[/red] {scene}: {message}", highlight=False, soft_wrap=True)
    if report.failures:
        raise typer.Exit(1)
