"""Starting the processes of a training job, with torch.distributed's launcher conventions.

Every process of a multi-process job finds its place in the environment variables ``torchrun``
sets: RANK (0 .. WORLD_SIZE-1, over all machines), WORLD_SIZE, LOCAL_RANK (its index on this
machine, which picks its GPU) and MASTER_ADDR / MASTER_PORT (where rank 0 meets the others).
It joins the process group through them (``env://``), with NCCL on CUDA and gloo on the CPU, and
runs ``loop.train``. So a job on several machines is::

    torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m defocus_cli train --data DATASET -o RUN_DIR ...

(or ``torchrun --no-python ... defocus train ...``). The data must be at the same path on every
machine. Rank 0 writes the run folder; ``--resume`` reads the checkpoint on every rank, so a run
folder to resume must be visible to all machines.

Without those variables, ``launch`` is a convenience for one machine: ``gpus=N`` (``--gpus N``)
spawns N processes, one per GPU, and ``cpu_procs=N`` with ``gpus=0`` (``--cpu-procs N``) N gloo
processes on the CPU; it sets the same variables for each and the same code path runs in them.
One process (the default) runs here, with no process group.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist

from defocus_cli.device import resolve_device
from defocus_cli.errors import DefocusError, DeviceError, InputError, ProcessingError, WeightsError
from defocus_cli.pipelines.train.checkpoint import load_checkpoint, write_text
from defocus_cli.pipelines.train.config import Dist, TrainConfig, TrainEvent, TrainResult
from defocus_cli.pipelines.train.loop import train

#: the variables torchrun sets for each process; a multi-process job needs all of them
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: where a spawned process that fails leaves its error for launch() to re-raise
ERROR_FILE = "error.json"


def launch(config: TrainConfig, run_dir: str | Path, *, gpus: int = 0, cpu_procs: int = 1,
           threads: int | None = None, resume: bool = False, provenance: dict | None = None,
           on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Run training: as one rank of a torchrun job when RANK and WORLD_SIZE are set, else in
    ``gpus`` CUDA processes or ``cpu_procs`` CPU processes spawned here (1 = this process).

    Inside a torchrun job ``gpus`` only chooses CUDA (> 0, device LOCAL_RANK) or the CPU (0).
    ``threads``: CPU threads per process (default: cores / processes here, torch's default
    under torchrun). ``on_event`` must be picklable when processes are spawned.
    """
    run_dir = Path(run_dir)
    if gpus < 0 or cpu_procs < 1:
        raise InputError(f"--gpus must be >= 0 and --cpu-procs >= 1 (got {gpus}, {cpu_procs})")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    place = dist_from_env(os.environ)
    if place is not None:
        return _run_rank(config, run_dir, place, gpus, threads, resume, provenance, on_event)
    nprocs = gpus if gpus > 0 else cpu_procs
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    if nprocs == 1:
        return _run_rank(config, run_dir, Dist(), gpus, threads, resume, provenance, on_event)
    return _spawn(nprocs, config, run_dir, gpus, threads, resume, provenance, on_event)


def dist_from_env(env: Mapping[str, str]) -> Dist | None:
    """This process's place in a torchrun-style job, from its environment; None outside one."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise InputError(f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r} and "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r} must be integers") from None
    if not 0 <= rank < world or local_rank < 0:
        raise InputError(f"RANK={rank} must be in 0..WORLD_SIZE-1={world - 1} and LOCAL_RANK={local_rank} >= 0")
    missing = [v for v in ENV_VARS if v not in env]
    if world > 1 and missing:
        raise InputError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start the job "
                         f"with torchrun, or set all of {', '.join(ENV_VARS)}")
    return Dist(rank, world, local_rank)


def _device_for(gpus: int, local_rank: int) -> torch.device:
    """CUDA device LOCAL_RANK of this machine (one process per GPU), or the CPU when gpus == 0."""
    if gpus == 0:
        return resolve_device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--gpus asks for CUDA but no CUDA device is available; use --gpus 0 for CPU")
    if local_rank >= torch.cuda.device_count():
        raise DeviceError(f"process {local_rank} of this machine needs CUDA device {local_rank}, but only "
                          f"{torch.cuda.device_count()} are visible; start at most that many per machine")
    device = resolve_device(f"cuda:{local_rank}")
    torch.cuda.set_device(device)
    return device


def _run_rank(config: TrainConfig, run_dir: Path, place: Dist, gpus: int, threads: int | None,
              resume: bool, provenance: dict | None, on_event) -> TrainResult:
    """One process of the job: its device, its process group (``env://``), then the loop."""
    device = _device_for(gpus, place.local_rank)
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    if place.active:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        result = train(config, run_dir, device=device, dist_ctx=place, resume=resume,
                       provenance=provenance, on_event=on_event)
        if place.active:
            # every rank done before any tears the group down: a gloo peer that closes its
            # connections while another still finishes a collective aborts that process
            # ("terminate called without an active exception", seen once in CI)
            dist.barrier()
        return result
    finally:
        if place.active and dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(nprocs: int, config: TrainConfig, run_dir: Path, gpus: int, threads: int, resume: bool,
           provenance: dict | None, on_event) -> TrainResult:
    """Start ``nprocs`` local ranks, wait for them, and re-raise a rank's error as its own class."""
    import torch.multiprocessing as mp

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    port = _free_port()
    try:
        mp.spawn(_spawned_rank, args=(nprocs, port, config, str(run_dir), gpus, threads, resume,
                                      provenance, on_event), nprocs=nprocs, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        err_path = run_dir / ERROR_FILE
        if err_path.is_file():
            err = json.loads(err_path.read_text())
            cls = {c.__name__: c for c in (InputError, WeightsError, DeviceError, ProcessingError)}
            raise cls.get(err["type"], ProcessingError)(err["message"]) from exc
        raise ProcessingError(f"a training process failed: {str(exc).strip().splitlines()[-1]}") from exc
    ckpt = load_checkpoint(run_dir)
    return TrainResult(str(run_dir), int(ckpt["step"]), json.loads(ckpt["val"]),
                       tuple(json.loads(ckpt["info"])["notes"]))


def _spawned_rank(local_rank: int, world: int, port: int, config: TrainConfig, run_dir: str, gpus: int,
                  threads: int, resume: bool, provenance: dict | None, on_event) -> None:
    """Entry point of a process ``launch`` spawned: set what torchrun would set, then run as a
    torchrun rank does."""
    os.environ.update({"RANK": str(local_rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        _run_rank(config, Path(run_dir), dist_from_env(os.environ), gpus, threads, resume, provenance, on_event)
    except DefocusError as exc:
        # the parent re-raises this as the same error class with a clean message
        err_path = Path(run_dir) / ERROR_FILE
        if local_rank == 0 or not err_path.exists():
            write_text(err_path, json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise
