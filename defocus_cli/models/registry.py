"""Named weights and their metadata; saving and safe loading.

A weights file is an fp16 state dict ``NAME.pt`` beside a JSON sidecar ``NAME.json`` that carries
what must travel with the weights: the architecture and its config (width, sigma_max), the input
convention, the sha256 of the ``.pt`` file, and how the weights were made (data, command, metrics).

Three architectures: "dmenet-b" (network B, the defocus map estimator; ``load_model``'s
default), "sft-deblur" (``models.sft.SFTDeblurNet``, map-conditioned deblurring) and "edge-nets"
(``models.edge.EdgeNets``, B-NET and E-NET of the edge-based estimator). A caller names the one
it expects, and a file of another kind is a WeightsError that says so.

Shipped weights live in the repository's ``weights/`` folder, installed as the package
``defocus_cli.weights``; the environment variable ``DEFOCUS_WEIGHTS_DIR`` points elsewhere.
Loading checks the sha256, reads the file with ``io.torchfiles.load_torch_file`` (torch.load with
``weights_only=True``) and loads it with ``strict=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from defocus_cli import __version__
from defocus_cli.errors import WeightsError
from defocus_cli.io.images import save_json
from defocus_cli.io.torchfiles import load_torch_file, save_torch_file
from defocus_cli.models.b import IMAGENET_MEAN, IMAGENET_STD, SIZE_MULTIPLE, BlurNet, BlurNetConfig
from defocus_cli.models.edge import EdgeNetConfig, EdgeNets
from defocus_cli.models.sft import SFTDeblurNet, SFTNetConfig

ARCHITECTURE = "dmenet-b"
SFT_ARCHITECTURE = "sft-deblur"
EDGE_ARCHITECTURE = "edge-nets"
#: architecture name -> (network class, its config class)
ARCHITECTURES: dict[str, tuple[type[torch.nn.Module], type]] = {
    ARCHITECTURE: (BlurNet, BlurNetConfig),
    SFT_ARCHITECTURE: (SFTDeblurNet, SFTNetConfig),
    EDGE_ARCHITECTURE: (EdgeNets, EdgeNetConfig),
}
#: registry name -> file name in the weights folder. The JSON beside each file is its metadata.
#: DEFAULT_MODEL (defocus_cli.models) names the estimator used when none is asked for;
#: DEBLUR_MODEL the deblurring network of `defocus deblur --method network`.
REGISTRY = {
    "dmenet-lite": "dmenet-lite.pt",
    "dmenet": "dmenet.pt",
    "sft-deblur": "sft-deblur.pt",
    "edge": "edge.pt",
}
DEBLUR_MODEL = "sft-deblur"


def weights_dir() -> Path:
    """Where named weights are looked up: $DEFOCUS_WEIGHTS_DIR, else the shipped folder."""
    env = os.environ.get("DEFOCUS_WEIGHTS_DIR")
    if env:
        return Path(env)
    try:
        from importlib.resources import files

        return Path(str(files("defocus_cli.weights")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "weights"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(name_or_path: str | Path) -> Path:
    """A registry name or a path to a ``.pt`` file -> the ``.pt`` path (which must exist)."""
    p = Path(name_or_path)
    if p.suffix == ".pt" or p.exists() or os.sep in str(name_or_path):
        if not p.is_file():
            raise WeightsError(f"{p}: weights file not found")
        return p
    if str(name_or_path) not in REGISTRY:
        raise WeightsError(f"unknown model {name_or_path!r}: known names are "
                           f"{', '.join(REGISTRY)}, or pass --weights FILE.pt")
    path = weights_dir() / REGISTRY[str(name_or_path)]
    if not path.is_file():
        raise WeightsError(f"model {name_or_path!r}: {path} is missing (set DEFOCUS_WEIGHTS_DIR "
                           f"or pass --weights FILE.pt)")
    return path


def read_metadata(pt_path: Path, architecture: str = ARCHITECTURE) -> dict[str, Any]:
    """The JSON sidecar of ``pt_path``, checked to describe weights of ``architecture``."""
    meta_path = pt_path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{pt_path}: its metadata file {meta_path.name} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{meta_path}: unreadable metadata ({e})") from None
    for key in ("architecture", "config", "sha256"):
        if key not in meta:
            raise WeightsError(f"{meta_path}: metadata lacks {key!r}")
    if meta["architecture"] != architecture:
        kind = {ARCHITECTURE: "a defocus map estimator", SFT_ARCHITECTURE: "a deblurring network",
                EDGE_ARCHITECTURE: "the edge networks of the edge-based estimator"}
        raise WeightsError(f"{meta_path}: architecture {meta['architecture']!r} is not {architecture!r} "
                           f"({kind.get(meta['architecture'], 'unknown')}, where {kind[architecture]} "
                           f"is needed)")
    return meta


def _io_fields(model: torch.nn.Module) -> dict[str, Any]:
    """The metadata that says how to feed the network and read its output."""
    if isinstance(model, EdgeNets):
        cfg = model.config
        return {
            "input": {"image": "RGB in [0, 1]; patch form (N, 3, 41, 41) or dense form (1, 3, H, W)"},
            "output": {"blur": f"logits over sigma levels 0, {cfg.sigma_step}, ..., {cfg.sigma_max} px "
                               "(Gaussian sigma of the input; expectation of the softmax)",
                       "edge": "logits (pattern edge, depth edge)"},
        }
    if isinstance(model, SFTDeblurNet):
        cfg = model.config
        return {
            "input": {"image": f"RGB in [0, 1] ({'the photo' if cfg.input == 'photo' else 'the layered solver output'})",
                      "map": "Gaussian sigma in px of the image, >= 0 (unknown filled with 0)",
                      "size_multiple": cfg.size_multiple, "note": "padded by reflection inside the network"},
            "output": "RGB: the input image plus the predicted residual; clip to [0, 1]",
        }
    return {
        "input": {"range": "RGB in [0, 1]", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "size_multiple": SIZE_MULTIPLE, "note": "normalisation is applied inside the network"},
        "output": "sigma / sigma_max (sigmoid); sigma = Gaussian blur std in px of the network's input",
    }


def _architecture_of(model: torch.nn.Module) -> str:
    for name, (cls, _) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"save_weights: no registered architecture for {type(model).__name__}")


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model`` as an fp16 state dict to ``path`` (.pt) and its metadata to ``path``.json.

    ``meta`` adds to (and may override nothing of) the architecture fields written here: pass
    training data, command, metrics. Returns the full metadata written. Both writes are atomic.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"weights path must end in .pt, got {path}")
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    save_torch_file(state, path)
    full = dict(meta or {})
    full.update({
        "architecture": _architecture_of(model),
        "config": model.config.to_dict(),
        "sigma_max": model.config.sigma_max,
        **_io_fields(model),
        "format": "fp16 state dict, torch.save",
        "sha256": sha256_file(path),
        "defocus_version": full.get("defocus_version", __version__),
    })
    save_json(path.with_suffix(".json"), full)
    return full


def load_model(name_or_path: str | Path, device: torch.device | str = "cpu",
               architecture: str = ARCHITECTURE) -> tuple[Any, dict[str, Any]]:
    """Load named or file weights -> (network in eval mode on ``device``, fp32; metadata).

    architecture: what the caller expects: "dmenet-b" (a BlurNet, the default) or "sft-deblur"
    (an SFTDeblurNet).

    Raises WeightsError for a missing, corrupt (sha256 mismatch, unreadable) or incompatible file.
    """
    path = resolve_weights(name_or_path)
    meta = read_metadata(path, architecture)
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise WeightsError(f"{path}: sha256 {digest[:12]}... does not match its metadata "
                           f"({meta['sha256'][:12]}...): the file is corrupt or was replaced")
    state = load_torch_file(path, "weights")
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    network, config_class = ARCHITECTURES[architecture]
    try:
        model = network(config_class(**meta["config"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: metadata config {meta['config']} is invalid ({e})") from None
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit architecture {meta['config']} "
                           f"({str(e).splitlines()[0]})") from None
    model.eval().to(device)
    meta = dict(meta, name=str(name_or_path) if str(name_or_path) in REGISTRY else path.stem,
                path=str(path))
    return model, meta
