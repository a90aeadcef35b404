"""Plumbing shared by the per-photo commands (estimate, magnify, deblur, depth).

- expand_inputs: files, folders (optionally recursive) and globs -> photo paths
- output_path: NAME.<suffix> in --output or beside the input
- run_batch: progress bar, skip-existing, never-overwrite-input, per-file errors, summary table,
  list of failures and the exit code
- the --device/--precision/--model/--weights options and `load_estimator`, which loads the
  network once per batch, and `obtain_map`, which reads --map or estimates a map.

Only this layer prints and turns DefocusError into exit codes. torch is imported lazily.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typing_extensions import Annotated

from defocus_cli.errors import DefocusError, InputError
from defocus_cli.models import DEFAULT_MODEL

if TYPE_CHECKING:
    import numpy as np

    from defocus_cli.io.images import Image

console = Console(stderr=True)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
#: name parts of files this tool writes; folders are scanned without them, so a second run
#: over a folder does not take the first run's outputs for photos
OUTPUT_MARKERS = (".defocus.", ".magnified.", ".deblurred.", ".depth.")

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


def is_output_name(path: Path) -> bool:
    return any(marker in path.name for marker in OUTPUT_MARKERS)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_output_name(p)
                  and not p.name.startswith("."))


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders and globs -> photo paths, in order, without duplicates.

    A missing file stays in the list (it fails in the batch with its own message). A folder or
    glob that yields no photo raises InputError.
    """
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


def output_path(photo: Path, output: Path | None, suffix: str) -> Path:
    """NAME.<suffix> in ``output``, or beside the photo when ``output`` is None."""
    return (output or photo.parent) / f"{photo.stem}.{suffix}"


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
    an OS error fails that photo only; the batch goes on.
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
                err = DefocusError(f"{photo}: out of memory (try a smaller --working-size)")
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, err))
            except OSError as e:  # disk full, permission denied while writing, ...
                err = DefocusError(f"{photo}: {e.strerror or e} ({e.filename or ''})".rstrip(" ()"))
                outcomes.append(Outcome(photo, "failed", {}, time.perf_counter() - t0, err))
            progress.advance(task)
    if not quiet:
        _summary(outcomes, title)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        console.print(f"[red]error:[/red] {_message(o)}", highlight=False, soft_wrap=True)
    if failed:
        console.print(f"[red]{len(failed)} of {len(outcomes)} failed[/red]", highlight=False)
        return max(o.error.exit_code for o in failed)
    return 0


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
    console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


# ---------------------------------------------------------------------------------------------
# the network, once per batch


@dataclass
class Estimator:
    """A loaded network with where and how it runs."""

    model: Any  # BlurNet
    meta: dict[str, Any]
    device: Any  # torch.device
    dtype: Any  # torch.dtype | None

    def describe(self) -> dict[str, Any]:
        from defocus_cli.device import precision_name

        cfg = self.meta.get("config", {})
        return {"name": self.meta.get("name"), "sha256": self.meta.get("sha256"),
                "architecture": self.meta.get("architecture"), "width": cfg.get("width"),
                "sigma_max": self.meta.get("sigma_max"), "device": str(self.device),
                "precision": precision_name(self.dtype)}

    def estimate(self, rgb: "np.ndarray", working_size: int | None = None, refine: bool = True):
        """-> pipelines.estimate.EstimateResult for an (H, W, 3) float32 RGB photo."""
        from defocus_cli.pipelines.estimate import DEFAULT_WORKING_SIZE, EstimateConfig, estimate_defocus

        ws = DEFAULT_WORKING_SIZE if working_size is None else working_size
        config = EstimateConfig(working_size=ws or None, refine=refine)
        return estimate_defocus(rgb, self.model, self.meta, config, self.dtype)


def load_estimator(model: str = DEFAULT_MODEL, weights: Path | None = None, device: str = "auto",
                   precision: str = "auto") -> Estimator:
    """Choose the device and precision, load and verify the weights (DefocusError on failure)."""
    import torch

    from defocus_cli.device import resolve_device, resolve_precision
    from defocus_cli.models.b import fuse_for_inference
    from defocus_cli.models.registry import load_model

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    net, meta = load_model(weights if weights is not None else model, dev)
    # BN folded into the convolutions and NHWC layout: both measured faster for inference
    # (benchmarks/README.md); the outputs are the same to float rounding
    net = fuse_for_inference(net).to(memory_format=torch.channels_last)
    return Estimator(net, meta, dev, dtype)


class LazyEstimator:
    """Loads the network on first use, so commands given maps for every photo never load it."""

    def __init__(self, model: str, weights: Path | None, device: str, precision: str) -> None:
        self._args = (model, weights, device, precision)
        self._estimator: Estimator | None = None

    def get(self) -> Estimator:
        if self._estimator is None:
            self._estimator = load_estimator(*self._args)
        return self._estimator

    @property
    def loaded(self) -> bool:
        return self._estimator is not None


def check_map_option(map_opt: Path | None, photos: list[Path]) -> None:
    """--map is a folder of NAME.defocus.npy maps, or one map file for a single photo."""
    if map_opt is None or map_opt.is_dir():
        return
    if not map_opt.is_file():
        raise InputError(f"{map_opt}: --map not found")
    if len(photos) > 1:
        raise InputError(f"{map_opt}: one map file fits one photo; for {len(photos)} photos "
                         "give a folder of NAME.defocus.npy maps")


def obtain_map(photo: Path, image: "Image", map_opt: Path | None, estimator: LazyEstimator,
               working_size: int | None = None) -> tuple["np.ndarray", dict[str, Any]]:
    """The defocus map (H, W) float32 sigma in px of ``image``, and where it came from.

    ``map_opt``: a map file (used as is), a folder holding NAME.defocus.npy, or None (estimate).
    A map of another size with the photo's aspect ratio is resized, its sigma rescaled.
    """
    import cv2
    import numpy as np

    from defocus_cli.io.images import load_map

    if map_opt is None:
        est = estimator.get()
        result = est.estimate(image.pixels, working_size)
        return result.sigma, {"source": "estimated", "model": est.describe(),
                              "working_size": list(result.working_size)}
    path = map_opt / f"{photo.stem}.defocus.npy" if map_opt.is_dir() else map_opt
    sigma = load_map(path)
    H, W = image.pixels.shape[:2]
    if sigma.shape != (H, W):
        h, w = sigma.shape
        if abs(w / h - W / H) > 0.02:
            raise InputError(f"{path}: map is {w}x{h} but the photo {photo.name} is {W}x{H}")
        sigma = cv2.resize(sigma, (W, H), interpolation=cv2.INTER_LINEAR) * np.float32(W / w)
    if not np.all(np.isfinite(sigma)) or sigma.min() < 0:
        raise InputError(f"{path}: map must be finite and >= 0 (Gaussian sigma in px)")
    return sigma, {"source": str(path), **_estimated_by(path)}


def _estimated_by(map_path: Path) -> dict[str, Any]:
    """{"estimated_by": model name} when the map file's JSON sidecar (NAME.defocus.json, written
    by `defocus estimate`) says a network made it; {} for other maps."""
    sidecar = map_path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    model = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(model, dict):
        return {}
    return {"estimated_by": str(model.get("name") or model.get("sha256") or "a network")}
