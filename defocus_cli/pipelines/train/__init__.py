"""DMENet training (paper Sec. 4 and 5.1; supplement Tables 1-3), one module per stage.

config       TrainConfig (frozen, copied into every checkpoint) names the data, the networks
             (``nets``: the paper's ablations B, BD, BDC, BDCS) and the schedule.
preparation  ``prepare`` opens the data sets and decides which of D, S, C can train (no real
             photos -> no D; no masks -> no S; no VGG19 -> no C, each said in ``notes``);
             ``init_b`` builds B.
step         ``Trainer``: one alternating update per step, G = B + S on L_g (Eq. 3), then D on
             L_d (Eq. 4) on features computed in the G step.
loop         ``train``, the loop of one process in the order it runs: batches, metrics.jsonl,
             validation, checkpoints.
checkpoint   the run folder's files: checkpoint.pt, metrics.jsonl, config.json.
launcher     ``launch``: one rank of a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
             MASTER_PORT; NCCL on CUDA, gloo on CPU), or local processes spawned with the same
             variables (``--gpus N``, ``--cpu-procs N``).
export       ``export_run``: a run's last checkpoint -> shipped fp16 weights.

The library never prints: progress goes to an ``on_event`` callback (rank 0 only).
"""

from defocus_cli.pipelines.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    METRICS,
    load_checkpoint,
    load_run_config,
)
from defocus_cli.pipelines.train.config import (
    ARCHITECTURE_FIELDS,
    NETS,
    TRAIN_PRECISIONS,
    Dist,
    TrainConfig,
    TrainEvent,
    TrainResult,
    resolve_nets,
)
from defocus_cli.pipelines.train.export import ARCHITECTURE, export_run
from defocus_cli.pipelines.train.launcher import dist_from_env, launch
from defocus_cli.pipelines.train.loop import train, validate
from defocus_cli.pipelines.train.preparation import (
    BN_RECALIBRATION_IMAGES,
    Prepared,
    init_b,
    prepare,
    recalibrate_batchnorm,
)
from defocus_cli.pipelines.train.step import Trainer, freeze_batchnorm, training_dtype

__all__ = [
    "ARCHITECTURE", "ARCHITECTURE_FIELDS", "BN_RECALIBRATION_IMAGES", "CHECKPOINT",
    "CHECKPOINT_FORMAT", "METRICS", "NETS", "TRAIN_PRECISIONS", "Dist", "Prepared", "TrainConfig",
    "TrainEvent", "TrainResult", "Trainer", "dist_from_env", "export_run", "freeze_batchnorm",
    "init_b", "launch", "load_checkpoint", "load_run_config", "prepare", "recalibrate_batchnorm",
    "resolve_nets", "train", "training_dtype", "validate",
]
