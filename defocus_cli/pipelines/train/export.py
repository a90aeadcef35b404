"""A run's last checkpoint -> shipped weights (fp16 + JSON metadata, through the registry)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from defocus_cli.errors import ProcessingError
from defocus_cli.models.b import BlurNet, BlurNetConfig
from defocus_cli.pipelines.train.checkpoint import load_checkpoint
from defocus_cli.pipelines.train.config import TrainConfig

ARCHITECTURE = "dmenet-b"


def portable_paths(obj: Any, root: Path) -> Any:
    """``obj`` with every absolute path under ``root`` (or beside it) written relative to it.

    Training configs hold absolute paths so a run resumes from anywhere; shipped metadata must
    not carry the building machine's layout: ``/home/u/defocus/datasets/x`` becomes
    ``datasets/x`` and ``/home/u/shared/data`` ``../shared/data`` (in commands too).
    """
    root = root.resolve()
    if isinstance(obj, str):
        obj = obj.replace(f"{root}{os.sep}", "").replace(str(root), ".")
        return obj.replace(f"{root.parent}{os.sep}", f"..{os.sep}")
    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, root) for v in obj]
    return obj


def export_run(run_dir: str | Path, out: str | Path, *, command: str = "", git_revision: str = "",
               root: str | Path | None = None, average: bool = True) -> dict:
    """Write the run's network B as shipped fp16 weights + JSON metadata (registry.save_weights):
    the moving average of its weights when the run keeps one (``--ema``) and ``average``, else
    the last step's.

    Paths in the metadata are written relative to ``root`` (default: the current folder, the
    repository when run from it). Returns the metadata written.
    """
    from defocus_cli.models.registry import save_weights

    ckpt = load_checkpoint(run_dir)
    config = TrainConfig.from_dict(json.loads(ckpt["config"]))
    info = json.loads(ckpt["info"])
    b = BlurNet(BlurNetConfig(width=config.width, sigma_max=config.sigma_max))
    averaged = average and ckpt.get("B_ema") is not None
    b.load_state_dict(ckpt["B_ema"]["weights"] if averaged else ckpt["B"], strict=True)
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
        "weights": (f"exponential moving average of the training weights (decay {config.ema})"
                    if averaged else "the last step's weights"),
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
    return save_weights(b, Path(out), portable_paths(meta, Path(root) if root else Path.cwd()))
