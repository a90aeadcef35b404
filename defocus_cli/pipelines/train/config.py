"""What determines a training run (``TrainConfig``), which networks can train, and the small
records the loop exchanges with its caller and its launcher."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from defocus_cli.errors import InputError
from defocus_cli.models.losses import LossWeights

#: the paper's ablations (B, BD, BDC, BDCS) and the other combinations of its sub-networks
NETS = ("B", "BD", "BC", "BDC", "BDCS", "BS", "BDS", "BCS")
#: device.py's precisions less fp16: fp16 training would need loss scaling (see step.training_dtype)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
#: fields that fix the networks' shapes: a resumed run must keep them
ARCHITECTURE_FIELDS = ("nets", "width", "sigma_max", "act_slope")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (copied into every checkpoint).

    Paths are as the user gave them; the CLI makes them absolute so a run resumes from anywhere.
    """

    data: str  # D_S: a synth dataset folder
    real: str | None = None  # D_R: folder of real defocused photos (or a dataset folder)
    real_masks: str | None = None  # D_B: dataset folder with image/ + mask/, or masks named like D_R
    real_exclude: str | None = None  # names held out of D_R / D_B (eval scenes): list or manifest
    #: pseudo-labels for D_R: a folder of NAME.defocus.npy maps of the real photos made by another
    #: estimator (`defocus estimate REAL -o DIR --maps npy`); with it B also learns L_T on them
    real_maps: str | None = None
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
    lambda_t: float = 1.0  # weight of L_T, the blur-map loss on D_R against --real-maps
    act_slope: float = 0.0  # D and S activation: 0 = ReLU (Tables 2-3); 0.2 = the code's lrelu
    precision: str = "auto"  # auto|fp32|bf16: autocast dtype of forward passes (device.py decides auto)
    channels_last: bool = False
    seed: int = 0
    ckpt_every: int = 500  # steps between atomic checkpoints (and one at the end)
    log_every: int = 10  # steps between metrics.jsonl records; losses are read from the device only then
    val_max: int = 16  # validation images per validation (full-size eval on CPU is slow)
    val_every: int | None = None  # steps between validations; None = once per epoch (the paper's)
    workers: int = 0  # DataLoader worker processes per training process
    vgg_weights: str | None = None  # VGG19 weights (models.vgg.load_vgg19_state_dict): encoder init, network C
    init_weights: str | None = None  # start B from shipped weights (fresh optimiser)
    #: decay of an exponential moving average of B's weights (0 = none); with it, validation and
    #: export use the average (step.WeightAverage)
    ema: float = 0.0
    #: "batch": B's BatchNorm layers normalise with each batch's statistics (the paper's);
    #: "frozen": their statistics are first re-estimated on full training images, then held
    #: fixed, so training normalises exactly as inference does (see step.freeze_batchnorm)
    bn: str = "batch"

    def __post_init__(self) -> None:
        if self.nets not in NETS:
            raise InputError(f"--nets must be one of {', '.join(NETS)}, got {self.nets!r}")
        if self.bn not in ("batch", "frozen"):
            raise InputError(f"--bn must be batch or frozen, got {self.bn!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise InputError(f"--precision must be auto, fp32 or bf16 for training, got {self.precision!r}")
        if self.crop % 16 or self.crop < 32:
            raise InputError(f"--crop must be a multiple of 16 and >= 32, got {self.crop}")
        for name in ("batch", "epochs", "ckpt_every", "log_every", "decay_every_epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be >= 1, got {self.val_every}")
        if not 0.0 <= self.ema < 1.0:
            raise InputError(f"--ema must be in [0, 1), got {self.ema}")
        if self.real_maps is not None and self.real is None:
            raise InputError("--real-maps labels the --real photos: pass --real too")
        if self.lambda_t < 0:
            raise InputError(f"--lambda-t must be >= 0, got {self.lambda_t}")
        if self.pretrain_steps < 0 or self.val_max < 0 or self.workers < 0:
            raise InputError("--pretrain-steps, --val-max and --workers must be >= 0")

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(adv=self.lambda_adv, d=self.lambda_d, content=self.lambda_c,
                           sharpness=self.lambda_s, aux=self.lambda_aux, teacher=self.lambda_t)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK).

    world == 1 means a single process and no process group.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


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
