"""Training the map-conditioned deblurring network (``models.sft``, paper 004) on synth renders.

In the order it runs: the data (pairs of a `defocus synth` dataset) -> one step -> the loop
(metrics.jsonl, validation, checkpoints) -> export to shipped weights.

Data: a dataset folder with ``image/NAME.png`` (the render, blurred by its map),
``sharp/NAME.png`` (the all-in-focus scene), ``sigma/NAME.npy`` (the true map, NaN where the
renderer had no depth) and ``manifest.jsonl`` (train / val splits). The network is conditioned
on the true map, or (``maps``: the paper's stage 2, which conditions on the estimator's output)
on maps that `defocus estimate` wrote for the same images (``MAPS/NAME.defocus.npy``). The loss
is L1 (the paper's Eq. 4) over the pixels with a true label, or (``loss="psnr"``) minus the mean
PSNR of the crops (``crop_psnr_loss``), the figure the deblurring benchmark averages; unknown map
values are 0.

The renders are clean; real photos are JPEG-compressed and noisy. Each training input is
therefore degraded the way a camera would after the blur: white noise of a random level, 8-bit
rounding, and JPEG compression at a random quality with probability ``jpeg_prob``; a share
``clean_prob`` of them is only rounded to 8 bits. The target stays the clean sharp render.

Every mini-batch is a pure function of (seed, step) (random crop, flip, rotation by k x 90
degrees, degradation), so a resumed run sees the batches the uninterrupted run would have seen;
the learning rate is a function of the step (cosine from ``lr`` to ``lr * lr_final``), so the
checkpoint holds only the network, Adam's state, the config and the step.

RUN_DIR/checkpoint.pt   {"format", "kind": "sft-deblur", "step", "model", "optimizer",
                        "config" (JSON), "info" (JSON: provenance, data), "val" (JSON)}
RUN_DIR/metrics.jsonl   {"step", "loss", "lr", "steps_per_s"} per log interval, and
                        {"kind": "val", "step", "val_psnr_input", "val_psnr", "val_psnr_gain"}
                        (PSNR of the mean squared error over the val images)
RUN_DIR/config.json     the config and provenance, for people to read
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defocus_cli.device import resolve_device
from defocus_cli.errors import InputError, ProcessingError
from defocus_cli.io.datasets import read_manifest
from defocus_cli.io.images import load_map, read_image
from defocus_cli.models.sft import SFTDeblurNet, SFTNetConfig, parameter_count
from defocus_cli.pipelines import runfolder
from defocus_cli.pipelines.deblur_net import deblur_with_network
from defocus_cli.pipelines.train_data import augment

KIND = "sft-deblur"
CHECKPOINT_FORMAT = 1
#: the training losses (SFTTrainConfig.loss)
LOSSES = ("l1", "psnr")
#: crop_psnr_loss: the MSE floor, 1e-5 = 50 dB (8-bit rounding alone is ~59 dB): a crop already
#: near-perfect stops pulling, so a few clean sharp crops do not outweigh the batch
PSNR_MSE_FLOOR = 1e-5


@dataclass(frozen=True)
class SFTTrainConfig:
    """One training run of SFTDeblurNet; copied into every checkpoint and the exported metadata."""

    #: dataset folder (image/, sharp/, sigma/, manifest.jsonl)
    data: str
    #: folder of estimated maps NAME.defocus.npy for the same images (None: the true maps)
    maps: str | None = None
    #: with ``maps``: the share of crops conditioned on the estimated map, the others on the
    #: true one (1: the paper's stage 2; less keeps what stage 1 learnt from exact maps)
    maps_prob: float = 1.0
    net: SFTNetConfig = field(default_factory=SFTNetConfig)
    steps: int = 2000
    #: crops per step; 8 x 128 px is ~1 s a step on one CPU core for the default network
    batch: int = 8
    #: crop side, a multiple of the network's size multiple; 128 px holds ~3 receptive radii
    crop: int = 128
    #: Adam's initial rate; high for a small network trained for few steps, cosine-annealed
    lr: float = 5e-4
    #: the final rate as a fraction of lr
    lr_final: float = 0.02
    #: steps of linear warm-up (Adam's early moment estimates are noisy)
    warmup: int = 50
    #: largest std of the white noise added to the blurred input (0-1 scale); level uniform in [0, this]
    noise_max: float = 0.01
    #: probability that a training input is JPEG-compressed (after noise and 8-bit rounding)
    jpeg_prob: float = 0.5
    #: JPEG quality range for those inputs
    jpeg_quality: tuple[int, int] = (70, 95)
    #: px; on half the crops the conditioning map is raised by a smooth random field of up to
    #: this (a 3 x 3 grid of uniform draws, bilinear), as an estimator over-states small blur, so
    #: that the map alone cannot tell the network how much to sharpen (0: maps as they are;
    #: 1.5 px measured in weights/README.md: better real pairs, worse synthetic rows)
    map_over: float = 0.0
    #: probability that a training input is left clean (8-bit rounding only: no noise, no JPEG),
    #: as a low-ISO photo or a render is (0.3 measured in weights/README.md: no clear change)
    clean_prob: float = 0.0
    seed: int = 0
    log_every: int = 20
    val_every: int = 250
    #: val images (spread evenly over the val split's names), whole
    val_max: int = 16
    ckpt_every: int = 100
    #: start from these weights (a fresh optimiser), e.g. stage 2 from the stage-1 export
    init: str | None = None
    #: "l1" (Eq. 4, every pixel alike) or "psnr" (each crop's PSNR alike: a crop that is nearly
    #: sharp already weighs as much as a heavily blurred one, as in the benchmark's mean dB)
    loss: str = "l1"

    def __post_init__(self) -> None:
        m = self.net.size_multiple
        if self.crop < 2 * m or self.crop % m:
            raise InputError(f"--crop must be a multiple of {m} and >= {2 * m}, got {self.crop}")
        for name in ("steps", "batch", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.net.input != "photo":
            raise InputError(f"training a network on the {self.net.input!r} input is not implemented: "
                             "the data pipeline feeds the blurred photo (input 'photo')")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0 <= self.maps_prob <= 1:
            raise InputError(f"--maps-prob must be in [0, 1], got {self.maps_prob}")
        if not 0 <= self.jpeg_prob <= 1 or self.noise_max < 0:
            raise InputError(f"jpeg_prob must be in [0, 1] and noise_max >= 0, got {self.jpeg_prob}, {self.noise_max}")
        if self.map_over < 0:
            raise InputError(f"--map-over must be >= 0, got {self.map_over}")
        if not 0 <= self.clean_prob <= 1:
            raise InputError(f"--clean-prob must be in [0, 1], got {self.clean_prob}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SFTTrainConfig:
        d = dict(d)
        d["net"] = SFTNetConfig(**d["net"])
        d["jpeg_quality"] = tuple(d["jpeg_quality"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class PairSet:
    """The (blurred, sharp, true map, conditioning map) samples of one split of a dataset."""

    root: Path
    names: tuple[str, ...]
    maps: Path | None = None

    @classmethod
    def open(cls, root: str | Path, split: str, maps: str | Path | None = None) -> PairSet:
        root = Path(root)
        for sub in ("image", "sharp", "sigma"):
            if not (root / sub).is_dir():
                raise InputError(f"{root}: no {sub}/ folder; training the deblurring network needs a "
                                 "`defocus synth` dataset with image/, sharp/ and sigma/")
        names = tuple(sorted(e["name"] for e in read_manifest(root) if e["split"] == split))
        if not names:
            raise InputError(f"{root}: no sample in split {split!r}")
        pairs = cls(root, names, Path(maps) if maps else None)
        for name in names[:1] + names[-1:]:  # a cheap check; every file is checked when read
            for path in pairs.paths(name):
                if not path.is_file():
                    raise InputError(f"{path}: missing (listed in {root / 'manifest.jsonl'})")
        return pairs

    def paths(self, name: str) -> list[Path]:
        out = [self.root / "image" / f"{name}.png", self.root / "sharp" / f"{name}.png",
               self.root / "sigma" / f"{name}.npy"]
        if self.maps is not None:
            out.append(self.maps / f"{name}.defocus.npy")
        return out

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> blurred (H, W, 3), sharp (H, W, 3) float32 in [0, 1], true sigma (H, W) with NaN
        where unknown, conditioning sigma (H, W) (the true one, or the estimated one)."""
        paths = self.paths(self.names[i])
        blurred, sharp = read_image(paths[0]).pixels, read_image(paths[1]).pixels
        sigma = load_map(paths[2]).astype(np.float32)
        cond = load_map(paths[3]).astype(np.float32) if self.maps is not None else sigma
        for what, a in (("sharp", sharp), ("sigma", sigma), ("map", cond)):
            if a.shape[:2] != blurred.shape[:2]:
                raise InputError(f"{self.root}: {what} of {self.names[i]!r} is {a.shape[:2]}, "
                                 f"its image {blurred.shape[:2]}")
        return blurred, sharp, sigma, cond


def degrade(rgb: np.ndarray, rng: np.random.Generator, config: SFTTrainConfig) -> np.ndarray:
    """What a camera does after the blur: white noise, 8-bit rounding, maybe JPEG; or, for a
    share ``clean_prob`` of the inputs, 8-bit rounding only."""
    # drawn only when asked for, so runs without clean inputs keep the batches they always had
    if config.clean_prob > 0 and rng.uniform() < config.clean_prob:
        return np.round(np.clip(rgb, 0, 1) * 255).astype(np.float32) / 255.0
    noisy = rgb + rng.normal(0.0, rng.uniform(0.0, config.noise_max), rgb.shape).astype(np.float32)
    u8 = np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    if rng.uniform() < config.jpeg_prob:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ProcessingError("JPEG encoding of a training crop failed")
        u8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return u8.astype(np.float32) / 255.0


def over_statement(shape: tuple[int, ...], most: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth field in [0, most] px of ``shape`` (H, W): a 3 x 3 grid of uniform draws times one
    uniform scale, resized bilinearly."""
    grid = (rng.uniform() * most * rng.random((3, 3))).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def make_batch(pairs: PairSet, config: SFTTrainConfig, step: int) -> dict[str, torch.Tensor]:
    """The mini-batch of ``step``: a pure function of (config.seed, step).

    -> {"input": (B, 3, c, c), "target": (B, 3, c, c), "sigma": (B, 1, c, c) conditioning map
    (unknown = 0; with estimated maps, the true one for a share 1 - ``maps_prob`` of the crops;
    raised by ``over_statement`` on half the crops when ``map_over`` > 0),
    "valid": (B, 1, c, c) 1 where the true map is known}.
    """
    rng = np.random.default_rng([config.seed, step])
    out: dict[str, list[torch.Tensor]] = {"input": [], "target": [], "sigma": [], "valid": []}
    for i in rng.integers(0, len(pairs), size=config.batch):
        blurred, sharp, sigma, cond = pairs.load(int(i))
        # drawn only for a mix, so runs on one kind of map keep the batches they always had
        if pairs.maps is not None and config.maps_prob < 1 and rng.uniform() >= config.maps_prob:
            cond = sigma
        if config.map_over > 0 and rng.uniform() < 0.5:  # drawn only when asked for, as above
            cond = cond + over_statement(cond.shape, config.map_over, rng)
        blurred, sharp, sigma, cond = augment([blurred, sharp, sigma, cond], config.crop, rng,
                                              [0.0, 0.0, np.nan, np.nan])
        out["input"].append(_chw(degrade(blurred, rng, config)))
        out["target"].append(_chw(sharp))
        out["sigma"].append(torch.from_numpy(np.nan_to_num(cond, nan=0.0))[None])
        out["valid"].append(torch.from_numpy(np.isfinite(sigma).astype(np.float32))[None])
    return {k: torch.stack(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# one step, the schedule, validation


def learning_rate(config: SFTTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine from lr to lr * lr_final at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 4's L1, averaged over the pixels with a true label (and the 3 channels)."""
    return ((pred - target).abs() * valid).sum() / (3 * valid.sum()).clamp(min=1)


def crop_psnr_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Minus the mean over crops of each crop's PSNR (dB, peak 1) on its pixels with a true
    label, the MSE floored at ``PSNR_MSE_FLOOR``; crops without a labelled pixel are left out
    (0 when none has one). The gradient weighs a crop by 1 / its MSE."""
    known = valid.sum(dim=(1, 2, 3))
    mse = (((pred - target) ** 2) * valid).sum(dim=(1, 2, 3)) / (3 * known).clamp(min=1)
    psnr = -10.0 * torch.log10(mse + PSNR_MSE_FLOOR)
    keep = known > 0
    return -(psnr * keep).sum() / keep.sum().clamp(min=1)


def train_step(model: SFTDeblurNet, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               device: torch.device, loss_name: str = "l1") -> torch.Tensor:
    """One Adam step on one batch with the loss ``loss_name`` (LOSSES); returns the loss (on
    the device, not read back)."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    pred = model(b["input"], b["sigma"])
    loss = (crop_psnr_loss if loss_name == "psnr" else masked_l1)(pred, b["target"], b["valid"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def validate(model: SFTDeblurNet, pairs: PairSet, device: torch.device, limit: int) -> dict[str, float]:
    """PSNR (dB) of the input and of the output against the sharp render over ``limit`` val
    images spread evenly over the sorted names (so every kind of sample is seen), whole and
    undegraded, on the pixels with a true label. The PSNR is that of the mean squared error
    over the images (an in-focus image, identical to its sharp render, has an infinite PSNR of
    its own)."""
    model.eval()
    mse_in, mse_out = [], []
    for i in sorted(set(np.linspace(0, len(pairs) - 1, min(limit, len(pairs))).round().astype(int))):
        blurred, sharp, sigma, cond = pairs.load(int(i))
        restored = deblur_with_network(blurred, cond, model, device)
        known = np.isfinite(sigma)
        mse_in.append(float(np.mean((blurred[known] - sharp[known]) ** 2)))
        mse_out.append(float(np.mean((restored[known] - sharp[known]) ** 2)))
    model.train()
    p_in, p_out = (float(10 * np.log10(1 / max(np.mean(m), 1e-12))) for m in (mse_in, mse_out))
    return {"val_psnr_input": p_in, "val_psnr": p_out, "val_psnr_gain": p_out - p_in,
            "val_images": len(mse_in)}


# --------------------------------------------------------------------------------------------
# the run folder


def load_sft_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    return runfolder.load_checkpoint(run_dir, KIND, CHECKPOINT_FORMAT, "defocus train sft")


def load_sft_run_config(run_dir: str | Path) -> SFTTrainConfig:
    """The config a run was started with (from its checkpoint): resuming keeps its architecture."""
    return SFTTrainConfig.from_dict(json.loads(load_sft_checkpoint(run_dir)["config"]))


@dataclass
class SFTTrainResult:
    run_dir: Path
    step: int
    val: dict[str, float]
    parameters: int


def train_sft(config: SFTTrainConfig, run_dir: str | Path, *, resume: bool = False, device: str = "auto",
              provenance: dict[str, Any] | None = None,
              on_log: Callable[[dict[str, Any]], None] | None = None) -> SFTTrainResult:
    """Train (or, with ``resume``, continue) SFTDeblurNet into ``run_dir``.

    device: "auto" | "cpu" | "cuda[:N]"; training runs in fp32 (the network is small; autocast
    would buy little and complicate the zero-initialised residual). on_log(record) receives each
    metrics.jsonl record. The caller sets torch's thread count.
    """
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    train_set = PairSet.open(config.data, "train", config.maps)
    val_set = PairSet.open(config.data, "val", config.maps)
    torch.manual_seed(config.seed)
    model = SFTDeblurNet(config.net)
    if config.init:
        from defocus_cli.models.registry import SFT_ARCHITECTURE, load_model

        init, _ = load_model(config.init, "cpu", architecture=SFT_ARCHITECTURE)
        if init.config != config.net:
            raise InputError(f"--init {config.init}: its network {init.config} differs from {config.net}")
        model.load_state_dict(init.state_dict())
    model.to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    info = {"provenance": provenance or {}, "parameters": parameter_count(model),
            "data": {"path": config.data, "train": len(train_set), "val": len(val_set),
                     "maps": (f"estimated ({config.maps_prob:.0%} of crops; the rest true)" if config.maps
                              else "true")}}
    step, val = runfolder.begin(run_dir, (lambda: load_sft_checkpoint(run_dir)) if resume else None,
                                model, optimizer, config.to_dict(), info, provenance)

    def checkpoint(step: int, val: dict[str, Any]) -> None:
        runfolder.save_checkpoint(run_dir, runfolder.checkpoint_state(
            CHECKPOINT_FORMAT, KIND, step, model, optimizer, config.to_dict(), info, val))

    step, val = runfolder.run_steps(
        run_dir, optimizer, step=step, steps=config.steps, learning_rate=lambda s: learning_rate(config, s),
        train_step=lambda s: train_step(model, optimizer, make_batch(train_set, config, s), dev, config.loss),
        validate=lambda: validate(model, val_set, dev, config.val_max), checkpoint=checkpoint,
        log_every=config.log_every, val_every=config.val_every, ckpt_every=config.ckpt_every, val=val,
        on_log=on_log)
    return SFTTrainResult(run_dir, step, val, parameter_count(model))


# --------------------------------------------------------------------------------------------
# export


def export_sft_run(run_dir: str | Path, out: str | Path, *, command: str = "", git_revision: str = "",
                   root: str | Path | None = None) -> dict[str, Any]:
    """Write the run's network as shipped fp16 weights + JSON metadata (``registry.save_weights``,
    architecture "sft-deblur"). Paths in the metadata are relative to ``root`` (default: the
    current folder). Returns the metadata written."""
    from defocus_cli.models.registry import save_weights
    from defocus_cli.pipelines.train.export import portable_paths

    ckpt = load_sft_checkpoint(run_dir)
    config = SFTTrainConfig.from_dict(json.loads(ckpt["config"]))
    model = SFTDeblurNet(config.net)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    val = json.loads(ckpt["val"])
    if any(isinstance(v, float) and not math.isfinite(v) for v in val.values()):
        raise ProcessingError(f"{run_dir}: validation metrics are not finite; refusing to export")
    info = json.loads(ckpt["info"])
    meta = {
        "steps": int(ckpt["step"]),
        "parameters": parameter_count(model),
        "paper": "Ye et al., single-image defocus deblurring with defocus-map conditioned SFT (models/sft.py)",
        "data": info["data"],
        "train_config": config.to_dict(),
        "train_command": info["provenance"].get("command", ""),
        "train_git_revision": info["provenance"].get("git_revision", ""),
        "export_command": command,
        "git_revision": git_revision,
        "val_metrics": val,
    }
    if config.maps:
        meta["maps_estimator"] = maps_estimator(Path(config.maps))
    if config.init and Path(config.init).is_file():  # lineage: the weights this run started from
        from defocus_cli.models.registry import sha256_file

        meta["init_sha256"] = sha256_file(Path(config.init))
    return save_weights(model, Path(out), portable_paths(meta, Path(root) if root else Path.cwd()))


def maps_estimator(folder: Path) -> str | None:
    """The estimator named by the sidecars (NAME.defocus.json) of a folder of estimated maps, or
    None when they are absent or name different estimators."""
    from defocus_cli.maps import estimated_by

    names = {estimated_by(p) for p in sorted(folder.glob("*.defocus.npy"))[:50]}
    return names.pop() if len(names) == 1 else None
