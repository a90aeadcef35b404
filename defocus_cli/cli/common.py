"""Plumbing shared by the per-photo commands (estimate, magnify, deblur, depth).

- expand_inputs: files, folders (optionally recursive) and globs -> photo paths
- run_batch: progress bar, skip-existing, never-overwrite-input, per-file errors, summary table,
  list of failures and the exit code
- the options the per-photo commands share (--device, --precision, --model, --weights, --map)
  and `prepare_estimator`, which loads the network once per batch (when it is needed).

The work on each photo is the library's (``defocus_cli.photos``); only this layer prints and
turns DefocusError into exit codes. torch is imported lazily.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from defocus_cli.errors import DefocusError, InputError, ProcessingError

console = Console(stderr=True)


# ---------------------------------------------------------------------------------------------
# options shared by several commands

PhotosArg = Annotated[list[str], typer.Argument(help="Photos: files, folders or globs.", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Output folder (created if needed). Default: beside each photo.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Search folders recursively.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo photos whose outputs exist.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 on GPUs and AMX CPUs, fp32 elsewhere), fp32, bf16 or fp16.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name of shipped weights.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="A weights file (.pt with its .json) instead of --model.")]
WorkingSizeOpt = Annotated[int, typer.Option(
    "--working-size", help="Long side (px) at which the network sees the photo; 0 = full size. "
                           "Blur must fall within the network's range (sigma <= 7 px) there.")]
MapOpt = Annotated[Optional[Path], typer.Option(
    "--map", help="A defocus map (.npy or 16-bit .png from `defocus estimate`) for a single photo, "
                  "or a folder holding NAME.defocus.npy for each photo. Default: estimate it.")]


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    from defocus_cli.io.images import IMAGE_SUFFIXES
    from defocus_cli.photos import is_output_name

    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_output_name(p)
                  and not p.name.startswith("."))


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders and globs -> photo paths, in order, without duplicates.

    A missing file stays in the list (it fails in the batch with its own message). A folder or
    glob that yields no photo raises InputError.
    """
    from defocus_cli.photos import is_output_name

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _images_in(p, recursive)
            if not found:
                raise InputError(f"{p}: no images found in this folder"
                                 + ("" if recursive else " (use --recursive for subfolders)"))
            out += found
        elif not p.exists() and glob.has_magic(item):
            found = sorted(Path(g) for g in glob.glob(item, recursive=recursive)
                           if Path(g).is_file() and not is_output_name(Path(g)))
            if not found:
                raise InputError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(p)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def prepare_output_dir(output: Path | None) -> None:
    """Create --output if needed; refuse an unwritable one before any work starts."""
    if output is None:
        return
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: output path exists and is not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{output}: cannot create output folder ({e.strerror})") from None
    if not os.access(output, os.W_OK):
        raise InputError(f"{output}: output folder is not writable")


# ---------------------------------------------------------------------------------------------
# the batch runner


@dataclass
class Outcome:
    path: Path
    status: str  # "done" | "skipped" | "failed"
    row: dict[str, Any]
    seconds: float
    error: DefocusError | None = None


def run_batch(
    photos: list[Path],
    process: Callable[[Path], dict[str, Any]],
    outputs: Callable[[Path], list[Path]],
    overwrite: bool = False,
    title: str = "Processing",
    quiet: bool = False,
) -> int:
    """Run ``process`` on each photo; returns the exit code (0, or that of the worst failure).

    process(photo) does the work, writes the files named by outputs(photo) and returns summary
    columns. A photo whose outputs all exist is skipped unless ``overwrite``. A DefocusError or
    an OS error fails that photo only, and so does running out of memory (host or
    accelerator); the batch goes on.
    """
    outcomes: list[Outcome] = []
    claimed: dict[Path, Path] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[name]}"), console=console,
                  transient=True, disable=quiet) as progress:
        task = progress.add_task(title, total=len(photos), name="")
        for photo in photos:
            progress.update(task, name=photo.name)
            t0 = time.perf_counter()
            try:
                outs = outputs(photo)
                _check_outputs(photo, outs, claimed)
                if not overwrite and outs and all(o.exists() for o in outs):
                    outcomes.append(Outcome(photo, "skipped", {}, 0.0))
                else:
                    row = process(photo)
                    outcomes.append(Outcome(photo, "done", row, time.perf_counter() - t0))
            except DefocusError as e:
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, e))
            except MemoryError:
                err = ProcessingError(f"{photo}: out of memory (try a smaller --working-size)")
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, err))
            except RuntimeError as e:
                if not _is_out_of_memory(e):
                    raise
                err = ProcessingError(f"{photo}: out of accelerator memory (try a smaller "
                                      "--working-size or --device cpu)")
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, err))
            except OSError as e:  # disk full, permission denied while writing, ...
                err = DefocusError(f"{photo}: {e.strerror or e} ({e.filename or ''})".rstrip(" ()"))
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, err))
            progress.advance(task)
    if not quiet:
        _summary(outcomes, title)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        console.print(f"[red]error:[/red] {escape(_message(o))}", highlight=False, soft_wrap=True)
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} failed[/red]", highlight=False)
        return max(o.error.exit_code for o in failed)
    return 0


def _is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA and other accelerators), without importing torch for it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


def _message(o: Outcome) -> str:
    msg = str(o.error)
    return msg if str(o.path) in msg else f"{o.path}: {msg}"


def _check_outputs(photo: Path, outs: list[Path], claimed: dict[Path, Path]) -> None:
    src = photo.resolve() if photo.exists() else photo.absolute()
    for o in outs:
        key = o.resolve() if o.exists() else o.absolute()
        if key == src:
            raise InputError(f"{photo}: output {o} would overwrite the input")
        if key in claimed and claimed[key] != src:
            raise InputError(f"{photo}: output {o} would also be written for {claimed[key]} "
                             f"(same name in one --output folder)")
        claimed[key] = src


def _summary(outcomes: list[Outcome], title: str) -> None:
    columns: list[str] = []
    for o in outcomes:
        for key in o.row:
            if key not in columns:
                columns.append(key)
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("photo", overflow="fold")
    table.add_column("status")
    for c in columns:
        table.add_column(c, justify="right")
    table.add_column("time", justify="right")
    style = {"done": "green", "skipped": "yellow", "failed": "red"}
    for o in outcomes:
        cells = [str(o.row.get(c, "")) for c in columns]
        table.add_row(o.path.name, f"[{style[o.status]}]{o.status}[/]", *cells,
                      f"{o.seconds:.1f}s" if o.status != "skipped" else "")
    console.print(table)
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    if skipped:
        console.print(f"{skipped} skipped: outputs exist (use --overwrite to redo)", highlight=False)
    console.print(f"{done} done, {skipped} skipped, {len(outcomes) - done - skipped} failed",
                  highlight=False)


def fail(error: DefocusError) -> typer.Exit:
    """Print a one-line error and return the Exit to raise: `raise fail(e)`."""
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


def prepare_estimator(model: str, weights: Path | None, device: str, precision: str, needed: bool):
    """A LazyEstimator for the batch; loaded now when ``needed`` (a bad model or device is then
    one error before the batch, not one per photo)."""
    from defocus_cli.estimator import LazyEstimator

    estimator = LazyEstimator(model, weights, device, precision)
    if needed:
        estimator.get()
    return estimator


def map_label(origin: dict[str, Any]) -> str:
    """The summary table's word for where a map came from."""
    from defocus_cli.maps import is_estimated

    if origin.get("source") == "estimated":
        return "estimated"
    return "given (estimated)" if is_estimated(origin) else "given"
