"""DMENet training (paper Sec. 4 and 5.1; supplement Tables 1-3), in the order it runs.

1. ``TrainConfig`` (frozen, copied into every checkpoint) names the data, the networks
   (``nets``: the paper's ablations B, BD, BDC, BDCS) and the schedule.
2. ``prepare`` opens the data sets, builds B (+ D, S, C as available) and says, in ``notes``,
   what it could not do (no real photos -> no D; no masks -> no S; no VGG19 -> no C).
3. ``Trainer`` holds the networks and optimisers and performs one alternating update per step:
   G = B + S on L_g (Eq. 3), then D on L_d (Eq. 4), on features computed in the G step.
4. ``train`` is the loop of one process: batches (a pure function of seed, step and rank, so a
   resumed run sees the same data), checkpoints, validation, ``metrics.jsonl``.
5. ``launch`` starts one process per GPU (or ``cpu_procs`` gloo processes on CPU) with
   DistributedDataParallel, or joins a torchrun job from its environment.
6. ``export_run`` turns a run's last checkpoint into shipped fp16 weights via the registry.

The library never prints: progress goes to an ``on_event`` callback (rank 0 only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from defocus_cli.errors import DefocusError, DeviceError, InputError, ProcessingError, WeightsError
from defocus_cli.io.images import atomic_write
from defocus_cli.models.b import BlurNet, BlurNetConfig, load_vgg19_encoder
from defocus_cli.models.d import DomainDiscriminator
from defocus_cli.models.losses import (
    LossWeights,
    adversarial_loss,
    blur_map_loss,
    content_loss,
    discriminator_loss,
    discriminator_objective,
    generator_objective,
    sharpness_loss,
)
from defocus_cli.models.s import SharpnessCalibrator
from defocus_cli.pipelines.train_data import (
    BatchPlan,
    StepBatches,
    SynthSet,
    masked_photos,
    read_exclusions,
    real_photos,
    steps_per_epoch,
)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 1
#: full training images over which --bn frozen re-estimates the BatchNorm statistics
BN_RECALIBRATION_IMAGES = 96
ARCHITECTURE = "dmenet-b"
NETS = ("B", "BD", "BC", "BDC", "BDCS", "BS", "BDS", "BCS")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Paths are as the user gave them."""

    data: str  # D_S: a synth dataset folder
    real: str | None = None  # D_R: folder of real defocused photos (or a dataset folder)
    real_masks: str | None = None  # D_B: dataset folder with image/ + mask/, or masks named like D_R
    real_exclude: str | None = None  # names held out of D_R / D_B (eval scenes): list or manifest
    nets: str = "BDCS"  # which of the paper's sub-networks train beside B
    width: float = 1.0  # B's channel multiplier (1.0 = the paper's network)
    sigma_max: float = 7.0  # px; the sigmoid output is sigma / sigma_max (c_max 28 / 4)
    crop: int = 240  # training crop side; 240 x 240 as in the authors' code (config.TRAIN.height)
    batch: int = 4  # per process; the paper's batch size
    epochs: int = 60  # the paper's model "converged after around 60 epochs"
    steps: int | None = None  # total optimiser steps; overrides epochs when set
    pretrain_steps: int = 0  # the first steps train B alone on L_B (the original code's init stage)
    lr: float = 1e-4  # Adam, paper Sec. 5.1
    lr_decay: float = 0.8  # x0.8 ...
    decay_every_epochs: int = 20  # ... every 20 epochs
    lambda_adv: float = 1e-3
    lambda_d: float = 1.0
    lambda_c: float = 1e-4
    lambda_s: float = 2e-2
    lambda_aux: float = 1.0
    act_slope: float = 0.0  # D and S activation: 0 = ReLU (Tables 2-3); 0.2 = the code's lrelu
    precision: str = "auto"  # auto|fp32|bf16 (autocast dtype of forward passes)
    channels_last: bool = False
    seed: int = 0
    ckpt_every: int = 500  # steps between atomic checkpoints (and one at the end)
    log_every: int = 10  # steps between metrics.jsonl records
    val_max: int = 16  # validation images per validation (full-size eval on CPU is slow)
    val_every: int | None = None  # steps between validations; None = once per epoch (the paper's)
    workers: int = 0  # DataLoader worker processes per training process
    vgg_weights: str | None = None  # torchvision vgg19 state dict: encoder init and network C
    init_weights: str | None = None  # start B from shipped weights (fresh optimiser)
    #: "batch": B's BatchNorm layers normalise with each batch's statistics (the paper's);
    #: "frozen": their statistics are first re-estimated on full training images, then held
    #: fixed, so training normalises exactly as inference does (see freeze_batchnorm)
    bn: str = "batch"

    def __post_init__(self) -> None:
        if self.nets not in NETS:
            raise InputError(f"--nets must be one of {', '.join(NETS)}, got {self.nets!r}")
        if self.bn not in ("batch", "frozen"):
            raise InputError(f"--bn must be batch or frozen, got {self.bn!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.crop % 16 or self.crop < 32:
            raise InputError(f"--crop must be a multiple of 16 and >= 32, got {self.crop}")
        for name in ("batch", "epochs", "ckpt_every", "log_every", "decay_every_epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be >= 1, got {self.val_every}")
        if self.pretrain_steps < 0 or self.val_max < 0 or self.workers < 0:
            raise InputError("--pretrain-steps, --val-max and --workers must be >= 0")

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(adv=self.lambda_adv, d=self.lambda_d, content=self.lambda_c,
                           sharpness=self.lambda_s, aux=self.lambda_aux)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# fields that fix the networks' shapes: a resumed run must keep them
ARCHITECTURE_FIELDS = ("nets", "width", "sigma_max", "act_slope")


@dataclass(frozen=True)
class TrainEvent:
    """What the loop reports to its caller (rank 0 only)."""

    kind: str  # "start" | "step" | "val" | "checkpoint" | "end"
    step: int
    total: int
    metrics: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    step: int
    val: dict
    notes: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# devices, precision, distributed context


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. world == 1 means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = run in fp32. ``auto`` picks bf16 on a GPU that supports it and on CPUs whose
    oneDNN has native bf16 (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if ("AMX" in capability or "BF16" in capability) else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------
# networks


def resolve_nets(config: TrainConfig, has_real: bool, has_masked: bool, has_vgg: bool) -> tuple[str, list[str]]:
    """The sub-networks that can actually train, and a note for each one that cannot."""
    active = "B"
    notes = []
    if "D" in config.nets:
        if has_real or has_masked:
            active += "D"
        else:
            notes.append("no real photos (--real / --real-masks): network D and L_adv/L_D are off")
    if "C" in config.nets:
        if has_vgg:
            active += "C"
        else:
            notes.append("no ImageNet VGG19 weights (--vgg-weights): network C and L_C are off")
    if "S" in config.nets:
        if has_masked:
            active += "S"
        else:
            notes.append("no real photos with blur masks (--real-masks): network S and L_S are off")
    return active, notes


class _GeneratorLoss(nn.Module):
    """B (+ S) and their objective L_g (Eq. 3) in one forward, so DDP sees one forward per backward.

    D is passed in at call time and is not a sub-module: it is frozen here (no gradients, BN
    statistics restored), because only its own step may change it.
    """

    def __init__(self, b: BlurNet, s: SharpnessCalibrator | None, c: nn.Module | None, weights: LossWeights) -> None:
        super().__init__()
        self.b, self.s, self.c, self.weights = b, s, c, weights

    def forward(self, batch: dict[str, torch.Tensor], d: nn.Module | None, full: bool):
        """``full=False`` is the B-only pre-training stage: L_B alone."""
        w = self.weights
        out = self.b(batch["synth"])
        target = batch["target"]
        terms: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {"synth": out.features.detach()}
        terms["L_B"] = blur_map_loss(out.sigma, out.aux, target, w.aux)
        if not full:
            terms["L_g"] = terms["L_B"]
            return terms, feats
        if self.c is not None:
            # invalid label pixels take the prediction's value so they add no content difference
            filled = torch.where(torch.isfinite(target), target, out.sigma.detach().float())
            terms["L_C"] = content_loss(self.c(out.sigma), self.c(filled.to(out.sigma.dtype)))
        if d is not None and "real" in batch:
            out_r = self.b(batch["real"])
            feats["real"] = out_r.features.detach()
            with _frozen_buffers(d):
                terms["L_adv_R"] = adversarial_loss(d(out_r.features))
        if "masked" in batch and (self.s is not None or d is not None):
            out_m = self.b(batch["masked"])
            if self.s is not None:
                terms["L_S"] = sharpness_loss(self.s(out_m.sigma), batch["mask"])
            if d is not None:
                feats["masked"] = out_m.features.detach()
                with _frozen_buffers(d):
                    terms["L_adv_B"] = adversarial_loss(d(out_m.features))
        terms["L_g"] = generator_objective(terms["L_B"], w, l_c=terms.get("L_C"),
                                           l_adv_real=terms.get("L_adv_R"),
                                           l_adv_masked=terms.get("L_adv_B"), l_s=terms.get("L_S"))
        return terms, feats


class _DiscriminatorLoss(nn.Module):
    """D and its objective L_d (Eq. 4); each domain's features pass D separately (own BN batch
    statistics), as in the authors' code."""

    def __init__(self, d: DomainDiscriminator, weights: LossWeights) -> None:
        super().__init__()
        self.d, self.weights = d, weights

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = {"L_D_synth": discriminator_loss(self.d(feats["synth"]), 1)}
        n_real = n_masked = 0
        if "real" in feats:
            terms["L_D_real"] = discriminator_loss(self.d(feats["real"]), 0)
            n_real = feats["real"].shape[0]
        if "masked" in feats:
            terms["L_D_masked"] = discriminator_loss(self.d(feats["masked"]), 0)
            n_masked = feats["masked"].shape[0]
        terms["L_d"] = discriminator_objective(terms["L_D_synth"], self.weights,
                                               l_d_real=terms.get("L_D_real"), n_real=n_real,
                                               l_d_masked=terms.get("L_D_masked"), n_masked=n_masked)
        return terms


@contextlib.contextmanager
def _frozen_buffers(module: nn.Module):
    """Run ``module`` in training mode (batch statistics) without changing its BN running stats.

    Each buffer is swapped for a throw-away copy for the duration and the original object put
    back afterwards; restoring values in place would bump the version of tensors autograd saved.
    """
    swapped = []
    for m in module.modules():
        for name, buf in list(m._buffers.items()):
            if buf is not None:
                swapped.append((m, name, buf))
                m._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for m, name, buf in swapped:
            m._buffers[name] = buf


class Trainer:
    """The networks, their optimisers and schedulers, and one alternating update.

    ``b``, ``s``, ``d`` are the bare modules (what checkpoints hold); with a process group the
    G and D objectives run through DistributedDataParallel wrappers.
    """

    def __init__(self, config: TrainConfig, active: str, spe: int, device: torch.device,
                 dist_ctx: Dist, c: nn.Module | None = None, b: BlurNet | None = None) -> None:
        self.config, self.active, self.device, self.dist = config, active, device, dist_ctx
        self.dtype = autocast_dtype(config.precision, device)
        weights = config.loss_weights
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.b = b if b is not None else BlurNet(BlurNetConfig(width=config.width, sigma_max=config.sigma_max))
        feat_channels = self.b.res[0].body[0][0].in_channels
        self.s = SharpnessCalibrator(config.act_slope) if "S" in active else None
        self.d = DomainDiscriminator(feat_channels, negative_slope=config.act_slope) if "D" in active else None
        self.c = c if "C" in active else None
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        for m in (self.b, self.s, self.d, self.c):
            if m is not None:
                m.to(device=device, memory_format=fmt)
        self.g_loss = _GeneratorLoss(self.b, self.s, self.c, weights)
        self.d_loss = _DiscriminatorLoss(self.d, weights) if self.d is not None else None
        if dist_ctx.active:
            ids = [device.index] if device.type == "cuda" else None
            # S sits idle during B-only pre-training; DDP must then expect unused parameters
            unused = config.pretrain_steps > 0 and self.s is not None
            self.g_run = nn.parallel.DistributedDataParallel(self.g_loss, device_ids=ids,
                                                             find_unused_parameters=unused)
            self.d_run = (nn.parallel.DistributedDataParallel(self.d_loss, device_ids=ids)
                          if self.d_loss is not None else None)
        else:
            self.g_run, self.d_run = self.g_loss, self.d_loss
        g_params = list(self.b.parameters()) + (list(self.s.parameters()) if self.s else [])
        self.opt_g = torch.optim.Adam(g_params, lr=config.lr)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=config.lr) if self.d else None

        def decay(step: int) -> float:  # x lr_decay every decay_every_epochs epochs
            return config.lr_decay ** ((step // spe) // config.decay_every_epochs)

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        # D follows G's clock (the global step) although it does not step during pre-training
        self.sched_d = (torch.optim.lr_scheduler.LambdaLR(self.opt_d, lambda _: decay(self.sched_g.last_epoch))
                        if self.opt_d else None)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fmt = torch.channels_last if self.config.channels_last else torch.contiguous_format
        out = {}
        for k, v in batch.items():
            v = v.to(self.device, non_blocking=True)
            out[k] = v.contiguous(memory_format=fmt) if v.shape[1] == 3 else v
        return out

    def _check_finite(self, terms: dict[str, torch.Tensor], step: int, which: str) -> None:
        bad = torch.tensor([0.0 if all(torch.isfinite(t).item() for t in terms.values()) else 1.0],
                           device=self.device)
        if self.dist.active:  # every rank must stop together, or the others hang in all-reduce
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            values = ", ".join(f"{k}={t.item():.4g}" for k, t in terms.items())
            raise ProcessingError(
                f"training diverged at step {step}: a {which} loss is NaN or inf ({values}) on some "
                "process. Resume from the last checkpoint with a lower --lr, or check the data "
                "(a sigma map with inf, an all-black image)."
            )

    def g_step(self, batch: dict[str, torch.Tensor], step: int, pretraining: bool = False):
        """One update of B (+ S) on L_g. Returns (float terms, detached features for D)."""
        self.b.train()
        if self.config.bn == "frozen":
            freeze_batchnorm(self.b)
        if self.s is not None:
            self.s.train()
        d = None if pretraining else self.d
        if self.d is not None:
            self.d.requires_grad_(False)
        with _autocast(self.device, self.dtype):
            terms, feats = self.g_run(batch, d, not pretraining)
        self._check_finite(terms, step, "generator")
        self.opt_g.zero_grad(set_to_none=True)
        terms["L_g"].backward()
        self.opt_g.step()
        return {k: v.item() for k, v in terms.items()}, feats

    def d_step(self, feats: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One update of D on L_d from features computed in the G step."""
        if self.d is None or len(feats) < 2:
            return {}
        self.d.requires_grad_(True)
        self.d.train()
        with _autocast(self.device, self.dtype):
            terms = self.d_run(feats)
        self._check_finite(terms, step, "discriminator")
        self.opt_d.zero_grad(set_to_none=True)
        terms["L_d"].backward()
        self.opt_d.step()
        return {k: v.item() for k, v in terms.items()}

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """The alternating update of step ``step``: G then D; schedulers advance once."""
        batch = self._to_device(batch)
        pretraining = step < self.config.pretrain_steps
        terms, feats = self.g_step(batch, step, pretraining)
        d_terms = {} if pretraining else self.d_step(feats, step)
        terms.update(d_terms)
        terms["lr"] = self.opt_g.param_groups[0]["lr"]  # the rate this step used
        self.sched_g.step()
        if d_terms:
            self.sched_d.step()
        return terms

    def state_dict(self) -> dict:
        def sd(x):
            return None if x is None else x.state_dict()

        return {"B": sd(self.b), "S": sd(self.s), "D": sd(self.d), "opt_G": sd(self.opt_g),
                "opt_D": sd(self.opt_d), "sched_G": sd(self.sched_g), "sched_D": sd(self.sched_d)}

    def load_state_dict(self, state: dict) -> None:
        for key, target in (("B", self.b), ("S", self.s), ("D", self.d), ("opt_G", self.opt_g),
                            ("opt_D", self.opt_d), ("sched_G", self.sched_g), ("sched_D", self.sched_d)):
            if target is not None:
                if state.get(key) is None:
                    raise WeightsError(f"checkpoint has no {key} state; it was made with other --nets")
                target.load_state_dict(state[key])


# --------------------------------------------------------------------------------------------
# validation


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
        with _autocast(device, dtype):
            pred = b(x)[0, 0].float()
        y = torch.from_numpy(sigma).to(device) / config.sigma_max
        valid = torch.isfinite(y)
        err = (pred - torch.nan_to_num(y))[valid].double()
        sums += torch.stack([(err * err).sum(), err.abs().sum(), valid.sum().double()])
    if dist_ctx.active:
        dist.all_reduce(sums)
    b.train(was_training)
    count = max(float(sums[2]), 1.0)
    mae = float(sums[1]) / count
    return {"val_mse": float(sums[0]) / count, "val_mae": mae, "val_mae_px": mae * config.sigma_max,
            "val_images": n}


# --------------------------------------------------------------------------------------------
# checkpoints


def _atomic_torch_save(obj, path: Path) -> None:
    # a SIGKILL mid-write leaves the previous checkpoint intact: the temp file is renamed at the end
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of a run folder (weights only, safe to load)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint in this run folder (was it started with -o {run_dir}?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a defocus training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was started with (from its checkpoint)."""
    return TrainConfig.from_dict(json.loads(load_checkpoint(run_dir)["config"]))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run wrote after its last checkpoint: they will be redone."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    _atomic_write_text(path, "".join(l + "\n" for l in keep))


# --------------------------------------------------------------------------------------------
# the loop of one process


@dataclass
class _Prepared:
    train: SynthSet
    val: SynthSet
    real: list[Path]
    masked: list[tuple[Path, Path]]
    active: str
    content: nn.Module | None
    provenance: dict
    notes: list[str]


def prepare(config: TrainConfig) -> _Prepared:
    """Open the data sets and decide which networks can train; nothing is built on a device."""
    from defocus_cli.models.vgg import ContentNet, load_vgg19_state_dict

    notes: list[str] = []
    train_set = SynthSet.open(config.data, "train")
    val_set = SynthSet.open(config.data, "val")
    if len(train_set) == 0:
        raise InputError(f"{config.data}: no samples with split 'train' in manifest.jsonl")
    if len(val_set) == 0:
        notes.append(f"{config.data}: no 'val' split: validation is skipped")
    exclude = read_exclusions(config.real_exclude)
    real = real_photos(config.real, exclude) if config.real else []
    if config.real and not real:
        raise InputError(f"{config.real}: no usable photos (after excluding {len(exclude)} names)")
    masked = masked_photos(config.real_masks, real, exclude) if config.real_masks else []
    if config.real_masks and not masked:
        raise InputError(f"{config.real_masks}: no photo/mask pairs found (masks must be named like the photos)")
    vgg_sd = load_vgg19_state_dict(config.vgg_weights) if config.vgg_weights else None
    active, net_notes = resolve_nets(config, bool(real), bool(masked), vgg_sd is not None)
    notes += net_notes
    if vgg_sd is None:
        encoder_init = "Kaiming-normal random init (no ImageNet VGG19 weights were given)"
        notes.append("encoder initialised randomly (Kaiming): pass --vgg-weights with torchvision's "
                     "vgg19 state dict for the paper's ImageNet initialisation")
    elif config.width != 1.0:
        encoder_init = f"Kaiming-normal random init (ImageNet VGG19 does not fit width {config.width})"
        notes.append(f"VGG19 weights fit only width 1.0: the width-{config.width} encoder starts random")
    else:
        encoder_init = f"ImageNet VGG19 ({Path(config.vgg_weights).name})"
    if config.init_weights:
        encoder_init = f"all of B from {config.init_weights}"
    content = ContentNet(vgg_sd) if "C" in active else None
    content_desc = (f"VGG19 relu4_4 ({Path(config.vgg_weights).name})" if content is not None
                    else "none: L_C dropped" + ("" if "C" in config.nets else " (not requested)"))
    provenance = {
        "nets_requested": config.nets, "nets_trained": active,
        "encoder_init": encoder_init, "content_network": content_desc,
        "data": {"synthetic": train_set.description(), "real": config.real, "real_photos": len(real),
                 "real_masks": config.real_masks, "masked_photos": len(masked),
                 "excluded_names": sorted(exclude)},
    }
    return _Prepared(train_set, val_set, real, masked, active, content, provenance, notes)


def freeze_batchnorm(b: BlurNet) -> None:
    """Put B's BatchNorm layers in eval mode (running statistics, not the batch's).

    With batches of a few 128 px crops, batch statistics act almost per image: B's encoder has
    no normalisation, so its activations' means vary by hundreds between photos, and each
    batch removes its own. At inference the running averages cannot, and a network trained
    only with batch statistics comes out biased (measured on the session-1 weights: +1.0 px on
    synthetic val, +1.2 px on real). Frozen statistics make training see what inference sees;
    the BN scale and shift stay trainable.
    """
    for m in b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


@torch.no_grad()
def recalibrate_batchnorm(b: BlurNet, images: SynthSet, count: int, device: torch.device) -> int:
    """Re-estimate B's BatchNorm running statistics on up to ``count`` full images, one per batch.

    Cumulative averages (momentum None) over whole images, the population inference normalises
    with. Deterministic: images evenly spaced through the set. Returns the number used.
    """
    bns = [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = b.training
    b.train()
    n = min(count, len(images))
    for i in np.linspace(0, len(images) - 1, n).round().astype(int):
        rgb, _ = images.load(int(i))
        h, w = (rgb.shape[0] // 16) * 16, (rgb.shape[1] // 16) * 16
        x = torch.from_numpy(np.ascontiguousarray(rgb[:h, :w].transpose(2, 0, 1)))[None]
        b(x.to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    b.train(was_training)
    return n


def _init_b(config: TrainConfig, prep: _Prepared) -> BlurNet:
    torch.manual_seed(config.seed)
    b = BlurNet(BlurNetConfig(width=config.width, sigma_max=config.sigma_max))
    if config.init_weights:
        from defocus_cli.models.registry import load_model

        model, meta = load_model(config.init_weights, torch.device("cpu"))
        if model.config.width != config.width or model.config.sigma_max != config.sigma_max:
            raise InputError(
                f"{config.init_weights}: weights are width {model.config.width}, sigma_max "
                f"{model.config.sigma_max}; pass --width {model.config.width} to continue from them"
            )
        b.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=True)
    elif config.vgg_weights and config.width == 1.0:
        from defocus_cli.models.vgg import load_vgg19_state_dict

        load_vgg19_encoder(b, load_vgg19_state_dict(config.vgg_weights))
    return b


def train(config: TrainConfig, run_dir: str | Path, *, device: torch.device, dist_ctx: Dist = Dist(),
          resume: bool = False, provenance: dict | None = None,
          on_event: Callable[[TrainEvent], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train in this process (one rank of the job). ``stop_after`` ends the loop early after that
    many steps of this call (tests use it to simulate an interruption)."""
    run_dir = Path(run_dir)
    rank0 = dist_ctx.rank == 0
    emit = on_event if (on_event is not None and rank0) else (lambda e: None)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir)
        old = TrainConfig.from_dict(json.loads(ckpt["config"]))
        for name in ARCHITECTURE_FIELDS:
            if getattr(old, name) != getattr(config, name):
                raise InputError(f"--resume {run_dir}: {name} is {getattr(old, name)!r} in the "
                                 f"checkpoint but {getattr(config, name)!r} now; keep the checkpoint's")
    elif rank0:
        if (run_dir / CHECKPOINT).exists():
            raise InputError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                             "or choose another -o")
        run_dir.mkdir(parents=True, exist_ok=True)

    prep = prepare(config)
    spe = steps_per_epoch(len(prep.train), config.batch, dist_ctx.world)
    total = config.steps if config.steps is not None else config.epochs * spe
    b = _init_b(config, prep) if ckpt is None else None
    notes = list(prep.notes)
    if b is not None and config.bn == "frozen":
        used = recalibrate_batchnorm(b, prep.train, BN_RECALIBRATION_IMAGES, torch.device("cpu"))
        notes.append(f"BatchNorm statistics re-estimated on {used} full training images, then "
                     "frozen (--bn frozen)")
    trainer = Trainer(config, prep.active, spe, device, dist_ctx, c=prep.content, b=b)
    start = 0
    val_metrics: dict = {}
    info = {"provenance": {**prep.provenance, **(provenance or {})}, "notes": notes}
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        start = int(ckpt["step"])
        val_metrics = json.loads(ckpt.get("val", "{}"))
        info = json.loads(ckpt["info"])
        torch.set_rng_state(ckpt["rng_torch"])
        if rank0:
            _truncate_metrics(run_dir / METRICS, start)
    if rank0:
        _atomic_write_text(run_dir / "config.json", json.dumps(
            {"config": config.to_dict(), **info, "steps_per_epoch": spe, "total_steps": total,
             "world_size": dist_ctx.world}, indent=2))

    def save(step: int) -> None:
        if not rank0:
            return
        state = trainer.state_dict()
        state.update({"format": CHECKPOINT_FORMAT, "step": step, "config": json.dumps(config.to_dict()),
                      "info": json.dumps(info), "val": json.dumps(val_metrics),
                      "rng_torch": torch.get_rng_state()})
        _atomic_torch_save(state, run_dir / CHECKPOINT)
        emit(TrainEvent("checkpoint", step, total))

    def log(record: dict) -> None:
        if rank0:
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    emit(TrainEvent("start", start, total, {"nets": prep.active, "steps_per_epoch": spe,
                                           "world": dist_ctx.world}, tuple(notes)))
    plan = BatchPlan(config.batch, config.crop, config.seed, dist_ctx.rank, dist_ctx.world, config.sigma_max)
    loader = torch.utils.data.DataLoader(
        StepBatches(prep.train, prep.real, prep.masked, plan), batch_size=None,
        sampler=range(start, total), num_workers=config.workers,
        pin_memory=device.type == "cuda")
    step = start
    t0, n0 = time.perf_counter(), start
    running: dict[str, float] = {}
    for batch in loader:
        terms = trainer.step(batch, step)
        step += 1
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + v
        if step % config.log_every == 0 or step == total:
            dt = time.perf_counter() - t0
            n = step - n0
            rate = n / dt if dt > 0 else 0.0
            record = {"step": step, "epoch": step / spe, **{k: v / n for k, v in running.items()},
                      "steps_per_s": rate, "samples_per_s": rate * config.batch * dist_ctx.world}
            log(record)
            emit(TrainEvent("step", step, total, record))
            running, t0, n0 = {}, time.perf_counter(), step
        if step % (config.val_every or spe) == 0 or step == total:
            val_metrics = validate(trainer.b, prep.val, config, device, trainer.dtype, dist_ctx)
            if val_metrics:
                record = {"step": step, "epoch": step / spe, "kind": "val", **val_metrics}
                log(record)
                emit(TrainEvent("val", step, total, record))
        if step % config.ckpt_every == 0 or step == total:
            save(step)
        if stop_after is not None and step - start >= stop_after:
            break
    if step == start and rank0 and not (run_dir / CHECKPOINT).exists():
        save(step)
    if dist_ctx.active:
        _check_replicas(trainer, dist_ctx, run_dir)
    emit(TrainEvent("end", step, total, val_metrics))
    return TrainResult(str(run_dir), step, val_metrics, tuple(info["notes"]))


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
        _atomic_write_text(run_dir / "replicas.json", json.dumps(
            {"world": dist_ctx.world, "identical": same,
             "checksums": [float(g.sum()) for g in gathered]}))
        if not same:
            raise ProcessingError("DDP replicas hold different weights at the end of training; "
                                  "the checkpoint holds rank 0's")


# --------------------------------------------------------------------------------------------
# processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_for(gpus: int, local_rank: int) -> torch.device:
    if gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--gpus asks for CUDA but no CUDA device is available; use --gpus 0 for CPU")
    if local_rank >= torch.cuda.device_count():
        raise DeviceError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _run_rank(local_rank: int, world: int, config: TrainConfig, run_dir: str, resume: bool,
              gpus: int, provenance: dict | None, on_event, threads: int) -> TrainResult:
    """Entry point of one spawned process (also used for rank 0 of a single-process run)."""
    if gpus == 0:
        torch.set_num_threads(threads)
    try:
        if world > 1:
            dist.init_process_group("nccl" if gpus else "gloo", rank=local_rank, world_size=world)
        ctx = Dist(rank=local_rank, world=world, local_rank=local_rank)
        return train(config, run_dir, device=_device_for(gpus, local_rank), dist_ctx=ctx,
                     resume=resume, provenance=provenance, on_event=on_event)
    except DefocusError as exc:
        # the parent re-raises this as the same error class with a clean message
        if local_rank == 0 or not (Path(run_dir) / "error.json").exists():
            _atomic_write_text(Path(run_dir) / "error.json",
                               json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launch(config: TrainConfig, run_dir: str | Path, *, gpus: int = 0, cpu_procs: int = 1,
           threads: int | None = None, resume: bool = False, provenance: dict | None = None,
           on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Run training with ``gpus`` CUDA processes (DDP, NCCL) or ``cpu_procs`` CPU processes
    (DDP, gloo; 1 = plain single process). Inside a torchrun job (RANK/WORLD_SIZE/LOCAL_RANK set)
    this process is one rank and nothing is spawned. ``on_event`` must be picklable when
    processes are spawned. ``threads``: CPU threads per process (default: cores / processes)."""
    run_dir = Path(run_dir)
    if gpus < 0 or cpu_procs < 1:
        raise InputError(f"--gpus must be >= 0 and --cpu-procs >= 1 (got {gpus}, {cpu_procs})")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if threads is not None and gpus == 0:
            torch.set_num_threads(threads)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        device = _device_for(gpus, local_rank)
        if world > 1:
            dist.init_process_group("nccl" if gpus else "gloo")  # env:// from torchrun
        try:
            return train(config, run_dir, device=device, dist_ctx=Dist(rank, world, local_rank),
                         resume=resume, provenance=provenance, on_event=on_event)
        finally:
            if world > 1:
                dist.destroy_process_group()
    nprocs = gpus if gpus > 0 else cpu_procs
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nprocs)
    elif threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    if nprocs == 1:
        return _run_rank(0, 1, config, str(run_dir), resume, gpus, provenance, on_event, threads)
    import torch.multiprocessing as mp

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.json").unlink(missing_ok=True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    try:
        mp.spawn(_run_rank, args=(nprocs, config, str(run_dir), resume, gpus, provenance, on_event, threads),
                 nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as exc:
        err_path = run_dir / "error.json"
        if err_path.is_file():
            err = json.loads(err_path.read_text())
            cls = {c.__name__: c for c in (InputError, WeightsError, DeviceError, ProcessingError)}
            raise cls.get(err["type"], ProcessingError)(err["message"]) from exc
        raise ProcessingError(f"a training process failed: {str(exc).strip().splitlines()[-1]}") from exc
    ckpt = load_checkpoint(run_dir)
    return TrainResult(str(run_dir), int(ckpt["step"]), json.loads(ckpt["val"]),
                       tuple(json.loads(ckpt["info"])["notes"]))


# --------------------------------------------------------------------------------------------
# export


def export_run(run_dir: str | Path, out: str | Path, *, command: str = "", git_revision: str = "") -> dict:
    """Write the run's network B as shipped fp16 weights + JSON metadata (registry.save_weights).

    Returns the metadata written.
    """
    from defocus_cli.models.registry import save_weights

    ckpt = load_checkpoint(run_dir)
    config = TrainConfig.from_dict(json.loads(ckpt["config"]))
    info = json.loads(ckpt["info"])
    b = BlurNet(BlurNetConfig(width=config.width, sigma_max=config.sigma_max))
    b.load_state_dict(ckpt["B"], strict=True)
    b.eval()
    val = json.loads(ckpt["val"])
    if any(isinstance(v, float) and not math.isfinite(v) for v in val.values()):
        raise ProcessingError(f"{run_dir}: validation metrics are not finite; refusing to export")
    prov = info["provenance"]
    meta = {
        "architecture": ARCHITECTURE,
        "width": config.width,
        "sigma_max": config.sigma_max,
        "steps": int(ckpt["step"]),
        "nets_trained": prov["nets_trained"],
        "nets_requested": prov["nets_requested"],
        "encoder_init": prov["encoder_init"],
        "content_network": prov["content_network"],
        "vgg19_replacement": (None if config.vgg_weights else
                              "no ImageNet VGG19 was available: encoder random (Kaiming) init, "
                              "network C absent and L_C dropped"),
        "data": prov["data"],
        "train_config": config.to_dict(),
        "train_command": prov.get("command", ""),
        "train_git_revision": prov.get("git_revision", ""),
        "export_command": command,
        "git_revision": git_revision,
        "val_metrics": val,
        "notes": info["notes"],
    }
    return save_weights(b, Path(out), meta)
