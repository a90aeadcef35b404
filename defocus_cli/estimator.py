"""A defocus estimator ready to run: weights loaded once, device and precision chosen once.

    from defocus_cli import load_estimator, read_image

    est = load_estimator()                     # shipped weights, device "auto", precision "auto"
    sigma = est.estimate(read_image("photo.jpg").pixels).sigma   # (H, W) float32 px

Out of memory on an accelerator is not fatal to a photo: the network is run again in smaller
tiles (down to MIN_OOM_TILE px) before the photo fails with a ProcessingError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defocus_cli.errors import ProcessingError
from defocus_cli.models import DEFAULT_MODEL

if TYPE_CHECKING:
    import numpy as np

    from defocus_cli.pipelines.estimate import EstimateResult

#: px; the smallest tile the network is retried with after running out of accelerator memory
MIN_OOM_TILE = 256


@dataclass
class Estimator:
    """A loaded network with where and how it runs."""

    model: Any  # defocus_cli.models.b.BlurNet, in eval mode on ``device``
    meta: dict[str, Any]
    device: Any  # torch.device
    dtype: Any  # torch.dtype for autocast, or None for fp32

    def get(self) -> "Estimator":
        """The estimator itself (the same call as LazyEstimator.get, so either can be passed)."""
        return self

    def describe(self) -> dict[str, Any]:
        """What made a map: name, sha256, architecture, width, sigma_max, device, precision."""
        from defocus_cli.device import precision_name

        cfg = self.meta.get("config", {})
        return {"name": self.meta.get("name"), "sha256": self.meta.get("sha256"),
                "architecture": self.meta.get("architecture"), "width": cfg.get("width"),
                "sigma_max": self.meta.get("sigma_max"), "device": str(self.device),
                "precision": precision_name(self.dtype)}

    def estimate(self, rgb: "np.ndarray", working_size: int | None = None,
                 refine: bool = True) -> "EstimateResult":
        """The defocus map of an (H, W, 3) float32 RGB photo in [0, 1].

        working_size: long side (px) the network sees (None: DEFAULT_WORKING_SIZE; 0: the
        photo's own size). Returns pipelines.estimate.EstimateResult (sigma (H, W) float32, px
        of the photo). Raises ProcessingError when even MIN_OOM_TILE px tiles do not fit.
        """
        import torch

        from defocus_cli.pipelines.estimate import DEFAULT_WORKING_SIZE, EstimateConfig, estimate_defocus

        ws = DEFAULT_WORKING_SIZE if working_size is None else working_size
        config = EstimateConfig(working_size=ws or None, refine=refine)
        while True:
            try:
                return estimate_defocus(rgb, self.model, self.meta, config, self.dtype)
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if config.tile // 2 < MIN_OOM_TILE:
                    raise ProcessingError(
                        f"out of {self.device.type.upper()} memory even in {config.tile} px tiles "
                        "(try a smaller --working-size or --device cpu)") from None
                tile = config.tile // 2
                config = EstimateConfig(working_size=config.working_size, refine=refine, tile=tile,
                                        tile_overlap=min(config.tile_overlap, tile // 4))


@dataclass
class EdgeEstimator:
    """Paper 002's edge-based estimator ("edge"), or its fusion with network B ("fused").

    ``base`` (network B) makes the fused map's shape, and the map of photos with too few edges.
    The edge networks run at their own working size (``config.working_size``); the
    ``working_size`` of ``estimate`` is network B's (0: both at the photo's own size).
    """

    nets: Any  # defocus_cli.models.edge.EdgeNets, eval mode, on ``device``
    meta: dict[str, Any]
    base: Estimator
    config: Any  # defocus_cli.pipelines.edge_estimate.EdgeConfig
    name: str

    @property
    def device(self) -> Any:
        return self.base.device

    @property
    def dtype(self) -> Any:
        return self.base.dtype

    def get(self) -> "EdgeEstimator":
        return self

    def describe(self) -> dict[str, Any]:
        from defocus_cli.device import precision_name

        return {"name": self.name, "sha256": self.meta.get("sha256"), "architecture": "edge-nets",
                "fusion": self.config.fusion, "edge_working_size": self.config.working_size,
                "full_res_points": self.config.fine_points, "base": self.base.describe(),
                "device": str(self.device),
                "precision": precision_name(self.dtype)}

    def estimate(self, rgb: "np.ndarray", working_size: int | None = None,
                 refine: bool = True) -> "EstimateResult":
        """The map of an (H, W, 3) float32 RGB photo in [0, 1] (see the class docstring)."""
        from concurrent.futures import ThreadPoolExecutor
        from dataclasses import replace

        from defocus_cli.pipelines.edge_estimate import estimate_edges

        config = self.config if working_size != 0 else replace(self.config, working_size=0)

        def fallback() -> "EstimateResult":
            return self.base.estimate(rgb, working_size, refine)

        if config.fusion == "edge":
            return estimate_edges(rgb, self.nets, config, self.dtype, refine, fallback=fallback)
        if config.fusion != "blend":
            return estimate_edges(rgb, self.nets, config, self.dtype, refine, fallback=fallback,
                                  base=fallback())
        # in the blend, network B's share is smooth next to the guided edge map: its own guided
        # up-sampling (0.5 s at 12 MP) would change little, so it is up-sampled bilinearly. B runs
        # in a second thread while the edge networks run (estimate_edges asks for it after them):
        # the narrow convolutions of both are memory-bound, and side by side the two took 1.43 s
        # where one after the other took 1.68 s (medians of 10, 12 MP, 2 cores). A photo that
        # falls back to network B gets B's refined map.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="defocus-base") as pool:
            pending = pool.submit(self.base.estimate, rgb, working_size, False)
            result = estimate_edges(rgb, self.nets, config, self.dtype, refine, fallback=pending.result)
        if "fallback" in result.info and refine:
            refined = fallback()
            result.sigma, result.timings = refined.sigma, {**result.timings, **refined.timings}
        return result


def _weights_architecture(path: Path) -> str | None:
    import json

    try:
        return json.loads(path.with_suffix(".json").read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None


def load_estimator(model: str = DEFAULT_MODEL, weights: str | Path | None = None, device: str = "auto",
                   precision: str = "auto") -> "Estimator | EdgeEstimator":
    """Choose the device and precision, load and verify the weights.

    model: a registry name (``defocus_cli.models.registry.REGISTRY``) or a composite estimator
    (``models.COMPOSITE_ESTIMATORS``: "edge", "fused"); weights: a ``.pt`` file with its
    ``.json`` instead (network B, or edge networks: then the "fused" estimator). device: auto |
    cpu | cuda | cuda:N; precision: auto | fp32 | bf16 | fp16 (auto: bf16 on GPUs and AMX CPUs,
    fp32 elsewhere). Raises WeightsError, DeviceError or InputError.
    """
    from defocus_cli.models import BASE_MODEL, COMPOSITE_ESTIMATORS
    from defocus_cli.models.registry import EDGE_ARCHITECTURE, resolve_weights

    edge_source, fusion = None, None
    if weights is not None:
        if _weights_architecture(resolve_weights(weights)) == EDGE_ARCHITECTURE:
            edge_source, fusion = weights, COMPOSITE_ESTIMATORS["fused"][1]
    elif model in COMPOSITE_ESTIMATORS:
        edge_source, fusion = COMPOSITE_ESTIMATORS[model]
    if edge_source is not None:
        from defocus_cli.models.registry import load_model
        from defocus_cli.pipelines.edge_estimate import EdgeConfig

        base = load_estimator(BASE_MODEL, None, device, precision)
        nets, meta = load_model(edge_source, base.device, architecture=EDGE_ARCHITECTURE)
        name = model if weights is None else Path(str(weights)).stem
        return EdgeEstimator(nets, meta, base, EdgeConfig(**{**meta.get("estimator", {}), "fusion": fusion}), name)
    return _load_network_b(model, weights, device, precision)


def load_variant(spec: str, device: str = "auto") -> Any:
    """A registry estimator with settings of its edge map changed: "MODEL[:field=value,...]",
    e.g. "fused:fine_points=0" (fields of ``pipelines.edge_estimate.EdgeConfig``; benchmarks and
    figures compare settings with it); MODEL may be a weights file (``.pt``) instead of a name.
    Raises ValueError for an unknown field or a bad value."""
    from dataclasses import fields, replace

    model, _, overrides = spec.partition(":")
    if model.endswith(".pt"):
        est = load_estimator(weights=model, device=device)
    else:
        est = load_estimator(model, device=device)
    if not overrides:
        return est
    if not isinstance(est, EdgeEstimator):
        raise ValueError(f"{spec}: only the edge-based estimators have settings to change")
    types = {f.name: f.type for f in fields(est.config)}
    values: dict[str, Any] = {}
    for item in overrides.split(","):
        key, _, value = item.partition("=")
        if key not in types:
            raise ValueError(f"{spec}: {key!r} is not an EdgeConfig field")
        values[key] = {"int": int, "float": float}.get(types[key], str)(value)
    est.config = replace(est.config, **values)
    return est


def _load_network_b(model: str, weights: str | Path | None, device: str, precision: str) -> Estimator:
    import torch

    from defocus_cli.device import resolve_device, resolve_precision
    from defocus_cli.models.b import fuse_for_inference
    from defocus_cli.models.registry import load_model

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    net, meta = load_model(weights if weights is not None else model, dev)
    # BN folded into the convolutions and NHWC layout: both measured faster for inference
    # (benchmarks/README.md); the outputs are the same to float rounding
    net = fuse_for_inference(net, inplace=True).to(memory_format=torch.channels_last)
    return Estimator(net, meta, dev, dtype)


class LazyEstimator:
    """Loads the network on first ``get()``, so work given maps for every photo never loads it."""

    def __init__(self, model: str = DEFAULT_MODEL, weights: str | Path | None = None,
                 device: str = "auto", precision: str = "auto") -> None:
        self._args = (model, weights, device, precision)
        self._estimator: Estimator | None = None

    def get(self) -> Estimator:
        if self._estimator is None:
            self._estimator = load_estimator(*self._args)
        return self._estimator

    @property
    def loaded(self) -> bool:
        return self._estimator is not None
