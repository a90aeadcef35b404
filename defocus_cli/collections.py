"""Large collections of photos: one table row per photo, a local or a Ray engine, resumable.

A collection run maps every photo like ``defocus estimate`` does (the same files, names, units
and sidecars: ``photos.write_estimate``) and describes each photo by one row of plain values
(``TABLE_COLUMNS``): its size, the model, percentiles of its map, the fractions of it that are
blurred and in focus, its status and error, and where its time went. Rows go to a Parquet table
(``ResultTable``) that a rerun reads to skip what is done, so a stopped job resumes.

    from defocus_cli.collections import CollectionConfig, plan_collection, run_local

    config = CollectionConfig(output=Path("maps"), maps="npy")
    jobs, rows = plan_collection(paths, config)
    for row in run_local(jobs, load_estimator(), config):
        ...

Two engines yield the same rows and write the same files:
- ``run_local``: one process, photo after photo (torch uses the machine's cores for the network);
- ``run_ray``: Ray Data. Photos are decoded in CPU tasks (``Dataset.map``) and mapped in actors
  that load the network once (``Dataset.map_batches`` with a callable class, a fixed pool of
  ``actors``, ``gpus_per_actor`` each). Killed workers are restarted and their work retried by
  Ray; every write is atomic and idempotent, and the table keeps one row per photo.

pyarrow (the table) and ray (the Ray engine) are optional: ``pip install 'defocus[ray]'``. They
are imported only by the code that needs them, through ``require``, which says what to install.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defocus_cli.errors import DefocusError, InputError, ProcessingError

if TYPE_CHECKING:
    from defocus_cli.estimator import Estimator
    from defocus_cli.pipelines.estimate import EstimateResult

#: what `pip install` line brings the optional modules
EXTRA_HINT = "pip install 'defocus[ray]'"

#: --maps: which map files each photo gets (besides its JSON sidecar, always written with a map)
MAPS_CHOICES = ("all", "npy", "png16", "none")
_MAP_SUFFIXES = {
    "all": ("defocus.npy", "defocus.png", "defocus.preview.png", "defocus.json"),
    "npy": ("defocus.npy", "defocus.json"),
    "png16": ("defocus.png", "defocus.json"),
    "none": (),
}

#: px of the photo. A pixel whose sigma is above this is counted as visibly blurred: a Gaussian of
#: sigma 2 px spreads a point over a circle of confusion c = 4 sigma = 8 px, plainly visible at
#: full size; and an estimated map's lower bound there, sigma - 0.625 px (the deblur margin,
#: pipelines.deblur.ESTIMATED_MAP_MARGIN, chosen on real photos), is still above 1 px, so the
#: network's bias on real photos (+0.56 px, weights/README.md) does not make sharp pixels count.
DEFAULT_BLUR_THRESHOLD = 2.0
#: px of the photo. A pixel whose sigma is at or below this is counted as in focus: a Gaussian of
#: sigma <= 0.5 px is invisible (pipelines.deblur.DeblurConfig.sharp_sigma), and estimated maps
#: read about 0.5-0.6 px high on sharp regions (the same bias and margin), so 0.5 + 0.5 = 1 px.
#: Pixels between the two thresholds are neither: the network cannot tell them apart reliably.
DEFAULT_IN_FOCUS_THRESHOLD = 1.0

#: the table: one row per photo. Timings in seconds; sigma in px of the photo (full resolution).
TABLE_COLUMNS: dict[str, str] = {
    "path": "string",  # absolute path of the photo (the table's key)
    "status": "string",  # done | failed | skipped
    "error": "string",  # why it failed or was skipped; null when done
    "width": "int64",
    "height": "int64",
    "model_name": "string",
    "model_sha256": "string",
    "sigma_p5": "float64",
    "sigma_p50": "float64",
    "sigma_p95": "float64",
    "sigma_p99": "float64",
    "blur_fraction": "float64",  # fraction of pixels with sigma > blur_threshold_px
    "in_focus_fraction": "float64",  # fraction of pixels with sigma <= in_focus_threshold_px
    "blur_threshold_px": "float64",
    "in_focus_threshold_px": "float64",
    "maps": "string",  # which map files were written (--maps)
    "engine": "string",  # local | ray
    "t_decode_s": "float64",
    "t_resize_s": "float64",
    "t_network_s": "float64",
    "t_upsample_s": "float64",
    "t_write_s": "float64",  # the map files and the sidecar
    "finished_at": "timestamp[ms, tz=UTC]",
}
#: rows also carry the exit code a failure maps to (InputError 2, others 1); not a table column
EXIT_CODE = "exit_code"


def require(module: str, what: str) -> Any:
    """Import an optional module, or raise InputError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise InputError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                         f"{EXTRA_HINT} ({e})") from None


def map_suffixes(maps: str) -> tuple[str, ...]:
    """Name parts (NAME.<suffix>) of the files ``--maps`` writes for each photo."""
    if maps not in _MAP_SUFFIXES:
        raise InputError(f"unknown --maps {maps!r}: use one of {', '.join(MAPS_CHOICES)}")
    return _MAP_SUFFIXES[maps]


# ---------------------------------------------------------------------------------------------
# configuration and jobs


@dataclass(frozen=True)
class CollectionConfig:
    """How each photo of a collection is mapped and described.

    output: folder for the map files (None: beside each photo). maps: one of MAPS_CHOICES.
    working_size / refine / preview_max: as ``photos.estimate_photo``. blur_threshold /
    in_focus_threshold: px of the photo, for the row's two fractions (see the defaults' notes).
    """

    output: Path | None = None
    maps: str = "all"
    working_size: int | None = None
    refine: bool = True
    preview_max: float = 0.0
    blur_threshold: float = DEFAULT_BLUR_THRESHOLD
    in_focus_threshold: float = DEFAULT_IN_FOCUS_THRESHOLD

    def __post_init__(self) -> None:
        map_suffixes(self.maps)
        if not 0 <= self.in_focus_threshold <= self.blur_threshold:
            raise InputError(f"need 0 <= in-focus threshold ({self.in_focus_threshold} px) <= "
                             f"blur threshold ({self.blur_threshold} px)")


@dataclass(frozen=True)
class Job:
    """One photo to map. given: the path as the user named it (it goes into the sidecar, as
    with ``defocus estimate``); key: its absolute path (the table's key; what workers open,
    whatever their working folder)."""

    given: str
    key: str


def photo_key(photo: Path | str) -> str:
    """The table's key of a photo: its absolute, resolved path."""
    return str(Path(photo).expanduser().resolve())


def read_path_list(path: Path) -> list[Path]:
    """Photo paths from a list: ``.txt`` (one per line; blank lines and ``#`` comments
    skipped) or ``.parquet`` (column ``path``, e.g. a previous run's table). Relative paths
    are taken from the list's own folder, so a list travels with its photos."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such list file")
    if path.suffix.lower() == ".parquet":
        pq = require("pyarrow.parquet", f"reading the list {path}")
        try:
            table = pq.read_table(path, columns=["path"])
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path}: cannot read a column 'path' from this Parquet file ({e})") from None
        names = [p for p in table.column("path").to_pylist() if p]
    else:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read this list of paths ({e})") from None
        names = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not names:
        raise InputError(f"{path}: the list names no photo")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, names)]


def is_path_list(item: str) -> bool:
    """A command-line input that is a list of photos (``.txt`` or ``.parquet``), not a photo."""
    return Path(item).suffix.lower() in (".txt", ".parquet")


def plan_collection(paths: Iterable[Path], config: CollectionConfig,
                    done: dict[str, dict[str, Any]] | None = None, model_sha256: str | None = None,
                    overwrite: bool = False) -> tuple[list[Job], list[dict[str, Any]], int]:
    """Split photos into jobs to run, rows decided now (skipped or failed), and how many are
    already done in the table.

    done: the table's rows by key (``ResultTable.load``); a photo whose row is done (or skipped)
    with the same model is not run again unless ``overwrite``. A photo whose map files all exist
    is skipped unless ``overwrite``: its row (status skipped) is made from those files
    (``row_from_outputs``), so a job stopped between writing a photo's files and recording its
    row resumes without a gap in the table. Two photos whose outputs would share a name (same
    name in one output folder) fail, the second one. Duplicates (same key) are dropped.
    """
    suffixes = map_suffixes(config.maps)
    jobs: list[Job] = []
    rows: list[dict[str, Any]] = []
    resumed = 0
    seen: set[str] = set()
    claimed: dict[Path, str] = {}
    for photo in paths:
        key = photo_key(photo)
        if key in seen:
            continue
        seen.add(key)
        prior = (done or {}).get(key)
        if (not overwrite and prior is not None and prior.get("status") in ("done", "skipped")
                and (model_sha256 is None or prior.get("model_sha256") == model_sha256)):
            resumed += 1
            continue
        outs = [_output(key, config.output, s) for s in suffixes]
        clash = next((o for o in outs if claimed.get(o, key) != key), None)
        if clash is not None:
            err = InputError(f"{photo}: output {clash} would also be written for {claimed[clash]} "
                             "(same name in one --output folder)")
            rows.append(failed_row(key, err, config))
            continue
        claimed.update((o, key) for o in outs)
        if not overwrite and outs and all(o.exists() for o in outs):
            row = row_from_outputs(key, outs, config)
            if row is not None:
                rows.append(row)
                continue
        jobs.append(Job(given=str(photo), key=key))
    return jobs, rows, resumed


def row_from_outputs(key: str, outputs: list[Path], config: CollectionConfig) -> dict[str, Any] | None:
    """The row of a photo whose files exist (status skipped). outputs: its files, in the order of
    ``map_suffixes(config.maps)``. Its numbers come from the map file
    (.npy, else the 16-bit PNG: 0.001 px steps) and its sidecar, no timings. None when they
    cannot be read: the photo is then mapped again."""
    from defocus_cli.io.images import load_map

    named = dict(zip(map_suffixes(config.maps), outputs))
    sidecar_path = named["defocus.json"]
    map_path = named.get("defocus.npy", named.get("defocus.png"))
    try:
        sidecar = json.loads(sidecar_path.read_text())
        sigma = load_map(map_path)
        size = (int(sidecar["input"]["width"]), int(sidecar["input"]["height"]))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None
    row = empty_row(key, config, sidecar.get("model") or {})
    row.update(sigma_summary(sigma, config.blur_threshold, config.in_focus_threshold), status="skipped",
               error="outputs exist (use --overwrite to redo)", width=size[0], height=size[1])
    return row


def _output(key: str, output: Path | None, suffix: str) -> Path:
    from defocus_cli.photos import output_path

    folder = Path(output).absolute() if output is not None else None
    return output_path(Path(key), folder, suffix)


# ---------------------------------------------------------------------------------------------
# rows


def empty_row(key: str, config: CollectionConfig, model: dict[str, Any] | None = None,
              engine: str = "local") -> dict[str, Any]:
    """A row with every column present (null where unknown)."""
    row: dict[str, Any] = dict.fromkeys(TABLE_COLUMNS)
    row.update(path=key, blur_threshold_px=float(config.blur_threshold),
               in_focus_threshold_px=float(config.in_focus_threshold), maps=config.maps,
               engine=engine, finished_at=datetime.now(timezone.utc))
    if model:
        row.update(model_name=model.get("name"), model_sha256=model.get("sha256"))
    row[EXIT_CODE] = 0
    return row


def failed_row(key: str, error: BaseException, config: CollectionConfig,
               model: dict[str, Any] | None = None, engine: str = "local") -> dict[str, Any]:
    row = empty_row(key, config, model, engine)
    row.update(status="failed", error=error_message(key, error), **{EXIT_CODE: exit_code(error)})
    return row


def error_message(key: str, error: BaseException) -> str:
    """The one-line message of a photo's failure, naming the photo."""
    if isinstance(error, MemoryError):
        msg = "out of memory (try a smaller --working-size)"
    elif isinstance(error, OSError) and not isinstance(error, DefocusError):
        msg = f"{error.strerror or error} ({error.filename or ''})".rstrip(" ()")
    elif _is_accelerator_oom(error):
        msg = "out of accelerator memory (try a smaller --working-size or --device cpu)"
    else:
        msg = str(error)
    name = Path(key).name
    return msg if (key in msg or name in msg) else f"{key}: {msg}"


def exit_code(error: BaseException) -> int:
    return error.exit_code if isinstance(error, DefocusError) else ProcessingError.exit_code


def _is_accelerator_oom(e: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


#: the errors that fail one photo and not the job (the CLI's batch runner's set): a RuntimeError
#: only when it is torch's out-of-memory error (``_check_photo_error``)
_PHOTO_ERRORS = (DefocusError, OSError, MemoryError, RuntimeError)


def _check_photo_error(e: BaseException) -> None:
    """Re-raise a RuntimeError that is not running out of memory: a bug, not a photo's fault."""
    if isinstance(e, RuntimeError) and not _is_accelerator_oom(e):
        raise e


def sigma_summary(sigma: np.ndarray, blur_threshold: float, in_focus_threshold: float) -> dict[str, float]:
    """The row's description of a map: percentiles (px) and the blurred / in-focus fractions.

    Percentiles come from the same subsample as the sidecar's statistics
    (``io.images.subsample``: every pixel up to ~1 MP), so p50 and p99 equal the sidecar's median
    and p99; the fractions count every pixel.
    """
    from defocus_cli.io.images import subsample

    p5, p50, p95, p99 = np.percentile(subsample(sigma), [5, 50, 95, 99])
    n = max(1, sigma.size)
    return {"sigma_p5": float(p5), "sigma_p50": float(p50), "sigma_p95": float(p95),
            "sigma_p99": float(p99),
            "blur_fraction": np.count_nonzero(sigma > blur_threshold) / n,
            "in_focus_fraction": np.count_nonzero(sigma <= in_focus_threshold) / n}


@dataclass
class Decoded:
    """A decoded photo and what its sidecar says about the input."""

    pixels: np.ndarray  # (H, W, 3) float32 RGB in [0, 1]
    info: dict[str, Any]  # the sidecar's "input": path (as given), width, height, bit depth, ...
    seconds: float


def decode(job: Job) -> Decoded:
    """Read a job's photo (``io.images.read_image``); raises InputError for a bad file."""
    from defocus_cli.io.images import read_image

    t0 = time.perf_counter()
    image = read_image(job.key)
    W, H = image.size
    info = {"path": job.given, "width": W, "height": H, "bit_depth": image.bit_depth,
            "format": image.format, "notes": image.notes}
    return Decoded(image.pixels, info, time.perf_counter() - t0)


def estimate_row(job: Job, decoded: Decoded, estimator: "Estimator", config: CollectionConfig,
                 engine: str = "local") -> dict[str, Any]:
    """Map one decoded photo, write its files (``config.maps``) and return its row.

    A photo's own failure (bad data, out of memory, a write error) is a failed row; a bug
    still raises.
    """
    model = estimator.describe()
    try:
        result = estimator.estimate(decoded.pixels, config.working_size, config.refine)
        t0 = time.perf_counter()
        write_maps(Path(job.key), config, result, model, decoded.info)
        t_write = time.perf_counter() - t0
        stats = sigma_summary(result.sigma, config.blur_threshold, config.in_focus_threshold)
    except _PHOTO_ERRORS as e:
        _check_photo_error(e)
        row = failed_row(job.key, e, config, model, engine)
        row.update(width=decoded.info["width"], height=decoded.info["height"], t_decode_s=decoded.seconds)
        return row
    row = empty_row(job.key, config, model, engine)
    row.update(stats, status="done", width=decoded.info["width"], height=decoded.info["height"],
               t_decode_s=decoded.seconds, t_resize_s=result.timings.get("resize"),
               t_network_s=result.timings.get("network"), t_upsample_s=result.timings.get("upsample"),
               t_write_s=t_write)
    return row


def write_maps(photo: Path, config: CollectionConfig, result: "EstimateResult", model: dict[str, Any],
               info: dict[str, Any]) -> None:
    """Write the files ``config.maps`` asks for, with ``photos.write_estimate``'s names, units
    and sidecar (written last: it marks a complete photo). Only the chosen map is encoded."""
    from defocus_cli.photos import write_estimate

    if config.maps == "none":
        return
    output = Path(config.output).absolute() if config.output is not None else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)  # as photos.estimate_photo does
    files = tuple(s for s in map_suffixes(config.maps) if s != "defocus.json")
    write_estimate(photo, output, result, model, info, config.refine, config.preview_max, files=files)


# ---------------------------------------------------------------------------------------------
# the local engine


def run_local(jobs: Iterable[Job], estimator: "Estimator", config: CollectionConfig) -> Iterator[dict[str, Any]]:
    """Map the jobs one after the other in this process; yields one row per job, in order."""
    for job in jobs:
        try:
            decoded = decode(job)
        except _PHOTO_ERRORS as e:
            _check_photo_error(e)
            yield failed_row(job.key, e, config, estimator.describe())
            continue
        yield estimate_row(job, decoded, estimator, config)


# ---------------------------------------------------------------------------------------------
# the Ray engine


@dataclass(frozen=True)
class RayConfig:
    """Where and how the Ray engine runs.

    address: a running cluster (``ray start --head`` prints it); None starts Ray on this machine
    for the job. actors: estimator actors, each loading the network once. gpus_per_actor:
    fractions share a GPU (0.25: four actors per GPU). cpus_per_actor: CPUs each actor reserves
    and the threads torch uses in it; None = 1 with GPUs, else the cluster's CPUs shared by the
    actors. decode_cpus: CPUs each decoding task reserves; None = 1 with GPUs, else 0 (see
    ``_ray_resources``). batch_size: photos per actor call (and per decoding task).
    """

    address: str | None = None
    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    decode_cpus: float | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise InputError(f"--actors must be >= 1, got {self.actors}")
        if self.gpus_per_actor < 0 or (self.cpus_per_actor is not None and self.cpus_per_actor <= 0):
            raise InputError("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelSpec:
    """What each actor loads: ``estimator.load_estimator``'s arguments (files must be readable
    at the same path on every node)."""

    model: str
    weights: str | None
    device: str
    precision: str


def _decode_task(item: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map: one photo's path -> its pixels and sidecar input info (or its error)."""
    job = Job(given=item["given"], key=item["key"])
    try:
        decoded = decode(job)
    except _PHOTO_ERRORS as e:
        _check_photo_error(e)
        return {**item, "pixels": np.zeros((0, 0, 3), np.float32), "info": "", "t_decode": 0.0,
                "error": error_message(job.key, e), EXIT_CODE: exit_code(e)}
    return {**item, "pixels": decoded.pixels, "info": json.dumps(decoded.info),
            "t_decode": decoded.seconds, "error": "", EXIT_CODE: 0}


class _EstimateActor:
    """Ray Data callable class: loads the network once, maps batches of decoded photos, writes
    their files and returns their rows (a pyarrow table)."""

    def __init__(self, spec: dict[str, Any], config: dict[str, Any], threads: int) -> None:
        import torch

        from defocus_cli.estimator import load_estimator

        torch.set_num_threads(max(1, threads))
        self.estimator = load_estimator(spec["model"], spec["weights"], spec["device"], spec["precision"])
        self.config = CollectionConfig(**config)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        rows = []
        for i in range(len(batch["key"])):
            job = Job(given=str(batch["given"][i]), key=str(batch["key"][i]))
            if batch["error"][i]:
                row = empty_row(job.key, self.config, self.estimator.describe(), "ray")
                row.update(status="failed", error=str(batch["error"][i]),
                           **{EXIT_CODE: int(batch[EXIT_CODE][i])})
            else:
                # Ray hands read-only views of its shared memory; torch wants writable arrays
                pixels = np.require(batch["pixels"][i], np.float32, ["C", "W"])
                decoded = Decoded(pixels,
                                  json.loads(str(batch["info"][i])), float(batch["t_decode"][i]))
                row = estimate_row(job, decoded, self.estimator, self.config, "ray")
            rows.append(row)
        return rows_to_arrow(rows)


def run_ray(jobs: list[Job], spec: ModelSpec, config: CollectionConfig, ray_config: RayConfig,
            on_start: Callable[[dict[str, Any]], None] | None = None) -> Iterator[dict[str, Any]]:
    """Map the jobs on Ray; yields one row per job as results arrive (in no set order).

    Connects to ``ray_config.address`` or starts a local Ray (shut down at the end; a Ray the
    caller initialised is left running). Raises InputError when ray is not installed.
    on_start: called with a dict of the resources chosen, once Ray is up.
    """
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    if not jobs:
        return
    started = not ray.is_initialized()
    if started:
        _init_ray(ray, ray_config.address)
    try:
        plan = _ray_resources(ray, ray_config)
        if on_start is not None:
            on_start(plan)
        ds = _ray_dataset(ray, jobs, spec, config, ray_config, plan)
        seen: set[str] = set()
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in table.to_pylist():
                # Ray drops the output of a task whose worker died before retrying it; should a
                # photo still come twice, its first row stands (both describe the same files)
                if row["path"] in seen:
                    continue
                seen.add(row["path"])
                yield row
    finally:
        if started:
            ray.shutdown()


def _init_ray(ray: Any, address: str | None) -> None:
    # keep Ray's own chatter (INFO logs, notices) off the command's output; errors still show
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "configure_logging": True}
    # no address: $RAY_ADDRESS (how `ray job submit` passes the cluster), else a new local Ray
    # for this job ("local": never a cluster someone else happens to run on this machine)
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise InputError(f"cannot start or join {where}: {e}") from None


def _ray_resources(ray: Any, rc: RayConfig) -> dict[str, Any]:
    """The logical resources each actor and decoding task reserves, and the actors' threads.

    CPU inference: the actors share the cluster's CPUs (they run the network), and decoding
    tasks reserve none, at most one per cluster CPU at a time: a photo's decode costs a few
    percent of its network time, and a reservation would have to fit beside the actors on
    every node (two 1-CPU nodes with one actor each have no room left for a 0.5 CPU task).
    GPU inference: one CPU per actor (it feeds the GPU, up-samples and writes) and one per
    decoding task.
    """
    resources = ray.cluster_resources()
    total_cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    if rc.gpus_per_actor > 0 and rc.gpus_per_actor * rc.actors > gpus + 1e-9:
        raise InputError(f"{rc.actors} actors x {rc.gpus_per_actor:g} GPU need "
                         f"{rc.actors * rc.gpus_per_actor:g} GPUs; the cluster has {gpus:g}")
    if rc.cpus_per_actor is not None:
        cpus = rc.cpus_per_actor
    elif rc.gpus_per_actor > 0:
        cpus = 1.0
    else:
        cpus = total_cpus / rc.actors
    if cpus * rc.actors > total_cpus + 1e-9:
        raise InputError(f"{rc.actors} actors x {cpus:g} CPU need {cpus * rc.actors:g} CPUs; the "
                         f"cluster has {total_cpus:g} (lower --actors or --cpus-per-actor)")
    if rc.decode_cpus is not None:
        decode_cpus = rc.decode_cpus
    else:
        decode_cpus = 1.0 if rc.gpus_per_actor > 0 and total_cpus - cpus * rc.actors >= 1 else 0.0
    return {"cluster_cpus": total_cpus, "cluster_gpus": gpus, "actors": rc.actors,
            "cpus_per_actor": round(cpus, 3), "threads_per_actor": max(1, math.floor(cpus + 1e-9)),
            "gpus_per_actor": rc.gpus_per_actor, "decode_cpus": decode_cpus,
            "decode_tasks": max(1, int(total_cpus)), "batch_size": rc.batch_size}


def _ray_dataset(ray: Any, jobs: list[Job], spec: ModelSpec, config: CollectionConfig, rc: RayConfig,
                 plan: dict[str, Any]) -> Any:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"given": j.given, "key": j.key} for j in jobs]
    # one block per actor batch: decoding runs in tasks of batch_size photos
    blocks = max(1, math.ceil(len(items) / rc.batch_size))
    config_dict = asdict(config)
    config_dict["output"] = str(Path(config.output).absolute()) if config.output is not None else None
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # decoding tasks are retried by Ray when their worker dies (Ray Data's default for tasks)
    ds = ds.map(_decode_task, num_cpus=plan["decode_cpus"], **_task_pool(ray, plan["decode_tasks"]))
    return ds.map_batches(
        _EstimateActor,
        fn_constructor_kwargs={"spec": asdict(spec), "config": config_dict,
                               "threads": plan["threads_per_actor"]},
        batch_size=rc.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=rc.actors),
        num_cpus=plan["cpus_per_actor"], num_gpus=rc.gpus_per_actor or None,
        **_restartable(ray.data.Dataset.map_batches))


def _task_pool(ray: Any, size: int) -> dict[str, Any]:
    """At most ``size`` decoding tasks at a time: TaskPoolStrategy(size) from Ray 2.51, where
    ``concurrency`` (Ray 2.10-2.50) is deprecated."""
    import inspect

    strategy = getattr(ray.data, "TaskPoolStrategy", None)
    if strategy is not None and "size" in inspect.signature(strategy).parameters:
        return {"compute": strategy(size=size)}
    return {"concurrency": size}


def _restartable(map_batches: Any) -> dict[str, Any]:
    """A killed actor is restarted and the batch it held retried on it (outputs are written
    atomically, so a retried photo rewrites the same files): max_restarts and max_task_retries
    -1. Ray Data's actor pools default to both; they are stated where map_batches still takes
    them as arguments (Ray < 2.64)."""
    import inspect
    import warnings

    params = inspect.signature(map_batches).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {}
    warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
    return {"max_restarts": -1, "max_task_retries": -1}


# ---------------------------------------------------------------------------------------------
# the table


def _arrow_schema() -> Any:
    pa = require("pyarrow", "the results table")
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "timestamp[ms, tz=UTC]": pa.timestamp("ms", tz="UTC")}
    return pa.schema([(name, types[t]) for name, t in TABLE_COLUMNS.items()] + [(EXIT_CODE, pa.int64())])


def rows_to_arrow(rows: list[dict[str, Any]]) -> Any:
    """Rows -> a pyarrow Table with the table's schema (plus the exit code column)."""
    pa = require("pyarrow", "the results table")
    schema = _arrow_schema()
    clean = [{k: row.get(k) for k in schema.names} for row in rows]
    return pa.Table.from_pylist(clean, schema=schema)


class ResultTable:
    """A Parquet table of rows, one per photo, written so that a stopped job loses little and a
    rerun never doubles a photo.

    Rows are appended to part files in ``PATH.parts/`` (each written atomically, every
    ``flush_rows`` rows or ``flush_seconds``); ``close`` merges the table and the parts, keeps
    the last row of each path, writes ``PATH`` atomically and deletes the parts. A job killed
    before ``close`` leaves its parts, which the next ``load`` and ``close`` take in.
    """

    def __init__(self, path: Path, flush_rows: int = 256, flush_seconds: float = 30.0) -> None:
        self.pa = require("pyarrow", f"--table {path}")
        self.pq = require("pyarrow.parquet", f"--table {path}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".parquet":
            raise InputError(f"{path}: the table must be a .parquet file")
        if not self.path.parent.is_dir():
            raise InputError(f"{path}: its folder does not exist")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._count = 0

    def _files(self) -> list[Path]:
        parts = sorted(self.parts.glob("*.parquet")) if self.parts.is_dir() else []
        return ([self.path] if self.path.exists() else []) + parts

    def load(self) -> dict[str, dict[str, Any]]:
        """Rows by path: the table's, then the parts' of an unfinished run (last row wins)."""
        rows: dict[str, dict[str, Any]] = {}
        for f in self._files():
            try:
                table = self.pq.read_table(f)
            except (OSError, ValueError) as e:
                raise InputError(f"{f}: cannot read this results table ({e}); move it away to "
                                 "start a new one") from None
            for row in table.to_pylist():
                if row.get("path"):
                    rows[row["path"]] = row
        return rows

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if (len(self._pending) >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as a new part file."""
        from defocus_cli.io.images import atomic_write

        self._last_flush = time.monotonic()
        if not self._pending:
            return
        self.parts.mkdir(exist_ok=True)
        self._count += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._count:06d}.parquet"
        with atomic_write(self.parts / name) as tmp:
            self.pq.write_table(self._table(self._pending), tmp)
        self._pending = []

    def close(self) -> int:
        """Merge everything into PATH (one row per path); returns the number of rows."""
        from defocus_cli.io.images import atomic_write

        self.flush()
        files = self._files()
        rows = self.load()
        with atomic_write(self.path) as tmp:
            self.pq.write_table(self._table(list(rows.values())), tmp)
        for f in files:
            if f != self.path:
                f.unlink(missing_ok=True)
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()
        return len(rows)

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        return rows_to_arrow(rows).drop_columns([EXIT_CODE])
