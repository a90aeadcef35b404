"""The run folder of the small training pipelines (`train sft`, `train edge`): one home for
its files and the rules they follow.

RUN_DIR/checkpoint.pt   written atomically; {"format", "kind", "step", "model", "optimizer",
                        "config" (JSON), "info" (JSON), "val" (JSON), ...}
RUN_DIR/metrics.jsonl   one JSON record per line, appended; a resumed run first drops the
                        records past its checkpoint (a killed run logged steps it will redo)
RUN_DIR/config.json     the config and provenance, for people to read
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defocus_cli.errors import InputError, ProcessingError, WeightsError
from defocus_cli.io.datasets import read_jsonl
from defocus_cli.io.images import atomic_write
from defocus_cli.io.torchfiles import load_torch_file, save_torch_file

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def load_checkpoint(run_dir: str | Path, kind: str, fmt: int, command: str) -> dict[str, Any]:
    """RUN_DIR/checkpoint.pt, checked to be a ``kind`` checkpoint of format ``fmt`` (``command``
    names what writes them, for the error)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint in this run folder (was it started with -o {run_dir}?)")
    ckpt = load_torch_file(path, "training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind or ckpt.get("format") != fmt:
        raise WeightsError(f"{path}: not a checkpoint of `{command}` (format {fmt})")
    return ckpt


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    save_torch_file(state, run_dir / CHECKPOINT)


def start(run_dir: Path, config: dict[str, Any], info: dict[str, Any]) -> None:
    """A new run: the folder, and config.json; a folder that holds a run already is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINT).exists():
        raise InputError(f"{run_dir}: holds a run already; --resume {run_dir} continues it")
    write_text(run_dir / "config.json", json.dumps({"config": config, **info}, indent=1))


def begin(run_dir: Path, resume: Callable[[], dict[str, Any]] | None, model, optimizer,
          config: dict[str, Any], info: dict[str, Any], provenance: dict[str, Any] | None
          ) -> tuple[int, dict[str, Any]]:
    """A new run (``resume`` None: ``start``) or a resumed one (``resume()`` loads its checkpoint:
    model and optimizer take its state, ``info`` its provenance, metrics past it are dropped)
    -> (step, val) to continue from."""
    if resume is None:
        start(run_dir, config, info)
        return 0, {}
    ckpt = resume()
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    step = int(ckpt["step"])
    info["provenance"] = {**json.loads(ckpt["info"])["provenance"], "resumed": provenance or {}}
    drop_metrics_after(run_dir, step)
    return step, json.loads(ckpt["val"])


def checkpoint_state(fmt: int, kind: str, step: int, model, optimizer, config: dict[str, Any],
                     info: dict[str, Any], val: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What ``save_checkpoint`` writes for these pipelines (see the module docstring)."""
    return {"format": fmt, "kind": kind, **extra, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "config": json.dumps(config), "info": json.dumps(info),
            "val": json.dumps(val)}


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """A killed run logged past its last checkpoint; those steps are redone."""
    path = run_dir / METRICS
    if path.is_file():
        keep = [r for r in read_jsonl(path, log=True) if r.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_steps(run_dir: Path, optimizer, *, step: int, steps: int, learning_rate: Callable[[int], float],
              train_step: Callable[[int], Any], validate: Callable[[], dict[str, Any]],
              checkpoint: Callable[[int, dict[str, Any]], None], log_every: int, val_every: int,
              ckpt_every: int, val: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None = None
              ) -> tuple[int, dict[str, Any]]:
    """The loop of a run from ``step`` to ``steps``: the learning rate of each step, one
    optimiser step (``train_step(step)`` returns its loss on the device), and at their intervals
    (and at the last step) a metrics record (the mean loss, read back from the device only
    here), a validation record, a checkpoint. -> (last step, last validation figures)."""
    import torch

    def log(record: dict[str, Any]) -> None:
        append_metrics(run_dir, record)
        if on_log is not None:
            on_log(record)

    losses: list[Any] = []
    t_log = time.perf_counter()
    while step < steps:
        lr = learning_rate(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(train_step(step))
        step += 1
        if step % log_every == 0 or step == steps:
            loss = float(torch.stack(losses).mean())
            if not math.isfinite(loss):
                raise ProcessingError(f"{run_dir}: the loss is {loss} at step {step}; lower --lr")
            now = time.perf_counter()
            log({"step": step, "loss": loss, "lr": lr, "steps_per_s": len(losses) / (now - t_log)})
            losses, t_log = [], now
        if step % val_every == 0 or step == steps:
            val = validate()
            log({"kind": "val", "step": step, **val})
            t_log = time.perf_counter()
        if step % ckpt_every == 0 or step == steps:
            checkpoint(step, val)
    return step, val
