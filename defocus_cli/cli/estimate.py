"""`defocus estimate`: per-pixel defocus maps of photos.

A plain run maps photo after photo through the shared batch runner (``run_batch``). With
``--table``, ``--maps`` other than all, or ``--engine ray`` it is a collection run
(``defocus_cli.collections``): one table row per photo, resumable, on this machine or on Ray.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from defocus_cli.cli.common import (DeviceOpt, ModelOpt, OutputOpt, OverwriteOpt, PhotosArg, PrecisionOpt,
                                    RecursiveOpt, WeightsOpt, WorkingSizeOpt, console, expand_inputs,
                                    fail, prepare_estimator, prepare_output_dir, run_batch)
from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL

#: failures printed at the end of a collection run (all of them are in the table)
MAX_FAILURES_SHOWN = 20


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
    engine: Annotated[str, typer.Option(
        "--engine", help="local (this process) or ray (Ray Data: decoding tasks and estimator "
                         "actors; needs pip install 'defocus[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(
        "--address", help="With --engine ray: a running Ray cluster (HOST:PORT). Default: start "
                          "Ray on this machine for the job.")] = None,
    actors: Annotated[int, typer.Option(
        "--actors", help="With --engine ray: estimator actors (each loads the network once).")] = 2,
    gpus_per_actor: Annotated[float, typer.Option(
        "--gpus-per-actor", help="With --engine ray: GPUs per actor; 0.25 puts four actors on a GPU.")] = 0.0,
    cpus_per_actor: Annotated[float, typer.Option(
        "--cpus-per-actor", help="With --engine ray: CPUs (and torch threads) per actor; 0 = 1 with "
                                 "GPUs, else the cluster's CPUs shared by the actors.")] = 0.0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="With --engine ray: photos per actor call and per decoding task.")] = 4,
    table: Annotated[Optional[Path], typer.Option(
        "--table", help="A Parquet table, one row per photo (size, model, sigma percentiles, "
                        "blurred and in-focus fractions, status, error, timings). A rerun skips "
                        "the photos it holds as done.")] = None,
    maps: Annotated[str, typer.Option(
        "--maps", help="Map files per photo: all (the four files), npy or png16 (that map + "
                       "the JSON sidecar), none (only the --table row).")] = "all",
    blur_threshold: Annotated[float, typer.Option(
        "--blur-threshold", help="Sigma (px) above which a pixel counts as blurred in the "
                                 "table's blur_fraction.")] = 2.0,
    in_focus_threshold: Annotated[float, typer.Option(
        "--in-focus-threshold", help="Sigma (px) at or below which a pixel counts as in focus in "
                                     "the table's in_focus_fraction.")] = 1.0,
) -> None:
    """Estimate per-pixel defocus maps: Gaussian blur sigma in pixels of each photo's full resolution.

    Writes NAME.defocus.npy (float32 sigma, px), NAME.defocus.png (16-bit, sigma x 1000),
    NAME.defocus.preview.png (colour, for viewing) and NAME.defocus.json (units, scale, model).
    Photos: files, folders, globs, and lists of paths (.txt, one per line; .parquet, column path).
    """
    try:
        paths = _expand(photos, recursive)
        prepare_output_dir(output)
        if engine not in ("local", "ray"):
            raise InputError(f"unknown --engine {engine!r}: use local or ray")
        if engine == "ray" or table is not None or maps != "all":
            code = _collection(paths, output, overwrite, model, weights, device, precision,
                               working_size, not no_refine, preview_max, engine, address, actors,
                               gpus_per_actor, cpus_per_actor, batch_size, table, maps,
                               blur_threshold, in_focus_threshold)
            raise typer.Exit(code)
    except DefocusError as e:
        raise fail(e)
    from defocus_cli.photos import ESTIMATE_SUFFIXES, Prefetcher, estimate_photo, output_path

    def outputs(photo: Path) -> list[Path]:
        return [output_path(photo, output, s) for s in ESTIMATE_SUFFIXES]

    def pending(photo: Path) -> bool:
        try:
            return overwrite or not all(o.exists() for o in outputs(photo))
        except DefocusError:
            return False  # run_batch reports it

    # photos whose outputs exist are skipped by run_batch: never read them ahead
    with Prefetcher([p for p in paths if pending(p)]) as reader:
        try:
            estimator = prepare_estimator(model, weights, device, precision, needed=True)
        except DefocusError as e:
            raise fail(e)

        def process(photo: Path) -> dict:
            r = estimate_photo(photo, estimator, output, working_size, not no_refine, preview_max,
                               image=reader.get(photo))
            return {"size": f"{r['width']}x{r['height']}", "work": "x".join(map(str, r["working_size"])),
                    "mean σ px": f"{r['stats_px']['mean']:.2f}", "max σ px": f"{r['stats_px']['max']:.2f}"}

        code = run_batch(paths, process, outputs, overwrite, title="defocus estimate")
    raise typer.Exit(code)


def _expand(photos: list[str], recursive: bool) -> list[Path]:
    """expand_inputs, with lists of paths (.txt, .parquet) replaced by the paths they hold."""
    from defocus_cli.collections import is_path_list, read_path_list

    items: list[str] = []
    for item in photos:
        if is_path_list(item):
            items += [str(p) for p in read_path_list(Path(item))]
        else:
            items.append(item)
    return expand_inputs(items, recursive)


def _collection(paths, output, overwrite, model, weights, device, precision, working_size, refine,
                preview_max, engine, address, actors, gpus_per_actor, cpus_per_actor, batch_size,
                table_path, maps, blur_threshold, in_focus_threshold) -> int:
    """A collection run: plan (table, existing outputs), run an engine, one row per photo."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from defocus_cli import collections as col

    config = col.CollectionConfig(output=output, maps=maps, working_size=working_size, refine=refine,
                                  preview_max=preview_max, blur_threshold=blur_threshold,
                                  in_focus_threshold=in_focus_threshold)
    results = col.ResultTable(table_path) if table_path is not None else None
    if engine == "ray":
        col.require("ray", "--engine ray")  # before loading anything: the one thing to install
        ray_config = col.RayConfig(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                                   cpus_per_actor=cpus_per_actor or None, batch_size=batch_size)
        # the driver checks the weights once, on its CPU; the actors load them where they run
        describe = prepare_estimator(model, weights, "cpu", "fp32", needed=True).get().describe()
        estimator = None
    else:
        estimator = prepare_estimator(model, weights, device, precision, needed=True).get()
        describe = estimator.describe()
    done = results.load() if results is not None else {}
    jobs, rows, resumed = col.plan_collection(paths, config, done, describe.get("sha256"), overwrite)
    for row in rows:  # rows decided before any work: failed (name clashes) or skipped (files exist)
        row["engine"] = engine
        if row["model_sha256"] is None:
            row.update(model_name=describe.get("name"), model_sha256=describe.get("sha256"))
    if engine == "ray":
        spec = col.ModelSpec(model, str(weights.absolute()) if weights else None, device, precision)
        stream = col.run_ray(jobs, spec, config, ray_config, on_start=_print_ray_plan)
    else:
        stream = col.run_local(jobs, estimator, config)

    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures: list[dict] = []
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(f"defocus estimate ({engine})", total=len(jobs))
            for row in rows:
                _record(row, results, counts, failures)
            for row in stream:
                _record(row, results, counts, failures)
                progress.advance(task)
    finally:
        n_rows = results.close() if results is not None else 0
    seconds = time.perf_counter() - t0
    rate = f", {counts['done'] / seconds:.2f} photos/s" if counts["done"] and seconds > 0 else ""
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
                  + (f", {resumed} already done in the table" if resumed else "") + rate, highlight=False)
    if counts["skipped"]:
        console.print(f"{counts['skipped']} skipped: outputs exist (use --overwrite to redo)", highlight=False)
    if results is not None:
        console.print(f"table: {escape(str(table_path))} ({n_rows} photos)", highlight=False)
    for row in failures[:MAX_FAILURES_SHOWN]:
        console.print(f"[red]error:[/red] {escape(row['error'])}", highlight=False, soft_wrap=True)
    if len(failures) > MAX_FAILURES_SHOWN:
        console.print(f"... and {len(failures) - MAX_FAILURES_SHOWN} more (status failed in the table)",
                      highlight=False)
    if failures:
        console.print(f"[red]{len(failures)} of {sum(counts.values())} failed[/red]", highlight=False)
        return max(int(r.get(col.EXIT_CODE) or 1) for r in failures)
    return 0


def _record(row: dict, results, counts: dict, failures: list) -> None:
    counts[row["status"]] += 1
    if row["status"] == "failed":
        failures.append(row)
    if results is not None:
        results.add(row)


def _print_ray_plan(plan: dict) -> None:
    console.print(f"ray: {plan['actors']} actors x {plan['cpus_per_actor']:g} CPU "
                  f"({plan['threads_per_actor']} threads), {plan['gpus_per_actor']:g} GPU; decoding "
                  f"tasks {plan['decode_cpus']:g} CPU; cluster {plan['cluster_cpus']:g} CPUs, "
                  f"{plan['cluster_gpus']:g} GPUs", highlight=False)
