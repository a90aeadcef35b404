"""Training the edge networks of paper 002 (``models.edge``) on a patch dataset (``edge_data``).

Two stages, as in the paper (Sec. IV-B): first B-NET (``stage="blur"``: f1-NET, b-NET and
classification network I, on pattern-edge patches of every source, soft-target cross-entropy
over the blur levels), then E-NET (``stage="edge"``: f2-NET, e-NET and classification network
II on depth- and pattern-edge patches drawn half and half, cross-entropy; f1-NET is B-NET's,
frozen). The edge stage starts from the blur stage's run folder or exported weights (``init``).

Every mini-batch is a pure function of (seed, step) (patch indices, rotation by k x 90 degrees,
flip), and the learning rate a function of the step (linear warm-up, then cosine from ``lr`` to
``lr * lr_final``), so a resumed run sees what the uninterrupted run would have seen.

RUN_DIR/checkpoint.pt   {"format", "kind": "edge-nets", "stage", "step", "model", "optimizer",
                        "config" (JSON), "info" (JSON), "val" (JSON)}
RUN_DIR/metrics.jsonl   {"step", "loss", "lr", "steps_per_s"} per log interval and
                        {"kind": "val", "step", ...}: blur stage: val_mae_px (all pattern
                        patches) and per source; edge stage: val_accuracy, val_balanced_accuracy,
                        val_depth_precision, val_depth_recall
RUN_DIR/config.json     the config and provenance
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defocus_cli.device import resolve_device
from defocus_cli.errors import InputError
from defocus_cli.models.edge import DEPTH, PATTERN, EdgeNetConfig, EdgeNets, parameter_count, soft_targets
from defocus_cli.pipelines import runfolder
from defocus_cli.pipelines.edge_data import SOURCES, PatchSet, read_edge_data_record

KIND = "edge-nets"
CHECKPOINT_FORMAT = 1
STAGES = ("blur", "edge")


@dataclass(frozen=True)
class EdgeTrainConfig:
    """One training stage of EdgeNets; copied into every checkpoint and the exported metadata."""

    #: patch dataset folder (train/, val/, dataset.json)
    data: str
    stage: str = "blur"
    net: EdgeNetConfig = field(default_factory=EdgeNetConfig)
    steps: int = 6000
    batch: int = 256
    lr: float = 1e-3
    lr_final: float = 0.01
    warmup: int = 100
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000
    #: val patches per validation (evenly spread)
    val_max: int = 20000
    ckpt_every: int = 250
    #: weights (.pt) or a run folder to start from; the edge stage needs the blur stage's
    init: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch", "log_every", "val_every", "ckpt_every", "val_max"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.stage == "edge" and not self.init:
            raise InputError("the edge stage trains E-NET on B-NET's frozen f1-NET: pass --init with the "
                             "blur stage's run folder or weights")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["net"] = self.net.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EdgeTrainConfig:
        d = dict(d)
        d["net"] = EdgeNetConfig.from_dict(d["net"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# data


def _indices(patches: PatchSet, stage: str) -> dict[str, np.ndarray]:
    finite = np.isfinite(patches.sigma)
    pattern = np.nonzero((patches.kind == PATTERN) & finite)[0]
    if stage == "blur":
        return {"pattern": pattern}
    depth = np.nonzero(patches.kind == DEPTH)[0]
    return {"pattern": pattern, "depth": depth}


def to_tensor(patches: np.ndarray) -> torch.Tensor:
    """(N, 41, 41, 3) uint8 -> (N, 3, 41, 41) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)


def make_batch(patches: PatchSet, pools: dict[str, np.ndarray], config: EdgeTrainConfig,
               step: int) -> dict[str, torch.Tensor]:
    """The mini-batch of ``step``: {"x": (B, 3, 41, 41), "sigma": (B,), "label": (B,) 0/1}."""
    rng = np.random.default_rng([config.seed, step])
    if config.stage == "blur":
        idx = rng.choice(pools["pattern"], config.batch)
    else:
        half = config.batch // 2
        idx = np.concatenate([rng.choice(pools["depth"], half), rng.choice(pools["pattern"], config.batch - half)])
    idx = np.sort(idx)  # memory-mapped reads in order
    x = patches.patches[idx]
    k = int(rng.integers(0, 4))
    x = np.rot90(x, k, axes=(1, 2))
    if rng.uniform() < 0.5:
        x = x[:, :, ::-1]
    return {"x": to_tensor(x), "sigma": torch.from_numpy(np.nan_to_num(patches.sigma[idx], nan=0.0)),
            "label": torch.from_numpy(patches.kind[idx].astype(np.int64))}


# --------------------------------------------------------------------------------------------
# schedule, step, validation


def learning_rate(config: EdgeTrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))


def loss_of(model: EdgeNets, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
    if stage == "blur":
        logits = model.forward_blur(batch["x"])
        target = soft_targets(batch["sigma"], model.config)
        return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    return F.cross_entropy(model.forward_edge(batch["x"]), batch["label"])


def trainable(model: EdgeNets, stage: str) -> list[torch.nn.Parameter]:
    if stage == "blur":
        mods = [model.f1, model.b_net, model.b_classifier]
    else:
        mods = [model.f2, model.e_net, model.e_classifier]
    return [p for m in mods for p in m.parameters()]


@torch.no_grad()
def validate(model: EdgeNets, patches: PatchSet, stage: str, limit: int, device: torch.device,
             chunk: int = 2048) -> dict[str, Any]:
    """Blur stage: MAE (px) of the estimated sigma on val pattern patches, overall and by source.
    Edge stage: accuracy on val patches (pattern and depth), balanced accuracy, depth precision
    and recall (threshold 0.5)."""
    model.eval()
    pools = _indices(patches, stage)
    if stage == "blur":
        pool = pools["pattern"]
        idx = pool[np.linspace(0, len(pool) - 1, min(limit, len(pool))).round().astype(int)]
        est = []
        for s in range(0, len(idx), chunk):
            x = to_tensor(patches.patches[idx[s:s + chunk]]).to(device)
            est.append(model.sigma_of(model.forward_blur(x)).cpu().numpy())
        err = np.abs(np.concatenate(est) - patches.sigma[idx])
        out: dict[str, Any] = {"val_mae_px": float(err.mean()), "val_patches": len(idx)}
        src = patches.source[idx]
        for i, name in enumerate(SOURCES):
            if (src == i).any():
                out[f"val_mae_px_{name}"] = float(err[src == i].mean())
    else:
        idx = np.concatenate([p[np.linspace(0, len(p) - 1, min(limit // 2, len(p))).round().astype(int)]
                              for p in pools.values() if len(p)])
        prob = []
        for s in range(0, len(idx), chunk):
            x = to_tensor(patches.patches[idx[s:s + chunk]]).to(device)
            prob.append(model.forward_edge(x).softmax(dim=1)[:, DEPTH].cpu().numpy())
        pred = np.concatenate(prob) > 0.5
        truth = patches.kind[idx] == DEPTH
        tp, tn = float((pred & truth).sum()), float((~pred & ~truth).sum())
        out = {"val_accuracy": float((pred == truth).mean()),
               "val_balanced_accuracy": 0.5 * (tp / max(1, truth.sum()) + tn / max(1, (~truth).sum())),
               "val_depth_precision": tp / max(1, pred.sum()), "val_depth_recall": tp / max(1, truth.sum()),
               "val_patches": len(idx)}
    model.train()
    return out


# --------------------------------------------------------------------------------------------
# run folder


def load_edge_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    return runfolder.load_checkpoint(run_dir, KIND, CHECKPOINT_FORMAT, "defocus train edge")


def load_edge_run_config(run_dir: str | Path) -> EdgeTrainConfig:
    return EdgeTrainConfig.from_dict(json.loads(load_edge_checkpoint(run_dir)["config"]))


def load_init(init: str, config: EdgeNetConfig) -> dict[str, torch.Tensor]:
    """State dict from a run folder (its checkpoint) or an exported weights file."""
    p = Path(init)
    if p.is_dir():
        ckpt = load_edge_checkpoint(p)
        own = EdgeTrainConfig.from_dict(json.loads(ckpt["config"])).net
        state = ckpt["model"]
    else:
        from defocus_cli.models.registry import EDGE_ARCHITECTURE, load_model

        model, _ = load_model(init, "cpu", architecture=EDGE_ARCHITECTURE)
        own, state = model.config, model.state_dict()
    if own != config:
        raise InputError(f"--init {init}: its networks {own} differ from {config}")
    return state


@dataclass
class EdgeTrainResult:
    run_dir: Path
    step: int
    val: dict[str, Any]
    parameters: int


def train_edge(config: EdgeTrainConfig, run_dir: str | Path, *, resume: bool = False, device: str = "auto",
               provenance: dict[str, Any] | None = None,
               on_log: Callable[[dict[str, Any]], None] | None = None) -> EdgeTrainResult:
    """Train (or, with ``resume``, continue) one stage of EdgeNets into ``run_dir`` (fp32)."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    train_set, val_set = PatchSet.open(config.data, "train"), PatchSet.open(config.data, "val")
    pools = _indices(train_set, config.stage)
    if any(len(p) == 0 for p in pools.values()):
        raise InputError(f"{config.data}: the train split has no {' or '.join(k for k, p in pools.items() if not len(p))} "
                         "patches")
    torch.manual_seed(config.seed)
    model = EdgeNets(config.net)
    if config.init:
        model.load_state_dict(load_init(config.init, config.net))
    model.to(dev).train()
    params = trainable(model, config.stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    info = {"provenance": provenance or {}, "parameters": parameter_count(model),
            "data": {"path": config.data, "train": len(train_set), "val": len(val_set),
                     "record": read_edge_data_record(config.data).get("counts", {})}}
    step, val = runfolder.begin(run_dir, (lambda: load_edge_checkpoint(run_dir)) if resume else None,
                                model, optimizer, config.to_dict(), info, provenance)

    def checkpoint(step: int, val: dict[str, Any]) -> None:
        runfolder.save_checkpoint(run_dir, runfolder.checkpoint_state(
            CHECKPOINT_FORMAT, KIND, step, model, optimizer, config.to_dict(), info, val, stage=config.stage))

    def one_step(step: int) -> torch.Tensor:
        batch = {k: v.to(dev, non_blocking=True) for k, v in make_batch(train_set, pools, config, step).items()}
        loss = loss_of(model, batch, config.stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step, val = runfolder.run_steps(
        run_dir, optimizer, step=step, steps=config.steps, learning_rate=lambda s: learning_rate(config, s),
        train_step=one_step, validate=lambda: validate(model, val_set, config.stage, config.val_max, dev),
        checkpoint=checkpoint, log_every=config.log_every, val_every=config.val_every,
        ckpt_every=config.ckpt_every, val=val, on_log=on_log)
    return EdgeTrainResult(run_dir, step, val, parameter_count(model))


def export_edge_run(run_dir: str | Path, out: str | Path, *, command: str = "", git_revision: str = "",
                    root: str | Path | None = None) -> dict[str, Any]:
    """Write the run's networks (an edge-stage run holds both B-NET and E-NET) as shipped fp16
    weights + metadata (architecture "edge-nets"). Paths are made relative to ``root``."""
    from defocus_cli.models.registry import save_weights
    from defocus_cli.pipelines.train.export import portable_paths

    ckpt = load_edge_checkpoint(run_dir)
    config = EdgeTrainConfig.from_dict(json.loads(ckpt["config"]))
    if config.stage != "edge":
        raise InputError(f"{run_dir}: a {config.stage}-stage run holds no trained E-NET; export the edge "
                         "stage (defocus train edge --stage edge --init THIS_RUN ...)")
    model = EdgeNets(config.net)
    model.load_state_dict(ckpt["model"], strict=True)
    val = json.loads(ckpt["val"])
    init_val: dict[str, Any] = {}
    init_info: dict[str, Any] = {}
    if config.init and Path(config.init).is_dir():
        init_ckpt = load_edge_checkpoint(config.init)
        init_val = json.loads(init_ckpt["val"])
        init_info = {"train_config": json.loads(init_ckpt["config"]), "steps": int(init_ckpt["step"]),
                     "train_command": json.loads(init_ckpt["info"])["provenance"].get("command", "")}
    info = json.loads(ckpt["info"])
    meta = {
        "paper": "Karaali et al., depth-edge-aware edge-based defocus blur estimation (TIP 2022; models/edge.py)",
        "parameters": parameter_count(model),
        "blur_stage": {**init_info, "val_metrics": init_val},
        "edge_stage": {"train_config": config.to_dict(), "steps": int(ckpt["step"]),
                       "train_command": info["provenance"].get("command", ""), "val_metrics": val},
        "data": info["data"],
        "export_command": command,
        "git_revision": git_revision,
    }
    return save_weights(model, Path(out), portable_paths(meta, Path(root) if root else Path.cwd()))
