"""The training loop of one process (one rank of the job), in the order it runs.

Batches are a pure function of (seed, step, rank) (train_data.StepBatches), so a resumed run sees
exactly the batches the uninterrupted run would have seen, with no loader state in the checkpoint.
Loss terms stay on the device between log records: the host reads them once per ``log_every``
steps (and before each checkpoint), which is also when a NaN or inf loss stops the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from defocus_cli.device import autocast, precision_name
from defocus_cli.errors import InputError, ProcessingError
from defocus_cli.models.b import BlurNet
from defocus_cli.pipelines.train.checkpoint import (
    CHECKPOINT,
    append_metrics,
    load_checkpoint,
    save_checkpoint,
    truncate_metrics,
    write_text,
)
from defocus_cli.pipelines.train.config import ARCHITECTURE_FIELDS, Dist, TrainConfig, TrainEvent, TrainResult
from defocus_cli.pipelines.train.preparation import (
    BN_RECALIBRATION_IMAGES,
    init_b,
    prepare,
    recalibrate_batchnorm,
)
from defocus_cli.pipelines.train.step import Trainer
from defocus_cli.pipelines.train_data import BatchPlan, StepBatches, SynthSet, steps_per_epoch


def train(config: TrainConfig, run_dir: str | Path, *, device: torch.device, dist_ctx: Dist | None = None,
          resume: bool = False, provenance: dict | None = None,
          on_event: Callable[[TrainEvent], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train in this process (one rank of the job: ``dist_ctx``, default a single process);
    rank 0 writes the run folder.

    ``resume`` continues RUN_DIR from its checkpoint (the architecture must match it).
    ``stop_after`` ends the loop early after that many steps of this call (tests use it to
    simulate an interruption).
    """
    run_dir = Path(run_dir)
    dist_ctx = dist_ctx or Dist()
    rank0 = dist_ctx.rank == 0
    emit = on_event if (on_event is not None and rank0) else (lambda event: None)

    # 1. the run folder: a checkpoint to continue from, or a new folder
    ckpt = _open_run(config, run_dir, resume, rank0)

    # 2. data, schedule and networks
    prep = prepare(config)
    spe = steps_per_epoch(len(prep.train), config.batch, dist_ctx.world)
    total = config.steps if config.steps is not None else config.epochs * spe
    notes = list(prep.notes)
    b = None
    if ckpt is None:
        b = init_b(config)
        if config.bn == "frozen":
            used = recalibrate_batchnorm(b, prep.train, BN_RECALIBRATION_IMAGES, torch.device("cpu"))
            notes.append(f"BatchNorm statistics re-estimated on {used} full training images, then "
                         "frozen (--bn frozen)")
    trainer = Trainer(config, prep.active, spe, device, dist_ctx, c=prep.content, b=b)

    # 3. where the run stands: fresh, or the checkpoint's step, metrics and random state
    start, val_metrics = 0, {}
    info = {"provenance": {**prep.provenance, **(provenance or {})}, "notes": notes}
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        start = int(ckpt["step"])
        val_metrics = json.loads(ckpt.get("val", "{}"))
        info = json.loads(ckpt["info"])
        torch.set_rng_state(ckpt["rng_torch"])
        if rank0:
            truncate_metrics(run_dir, start)
    if rank0:
        write_text(run_dir / "config.json", json.dumps(
            {"config": config.to_dict(), **info, "steps_per_epoch": spe, "total_steps": total,
             "world_size": dist_ctx.world}, indent=2))
    emit(TrainEvent("start", start, total, {"nets": prep.active, "steps_per_epoch": spe,
                                           "real_maps": len(prep.real_maps or ()),
                                           "world": dist_ctx.world,
                                           "precision": precision_name(trainer.dtype)}, tuple(notes)))

    # 4. the steps: update, log, validate, checkpoint
    plan = BatchPlan(config.batch, config.crop, config.seed, dist_ctx.rank, dist_ctx.world, config.sigma_max)
    loader = torch.utils.data.DataLoader(
        StepBatches(prep.train, prep.real, prep.masked, plan, prep.real_maps), batch_size=None,
        sampler=range(start, total), num_workers=config.workers,
        pin_memory=device.type == "cuda")
    meter = _LossMeter(start, dist_ctx)
    step = start
    for batch in loader:
        meter.add(trainer.step(batch, step))
        step += 1
        last = step == total
        if step % config.log_every == 0 or last:
            means, steps_per_s = meter.read(step)
            record = {"step": step, "epoch": step / spe, **means, "steps_per_s": steps_per_s,
                      "samples_per_s": steps_per_s * config.batch * dist_ctx.world}
            if rank0:
                append_metrics(run_dir, record)
            emit(TrainEvent("step", step, total, record))
        if step % (config.val_every or spe) == 0 or last:
            val_metrics = validate(trainer.b_eval, prep.val, config, device, trainer.dtype, dist_ctx)
            if trainer.ema is not None and val_metrics:  # the last weights beside their average
                raw = validate(trainer.b, prep.val, config, device, trainer.dtype, dist_ctx)
                val_metrics.update({f"raw_{k}": v for k, v in raw.items() if k != "val_images"})
            if val_metrics:
                record = {"step": step, "epoch": step / spe, "kind": "val", **val_metrics}
                if rank0:
                    append_metrics(run_dir, record)
                emit(TrainEvent("val", step, total, record))
        if step % config.ckpt_every == 0 or last:
            meter.check_finite(step)  # never checkpoint weights a diverged step wrote
            if rank0:
                _save(trainer, config, info, val_metrics, step, run_dir)
            emit(TrainEvent("checkpoint", step, total))
        if stop_after is not None and step - start >= stop_after:
            break

    # 5. the end: a checkpoint even when there was nothing to do; replicas verified
    if step == start and rank0 and not (run_dir / CHECKPOINT).exists():
        _save(trainer, config, info, val_metrics, step, run_dir)
        emit(TrainEvent("checkpoint", step, total))
    if dist_ctx.active:
        _check_replicas(trainer, dist_ctx, run_dir)
    emit(TrainEvent("end", step, total, val_metrics))
    return TrainResult(str(run_dir), step, val_metrics, tuple(info["notes"]))


def _open_run(config: TrainConfig, run_dir: Path, resume: bool, rank0: bool) -> dict | None:
    """The checkpoint to continue from (``resume``), else None after making sure RUN_DIR is new."""
    if resume:
        ckpt = load_checkpoint(run_dir)
        old = TrainConfig.from_dict(json.loads(ckpt["config"]))
        for name in ARCHITECTURE_FIELDS:
            if getattr(old, name) != getattr(config, name):
                raise InputError(f"--resume {run_dir}: {name} is {getattr(old, name)!r} in the "
                                 f"checkpoint but {getattr(config, name)!r} now; keep the checkpoint's")
        return ckpt
    if rank0:
        if (run_dir / CHECKPOINT).exists():
            raise InputError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                             "or choose another -o")
        run_dir.mkdir(parents=True, exist_ok=True)
    return None


def _save(trainer: Trainer, config: TrainConfig, info: dict, val_metrics: dict, step: int, run_dir: Path) -> None:
    state = trainer.state_dict()
    state.update({"step": step, "config": json.dumps(config.to_dict()), "info": json.dumps(info),
                  "val": json.dumps(val_metrics), "rng_torch": torch.get_rng_state()})
    save_checkpoint(state, run_dir)


class _LossMeter:
    """Sums of the loss terms since the last record, kept on the device.

    ``add`` only queues additions; ``read`` and ``check_finite`` fetch every sum in one transfer
    (the loop's only per-interval host synchronisation) and stop the run, on every rank at once,
    when a loss of any step since the last record was NaN or inf.
    """

    def __init__(self, step: int, dist_ctx: Dist) -> None:
        self.dist = dist_ctx
        self._reset(step)

    def _reset(self, step: int) -> None:
        self.first = step  # the steps counted are first + 1 .. first + n
        self.n = 0
        self.sums: dict[str, torch.Tensor | float] = {}
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor | float]) -> None:
        """Terms are 0-dim tensors (losses, summed in float64 on their device) or floats ("lr")."""
        for k, v in terms.items():
            v = v.double() if isinstance(v, torch.Tensor) else v
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def _fetch(self, step: int) -> dict[str, float]:
        keys = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        if not keys:
            return {}
        values = torch.stack([self.sums[k] for k in keys])
        bad = (~torch.isfinite(values)).any().double().reshape(1)
        if self.dist.active:  # every rank must stop together, or the others hang in all-reduce
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        *host, flag = torch.cat([values, bad]).tolist()
        fetched = dict(zip(keys, host))
        if flag:
            means = ", ".join(f"{k}={v / self.n:.4g}" for k, v in fetched.items())
            raise ProcessingError(
                f"training diverged between steps {self.first + 1} and {step}: a loss is NaN or inf "
                f"on some process (means here: {means}). Resume from the last checkpoint with a "
                "lower --lr, or check the data (a sigma map with inf, an all-black image)."
            )
        return fetched

    def check_finite(self, step: int) -> None:
        self._fetch(step)

    def read(self, step: int) -> tuple[dict[str, float], float]:
        """(mean of each term over the steps since the last read, steps per second); resets."""
        fetched = self._fetch(step)
        seconds = time.perf_counter() - self.t0
        means = {k: fetched.get(k, v) / self.n for k, v in self.sums.items()}
        rate = self.n / seconds if seconds > 0 else 0.0
        self._reset(step)
        return means, rate


@torch.no_grad()
def validate(b: BlurNet, val: SynthSet, config: TrainConfig, device: torch.device,
             dtype: torch.dtype | None, dist_ctx: Dist) -> dict:
    """Errors of B (eval mode, full images) on up to ``val_max`` images of the val split.

    Returns {"val_mse", "val_mae"} of sigma / sigma_max (the paper's units, supplement Tables 4-5),
    "val_mae_px" (sigma in px) and "val_images"; {} when there is nothing to validate.
    """
    n = min(len(val), config.val_max)
    if n == 0:
        return {}
    was_training = b.training
    b.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # squared error, abs error, pixels
    for i in range(dist_ctx.rank, n, dist_ctx.world):
        rgb, sigma = val.load(i)
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)
        with autocast(device, dtype):
            pred = b(x)[0, 0].float()
        y = torch.from_numpy(sigma).to(device) / config.sigma_max
        valid = torch.isfinite(y)
        err = (pred - torch.nan_to_num(y))[valid].double()
        sums += torch.stack([(err * err).sum(), err.abs().sum(), valid.sum().double()])
    if dist_ctx.active:
        dist.all_reduce(sums)
    b.train(was_training)
    squared, absolute, pixels = sums.tolist()
    count = max(pixels, 1.0)
    mae = absolute / count
    return {"val_mse": squared / count, "val_mae": mae, "val_mae_px": mae * config.sigma_max,
            "val_images": n}


def _check_replicas(trainer: Trainer, dist_ctx: Dist, run_dir: Path) -> None:
    """DDP keeps every rank's parameters identical; verify it (a mismatch means the checkpoint,
    written by rank 0 only, does not stand for the job) and record the checksums."""
    params = [p for m in (trainer.b, trainer.s, trainer.d) if m is not None for p in m.parameters()]
    local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                         for p in params]).flatten().to(trainer.device)
    gathered = [torch.empty_like(local) for _ in range(dist_ctx.world)]
    dist.all_gather(gathered, local)
    if dist_ctx.rank == 0:
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        write_text(run_dir / "replicas.json", json.dumps(
            {"world": dist_ctx.world, "identical": same,
             "checksums": [float(g.sum()) for g in gathered]}))
        if not same:
            raise ProcessingError("DDP replicas hold different weights at the end of training; "
                                  "the checkpoint holds rank 0's")
