"""A run folder: its checkpoint, its metrics log and its config.json.

RUN_DIR/checkpoint.pt   the last checkpoint (written atomically by rank 0): "format", "step",
                        the networks', optimisers' and schedulers' states ("B", "S", "D",
                        "opt_G", "opt_D", "sched_G", "sched_D"; None where a network is off),
                        "config" (TrainConfig as JSON), "info" (provenance and notes as JSON),
                        "val" (the last validation metrics as JSON) and "rng_torch"
RUN_DIR/metrics.jsonl   one JSON record per log interval ({"step", "epoch", loss means, "lr",
                        "steps_per_s", "samples_per_s"}) and per validation ({"kind": "val", ...})
RUN_DIR/config.json     the config, provenance, notes and schedule, for people to read
"""

from __future__ import annotations

import json
from pathlib import Path

from defocus_cli.errors import InputError, WeightsError
from defocus_cli.io.datasets import read_jsonl
from defocus_cli.io.images import atomic_write
from defocus_cli.io.torchfiles import load_torch_file, save_torch_file
from defocus_cli.pipelines.train.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, run_dir: Path) -> None:
    """Write ``state`` (Trainer.state_dict() plus the run's fields) as RUN_DIR/checkpoint.pt.

    Atomic: a kill mid-write leaves the previous checkpoint intact.
    """
    save_torch_file({**state, "format": CHECKPOINT_FORMAT}, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of a run folder (loaded safely: tensors and plain data only)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint in this run folder (was it started with -o {run_dir}?)")
    ckpt = load_torch_file(path, "training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a defocus training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was started with (from its checkpoint)."""
    return TrainConfig.from_dict(json.loads(load_checkpoint(run_dir)["config"]))


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint: they will be redone."""
    path = run_dir / METRICS
    if path.is_file():
        keep = [r for r in read_jsonl(path, log=True) if r.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
