"""`defocus synth`: a SYNDOF-style training set from RGB-D folders and procedural scenes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from defocus_cli.cli.common import console, fail
from defocus_cli.errors import DefocusError, InputError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 320x320 (width x height), got {text!r}") from None
    return w, h


def _source_name(rgb: Path, depth: Path) -> str:
    """The folder pair's name: their common parent (dfd-indoor/allinfocus + dfd-indoor/depth ->
    dfd-indoor), else (one folder for both, as Middlebury's) the RGB folder's name."""
    a, b = rgb.resolve(), depth.resolve()
    if a != b and a.parent == b.parent and a.parent.name:
        return a.parent.name
    return a.name


def synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to create or complete.")],
    rgb: Annotated[Optional[list[Path]], typer.Option(
        "--rgb", help="Folder of sharp images (repeatable; pairs with the --depth at the same position).")] = None,
    depth: Annotated[Optional[list[Path]], typer.Option(
        "--depth", help="Folder of depth files matched to --rgb images by relative name.")] = None,
    procedural: Annotated[int, typer.Option(
        "--procedural", help="Number of procedural samples (random occluding shapes, exact depth).")] = 0,
    textures: Annotated[Optional[Path], typer.Option(
        "--textures", help="Folder of sharp photos texturing procedural scenes (default: built-in textures).")] = None,
    samples_per_source: Annotated[int, typer.Option(
        "--samples-per-source", "-k", help="Samples (random cameras) per RGB-D image.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same bytes.")] = 0,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Worker processes.")] = 1,
    c_max: Annotated[float, typer.Option(
        "--c-max", help="Largest circle-of-confusion diameter, px (Eq. 2); sigma_max = c_max / 4.")] = 28.0,
    size: Annotated[str, typer.Option("--size", help="Procedural scene size, WIDTHxHEIGHT.")] = "320x320",
    max_side: Annotated[int, typer.Option(
        "--max-side", help="Reduce RGB-D images whose long side exceeds this (px); 0 = keep.")] = 0,
    max_layers: Annotated[int, typer.Option("--max-layers", help="Depth layers per sample (paper: 350).")] = 350,
    mask_threshold: Annotated[float, typer.Option(
        "--mask-threshold", help="Sigma (px) from which a pixel counts as blurred in mask/.")] = 1.0,
    depth_encoding: Annotated[str, typer.Option(
        "--depth-encoding", help="auto, png-mm, synthia, syndof-cm, middlebury-disparity, sintel or npy.")] = "auto",
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of scenes for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of scenes for testing.")] = 0.1,
) -> None:
    """Synthesize a SYNDOF-style dataset (paper Sec. 3): defocused images with per-pixel sigma labels.

    Per sample: focus distance S1 ~ U[x_near, x_far], alpha ~ U[0, alpha_up] (Eq. 2), layered
    rendering back to front (<= 350 layers). Writes image/NAME.png, sigma/NAME.npy (px, NaN =
    invalid depth), mask/NAME.png (255 = blurred), manifest.jsonl and dataset.json. Re-running
    the same command completes an interrupted run (finished samples are skipped).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from defocus_cli.pipelines.synth import RGBDSource, SynthConfig, run_synth

    try:
        rgb, depth = rgb or [], depth or []
        if len(rgb) != len(depth):
            raise InputError(f"give one --depth per --rgb folder (got {len(rgb)} --rgb and {len(depth)} --depth)")
        sources = tuple(RGBDSource(r, d, _source_name(r, d)) for r, d in zip(rgb, depth))
        config = SynthConfig(
            output=output, sources=sources, procedural=procedural, textures=textures,
            samples_per_source=samples_per_source, seed=seed, workers=workers, c_max=c_max,
            max_layers=max_layers, procedural_size=_size(size), max_side=max_side,
            mask_threshold=mask_threshold, depth_encoding=depth_encoding,
            val_fraction=val_fraction, test_fraction=test_fraction,
        )
    except DefocusError as e:
        raise fail(e)

    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]defocus synth"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[name]}"), console=console,
                  transient=True) as progress:
        task = progress.add_task("synth", total=None, name="planning")

        def on_progress(name: str, status: str, finished: int, total: int) -> None:
            progress.update(task, total=total, completed=finished, name=name)

        try:
            report = run_synth(config, on_progress)
        except DefocusError as e:
            raise fail(e)
    elapsed = time.perf_counter() - t0

    table = Table(title=f"defocus synth -> {output}", title_justify="left", show_edge=False)
    table.add_column("source")
    for column in ("samples", "train", "val", "test"):
        table.add_column(column, justify="right")
    for name, c in report.counts.get("by_source", {}).items():
        table.add_row(name, str(c["samples"]), str(c["train"]), str(c["val"]), str(c["test"]))
    console.print(table)
    console.print(
        f"{report.generated} generated, {report.skipped} already there, {len(report.failures)} failed "
        f"of {report.planned} in {elapsed:.0f} s", highlight=False)
    if report.unmatched:
        console.print(f"[yellow]{len(report.unmatched)} file(s) without a partner, not used:[/] "
                      + ", ".join(report.unmatched[:5]) + (" ..." if len(report.unmatched) > 5 else ""),
                      highlight=False)
    for name, message in report.failures:
        console.print(f"[red]error:[/red] {name}: {message}", highlight=False)
    if report.failures:
        raise typer.Exit(report.exit_code)
