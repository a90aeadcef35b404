"""Measure a defocus estimator on a dataset folder (the paper's protocol, Sec. 5.3).

A dataset folder is the team's format (``synth`` output, or ``eval prepare-dfd`` output)::

    DATASET/image/NAME.png       the photo the estimator sees
    DATASET/sigma/NAME.npy       optional: ground-truth Gaussian sigma, px; NaN = no label
    DATASET/radius/NAME.npy      optional (RTF-style): ground-truth disk-PSF radius, px; turned
                                 into sigma with the RTF sigma <-> radius table (needs the table)
    DATASET/mask/NAME.png        optional: 255 blurred, 0 sharp, 128 unknown (CUHK-style)
    DATASET/sharp/NAME.png       optional: sharp reference of a deblurring pair
    DATASET/manifest.jsonl       name, split per sample (+ optional sharp_valid box x0 y0 x1 y1)

Per image: sigma errors (MSE / MAE of sigma / sigma_norm, MAE px, Spearman) where there is a sigma
label; blur-mask accuracy at Park's threshold and average precision where there is a mask (a
pixel whose sigma label is NaN is left out of the mask too); for deblurring pairs, PSNR / SSIM of
the input and of the deblurred photo against the sharp one, inside the pair's valid box.

The estimator is a callable rgb -> sigma so this module never loads a model; the CLI builds it
(at the image's own resolution by default: a working resolution below the image's would rescale
sigma, and the labels are in px of the image).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from defocus_cli.errors import DefocusError, InputError
from defocus_cli.io.datasets import MANIFEST, has_manifest, read_manifest, read_mask
from defocus_cli.io.images import IMAGE_SUFFIXES, load_map, read_image
from defocus_cli.ops import metrics as M
from defocus_cli.ops.masks import mask_labels

SPLIT_ALL = "all"
#: per-image figures averaged into the report's "mean" (np.nanmean over images)
MEAN_KEYS = ("mse", "mae", "mae_px", "rmse_px", "bias_px", "spearman", "accuracy", "ap",
             "psnr_input", "psnr_deblurred", "psnr_gain", "ssim_input", "ssim_deblurred", "ssim_gain",
             "seconds")


@dataclass(frozen=True)
class EvalConfig:
    """What to measure.

    split: manifest split to evaluate ("train" | "val" | "test"), or "all".
    sigma_norm: px; errors are also reported of sigma / sigma_norm (paper: 7 SYNDOF, 3.275 RTF).
    park_alpha: binarisation weight of tau = a v_max + (1 - a) v_min for mask accuracy.
    pr_thresholds: points of the precision-recall curve (tau from v_min to v_max).
    ssim_mode: "luminance" or "rgb" (see ops.metrics.ssim).
    limit: evaluate only the first N samples of the split (sorted by name); None = all.
    """

    split: str = "test"
    sigma_norm: float = M.SIGMA_NORM_SYNDOF
    park_alpha: float = M.PARK_ALPHA
    pr_thresholds: int = 101
    ssim_mode: str = "luminance"
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.sigma_norm > 0:
            raise ValueError(f"sigma_norm must be > 0, got {self.sigma_norm}")
        if not 0 <= self.park_alpha <= 1:
            raise ValueError(f"park_alpha must be in [0, 1], got {self.park_alpha}")
        if self.pr_thresholds < 2:
            raise ValueError(f"pr_thresholds must be >= 2, got {self.pr_thresholds}")
        if self.ssim_mode not in ("luminance", "rgb"):
            raise ValueError(f"ssim_mode must be 'luminance' or 'rgb', got {self.ssim_mode!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class Sample:
    """One dataset entry; label paths are None where the dataset has no such label."""

    name: str
    split: str
    image: Path
    sigma: Path | None = None
    radius: Path | None = None
    mask: Path | None = None
    sharp: Path | None = None
    sharp_valid: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (end-exclusive)


@dataclass
class EvalReport:
    """images: one dict of figures per image; mean: np.nanmean of each over images; pr_curve:
    the mean over images of the per-image curves (tau at the same relative position)."""

    dataset: Path
    split: str
    config: dict[str, Any]
    images: list[dict[str, Any]]
    mean: dict[str, float]
    pr_curve: dict[str, list[float]] | None
    failures: list[tuple[str, str]] = field(default_factory=list)
    dataset_json: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data; NaN / inf figures become None (strict JSON has no NaN)."""
        return _json_safe({"dataset": str(self.dataset), "split": self.split, "config": self.config,
                           "dataset_json": self.dataset_json, "n_images": len(self.images),
                           "mean": self.mean, "pr_curve": self.pr_curve, "images": self.images,
                           "failures": [{"name": n, "error": e} for n, e in self.failures]})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------------------------
# reading a dataset folder


def read_sigma_radius_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The RTF sigma <-> disk radius table: a CSV with a header row and columns
    gaussian_sigma_px, disk_radius_px (e.g. ../shared/data/tables/rtf_sigma_to_disk_radius.csv)."""
    path = Path(path)
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable sigma/radius CSV table ({e}); expected a header "
                         "row and two numeric columns gaussian_sigma_px, disk_radius_px") from None
    if data.shape[1] != 2 or data.shape[0] < 2:
        raise InputError(f"{path}: expected two columns (gaussian_sigma_px, disk_radius_px) and >= 2 rows, "
                         f"got shape {data.shape}")
    try:
        M.sigma_to_disk_radius(0.0, data[:, 0], data[:, 1])  # validates monotonicity
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    return data[:, 0], data[:, 1]


def _first_existing(folder: Path, name: str, suffixes: tuple[str, ...]) -> Path | None:
    for s in suffixes:
        p = folder / f"{name}{s}"
        if p.is_file():
            return p
    return None


def list_samples(root: str | Path, split: str = "test") -> list[Sample]:
    """The samples of one split of a dataset folder, sorted by name.

    With manifest.jsonl, its entries of ``split`` ("all": every entry); without one, every photo
    in image/ (split "all" only). Raises InputError for a folder that is not a dataset or a split
    with no sample.
    """
    root = Path(root)
    if not (root / "image").is_dir():
        raise InputError(f"{root}: not a dataset folder (no image/ subfolder); expected image/ with "
                         "sigma/, mask/ or sharp/ beside it (made by `defocus synth` or "
                         "`defocus eval prepare-dfd`)")
    entries: list[dict] = []
    if has_manifest(root):
        entries = read_manifest(root, require=("name",))
        if split != SPLIT_ALL:
            available = sorted({str(e.get("split")) for e in entries})
            entries = [e for e in entries if e.get("split") == split]
            if not entries:
                raise InputError(f"{root / MANIFEST}: no sample in split {split!r} (splits here: "
                                 f"{', '.join(available)}; or use --split all)")
    else:
        if split != SPLIT_ALL:
            raise InputError(f"{root}: no {MANIFEST}, so no {split!r} split; use --split all")
        entries = [{"name": p.stem, "split": SPLIT_ALL} for p in sorted((root / "image").iterdir())
                   if p.suffix.lower() in IMAGE_SUFFIXES]
    samples = []
    for e in sorted(entries, key=lambda e: e["name"]):
        name = e["name"]
        image = _first_existing(root / "image", name, IMAGE_SUFFIXES)
        if image is None:
            raise InputError(f"{root / 'image'}: no photo for sample {name!r} listed in the manifest")
        box = e.get("sharp_valid")
        samples.append(Sample(
            name=name, split=str(e.get("split", SPLIT_ALL)), image=image,
            sigma=_first_existing(root / "sigma", name, (".npy", ".png")),
            radius=_first_existing(root / "radius", name, (".npy",)),
            mask=_first_existing(root / "mask", name, (".png",)),
            sharp=_first_existing(root / "sharp", name, IMAGE_SUFFIXES),
            sharp_valid=tuple(int(v) for v in box) if box else None,
        ))
    if not samples:
        raise InputError(f"{root}: no samples to evaluate")
    return samples


# --------------------------------------------------------------------------------------------
# figures


def sigma_figures(pred: np.ndarray, gt: np.ndarray, config: EvalConfig) -> dict[str, float]:
    """Sigma errors of one image (ops.metrics.sigma_errors) with the config's sigma_norm."""
    return M.sigma_errors(pred, gt, config.sigma_norm)


def mask_figures(pred: np.ndarray, mask: np.ndarray, config: EvalConfig,
                 gt_sigma: np.ndarray | None = None) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """Accuracy at Park's threshold, AP and the PR curve of one image. Pixels without a sigma
    label (NaN in gt_sigma) are unknown in the mask too."""
    labels = mask_labels(mask)
    if gt_sigma is not None:
        labels = np.where(np.isfinite(gt_sigma), labels, np.nan)
    acc = M.mask_accuracy(pred, labels, config.park_alpha)
    _, precision, recall = M.precision_recall_curve(pred, labels, config.pr_thresholds)
    return ({"accuracy": acc["accuracy"], "tau": acc["tau"], "ap": M.average_precision(pred, labels),
             "blurred_fraction": acc["blurred_fraction"], "mask_n": acc["n"]}, (precision, recall))


def deblur_figures(blurred: np.ndarray, deblurred: np.ndarray, sharp: np.ndarray,
                   box: tuple[int, int, int, int] | None, config: EvalConfig) -> dict[str, float]:
    """PSNR / SSIM of the input and of the deblurred photo against the sharp one, inside box
    (x0, y0, x1, y1) when given, and the gains (deblurred - input)."""
    if box is not None:
        x0, y0, x1, y1 = box
        blurred, deblurred, sharp = (a[y0:y1, x0:x1] for a in (blurred, deblurred, sharp))
    out = {
        "psnr_input": M.psnr(blurred, sharp),
        "psnr_deblurred": M.psnr(deblurred, sharp),
        "ssim_input": M.ssim(blurred, sharp, mode=config.ssim_mode),
        "ssim_deblurred": M.ssim(deblurred, sharp, mode=config.ssim_mode),
    }
    out["psnr_gain"] = out["psnr_deblurred"] - out["psnr_input"]
    out["ssim_gain"] = out["ssim_deblurred"] - out["ssim_input"]
    return out


def _nanmean(values: list[float]) -> float:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# --------------------------------------------------------------------------------------------
# the whole evaluation


def evaluate_dataset(
    root: str | Path,
    estimate: Callable[[np.ndarray], np.ndarray],
    config: EvalConfig = EvalConfig(),
    *,
    deblur: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    radius_table: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Run ``estimate`` on every photo of the split and measure it.

    estimate(rgb) -> sigma: rgb (H, W, 3) float32 in [0, 1] -> (H, W) float32 sigma in px of rgb.
    deblur(rgb, sigma) -> (H, W, 3) float32: when given, deblurring pairs (sharp/) are measured.
    radius_table: (sigma, radius) columns, needed when the dataset has radius/ labels.
    progress(name, done, total) after each image. A sample whose files are unreadable (or whose
    estimate fails with a DefocusError) is a failure of that sample, listed in the report.
    """
    root = Path(root)
    samples = list_samples(root, config.split)
    if config.limit is not None:
        samples = samples[: config.limit]
    if any(s.radius is not None and s.sigma is None for s in samples) and radius_table is None:
        raise InputError(f"{root}: has disk-radius labels (radius/); give the sigma <-> radius table "
                         "(--radius-table, e.g. ../shared/data/tables/rtf_sigma_to_disk_radius.csv)")
    images: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    curves: list[tuple[np.ndarray, np.ndarray]] = []
    for i, s in enumerate(samples):
        try:
            row, curve = _evaluate_sample(s, estimate, config, deblur, radius_table)
        except DefocusError as e:  # unreadable file, non-finite network output: this sample only
            failures.append((s.name, str(e)))
        else:
            images.append(row)
            if curve is not None:
                curves.append(curve)
        if progress is not None:
            progress(s.name, i + 1, len(samples))
    mean = {k: _nanmean([r.get(k) for r in images]) for k in MEAN_KEYS if any(k in r for r in images)}
    pr = None
    if curves:
        pr = {"tau_position": np.linspace(0, 1, config.pr_thresholds).tolist(),
              "precision": np.nanmean(np.stack([c[0] for c in curves]), axis=0).tolist(),
              "recall": np.nanmean(np.stack([c[1] for c in curves]), axis=0).tolist()}
    meta_path = root / "dataset.json"
    dataset_json = None
    if meta_path.is_file():
        try:
            dataset_json = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            dataset_json = {"error": f"{meta_path}: not JSON"}
    return EvalReport(dataset=root, split=config.split, config=asdict(config), images=images, mean=mean,
                      pr_curve=pr, failures=failures, dataset_json=dataset_json)


def _evaluate_sample(s: Sample, estimate, config: EvalConfig, deblur, radius_table
                     ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    rgb = read_image(s.image).pixels
    h, w = rgb.shape[:2]
    gt = None
    if s.sigma is not None:
        gt = load_map(s.sigma)
    elif s.radius is not None:
        radius = load_map(s.radius)
        gt = M.disk_radius_to_sigma(np.where(radius >= 0, radius, np.nan), *radius_table).astype(np.float32)
    if gt is not None and gt.shape != (h, w):
        raise InputError(f"{s.sigma or s.radius}: label is {gt.shape[1]}x{gt.shape[0]} but the photo "
                         f"{s.image.name} is {w}x{h}")
    t0 = time.perf_counter()
    pred = np.asarray(estimate(rgb), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if pred.shape != (h, w):
        raise ValueError(f"estimator returned a {pred.shape} map for a {(h, w)} photo")
    row: dict[str, Any] = {"name": s.name, "split": s.split, "size": [w, h], "seconds": seconds,
                           "pred_sigma_px_mean": float(np.mean(pred))}
    if gt is not None:
        row.update(sigma_figures(pred, gt, config))
        finite = gt[np.isfinite(gt)]
        row["gt_sigma_px_mean"] = float(finite.mean()) if finite.size else math.nan
    curve = None
    if s.mask is not None:
        mask = read_mask(s.mask)
        if mask.shape != (h, w):
            raise InputError(f"{s.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {w}x{h}")
        figures, curve = mask_figures(pred, mask, config, gt)
        row.update(figures)
    if deblur is not None and s.sharp is not None:
        sharp = read_image(s.sharp).pixels
        if sharp.shape != rgb.shape:
            raise InputError(f"{s.sharp}: sharp photo is {sharp.shape[1]}x{sharp.shape[0]}, the photo {w}x{h}")
        t0 = time.perf_counter()
        restored = np.asarray(deblur(rgb, pred), dtype=np.float32)
        row["deblur_seconds"] = time.perf_counter() - t0
        row.update(deblur_figures(rgb, restored, sharp, s.sharp_valid, config))
    return row, curve
