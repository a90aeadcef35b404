"""One training step of DMENet: the objectives (paper Eq. 3 and 4) and the alternating update.

``Trainer.step`` runs G = B (+ S) on L_g, then D on L_d from features computed in the G step,
and returns the loss terms as tensors on the device: it never reads a value back to the host,
so a GPU runs ahead of Python. The loop reads the terms once per log interval.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from defocus_cli.device import autocast, resolve_precision
from defocus_cli.errors import WeightsError
from defocus_cli.models.b import BlurNet, BlurNetConfig
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
from defocus_cli.pipelines.train.config import Dist, TrainConfig


def training_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training's forward passes (None = fp32), as device.py resolves it.

    One exception: where device.py's ``auto`` gives fp16 (a CUDA device without bf16), training
    runs in fp32. fp16 gradients underflow without loss scaling, and a GradScaler reads a
    found-inf flag back from the device at every step.
    """
    dtype = resolve_precision(precision, device)
    return None if dtype is torch.float16 else dtype


def freeze_batchnorm(b: BlurNet) -> None:
    """Put B's BatchNorm layers in eval mode (running statistics, not the batch's).

    With batches of a few small crops, batch statistics act almost per image: B's encoder has
    no normalisation, so its activations' means vary by hundreds between photos, and each
    batch removes its own. At inference the running averages cannot, and a network trained
    only with batch statistics comes out biased (weights/README.md, "Why --bn frozen", has the
    measurements). Frozen statistics make training see what inference sees; the BN scale and
    shift stay trainable.
    """
    for m in b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


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
        if "real" in batch and (d is not None or "real_target" in batch):
            out_r = self.b(batch["real"])
            if "real_target" in batch:
                terms["L_T"] = blur_map_loss(out_r.sigma, out_r.aux, batch["real_target"], w.aux)
            if d is not None:
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
                                           l_adv_masked=terms.get("L_adv_B"), l_s=terms.get("L_S"),
                                           l_t=terms.get("L_T"))
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


class WeightAverage:
    """An exponential moving average of a network's weights (Polyak averaging).

    After each update: avg <- d * avg + (1 - d) * current, with d = min(decay, (1 + n) / (10 + n))
    after n updates, so a run from random weights is not dominated by them. Buffers (BatchNorm
    statistics) are copied, not averaged. ``module`` is the averaged network, ready for eval.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(net).requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(net.parameters()), 1.0 - d)
        for mine, theirs in zip(self.module.buffers(), net.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


class Trainer:
    """The networks, their optimisers and schedulers, and one alternating update.

    ``b``, ``s``, ``d`` are the bare modules (what checkpoints hold); with a process group the
    G and D objectives run through DistributedDataParallel wrappers.
    """

    def __init__(self, config: TrainConfig, active: str, spe: int, device: torch.device,
                 dist_ctx: Dist, c: nn.Module | None = None, b: BlurNet | None = None) -> None:
        self.config, self.active, self.device, self.dist = config, active, device, dist_ctx
        self.dtype = training_dtype(config.precision, device)
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
        self.ema = WeightAverage(self.b, config.ema) if config.ema > 0 else None
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

    def g_step(self, batch: dict[str, torch.Tensor], pretraining: bool = False):
        """One update of B (+ S) on L_g. Returns (detached loss terms, detached features for D)."""
        self.b.train()
        if self.config.bn == "frozen":
            freeze_batchnorm(self.b)
        if self.s is not None:
            self.s.train()
        d = None if pretraining else self.d
        if self.d is not None:
            self.d.requires_grad_(False)
        with autocast(self.device, self.dtype):
            terms, feats = self.g_run(batch, d, not pretraining)
        self.opt_g.zero_grad(set_to_none=True)
        terms["L_g"].backward()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.b)
        return {k: v.detach() for k, v in terms.items()}, feats

    def d_step(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of D on L_d from features computed in the G step. Returns the detached terms."""
        if self.d is None or len(feats) < 2:
            return {}
        self.d.requires_grad_(True)
        self.d.train()
        with autocast(self.device, self.dtype):
            terms = self.d_run(feats)
        self.opt_d.zero_grad(set_to_none=True)
        terms["L_d"].backward()
        self.opt_d.step()
        return {k: v.detach() for k, v in terms.items()}

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        """The alternating update of step ``step``: G then D; schedulers advance once.

        Returns the loss terms as 0-dim tensors on the device (not read back here) and "lr",
        the learning rate this step used.
        """
        batch = self._to_device(batch)
        pretraining = step < self.config.pretrain_steps
        terms, feats = self.g_step(batch, pretraining)
        d_terms = {} if pretraining else self.d_step(feats)
        terms.update(d_terms)
        terms["lr"] = self.opt_g.param_groups[0]["lr"]
        self.sched_g.step()
        if d_terms:
            self.sched_d.step()
        return terms

    @property
    def b_eval(self) -> BlurNet:
        """The network B that validation and export use: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.b

    def state_dict(self) -> dict:
        def sd(x):
            return None if x is None else x.state_dict()

        return {"B": sd(self.b), "S": sd(self.s), "D": sd(self.d), "opt_G": sd(self.opt_g),
                "opt_D": sd(self.opt_d), "sched_G": sd(self.sched_g), "sched_D": sd(self.sched_d),
                "B_ema": sd(self.ema)}

    def load_state_dict(self, state: dict) -> None:
        for key, target in (("B", self.b), ("S", self.s), ("D", self.d), ("opt_G", self.opt_g),
                            ("opt_D", self.opt_d), ("sched_G", self.sched_g), ("sched_D", self.sched_d),
                            ("B_ema", self.ema)):
            if target is not None:
                if state.get(key) is None:
                    raise WeightsError(f"checkpoint has no {key} state; it was made with other --nets or --ema")
                target.load_state_dict(state[key])
