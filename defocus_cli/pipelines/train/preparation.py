"""What runs before the first step: open the data sets, decide which networks can train, build B.

Nothing here touches a device; B is built on the CPU and the Trainer moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defocus_cli.errors import InputError
from defocus_cli.models.b import BlurNet, BlurNetConfig, load_vgg19_encoder
from defocus_cli.pipelines.train.config import TrainConfig, resolve_nets
from defocus_cli.pipelines.train_data import (
    SynthSet,
    masked_photos,
    read_exclusions,
    real_photo_maps,
    real_photos,
)

#: full training images over which --bn frozen re-estimates the BatchNorm statistics
BN_RECALIBRATION_IMAGES = 96


@dataclass
class Prepared:
    train: SynthSet
    val: SynthSet
    real: list[Path]
    masked: list[tuple[Path, Path]]
    active: str  # the networks that train, e.g. "BD"
    content: nn.Module | None  # network C, when it can run
    provenance: dict
    notes: list[str]  # what could not be done as asked, for the user and the weights' metadata
    real_maps: list[Path] | None = None  # pseudo-labels of ``real``, in its order (--real-maps)


def prepare(config: TrainConfig) -> Prepared:
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
    real_maps = real_photo_maps(config.real_maps, real) if config.real_maps else None
    masked = masked_photos(config.real_masks, real, exclude) if config.real_masks else []
    if config.real_masks and not masked:
        raise InputError(f"{config.real_masks}: no photo/mask pairs found (masks must be named like the photos)")
    vgg_sd = load_vgg19_state_dict(config.vgg_weights) if config.vgg_weights else None
    active, net_notes = resolve_nets(config, bool(real), bool(masked), vgg_sd is not None)
    notes += net_notes
    random_note = None  # said only when B does not start from --init weights
    if vgg_sd is None:
        encoder_init = "Kaiming-normal random init (no ImageNet VGG19 weights were given)"
        random_note = ("encoder initialised randomly (Kaiming): pass --vgg-weights (torchvision's vgg19 "
                       "state dict, or ../shared/models/vgg19_normalised_to_conv3_1.pth) for the "
                       "paper's ImageNet initialisation")
    elif config.width != 1.0:
        encoder_init = f"Kaiming-normal random init (ImageNet VGG19 does not fit width {config.width})"
        random_note = f"VGG19 weights fit only width 1.0: the width-{config.width} encoder starts random"
    else:
        reach = "conv1_1-conv3_1" if "features.12.weight" not in vgg_sd else "all"
        encoder_init = f"ImageNet VGG19 ({Path(config.vgg_weights).name}; {reach} of its convolutions)"
    if config.init_weights:
        encoder_init = f"all of B from {config.init_weights}"
    elif random_note:
        notes.append(random_note)
    content = ContentNet(vgg_sd) if "C" in active else None
    content_desc = (f"VGG19 {content.layer} ({Path(config.vgg_weights).name})" if content is not None
                    else "none: L_C dropped" + ("" if "C" in config.nets else " (not requested)"))
    provenance = {
        "nets_requested": config.nets, "nets_trained": active,
        "encoder_init": encoder_init, "content_network": content_desc,
        "data": {"synthetic": train_set.description(), "real": config.real, "real_photos": len(real),
                 "real_masks": config.real_masks, "masked_photos": len(masked),
                 "excluded_names": sorted(exclude)},
    }
    if real_maps:
        from defocus_cli.maps import estimated_by

        provenance["data"]["real_maps"] = {"folder": config.real_maps, "maps": len(real_maps),
                                           "estimated_by": estimated_by(real_maps[0])}
    return Prepared(train_set, val_set, real, masked, active, content, provenance, notes, real_maps)


def init_b(config: TrainConfig) -> BlurNet:
    """A new network B on the CPU: from --init weights, else seeded (Kaiming) with VGG19's encoder
    where --vgg-weights fits its width."""
    torch.manual_seed(config.seed)
    b = BlurNet(BlurNetConfig(width=config.width, sigma_max=config.sigma_max))
    if config.init_weights:
        from defocus_cli.models.registry import load_model

        model, _ = load_model(config.init_weights, torch.device("cpu"))
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
