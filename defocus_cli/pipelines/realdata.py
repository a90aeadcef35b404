"""Real evaluation / domain-adaptation data from the DFD indoor RGB-D set (Carvalho et al. 2018).

Source layout (``../shared/data/rgbd/dfd-indoor``): ``defocused/NAME.jpg`` (f/2.8),
``allinfocus/NAME.jpg`` (f/8), ``depth/NAME.png`` (16-bit), ``scenes.csv``; 81 scenes
``indoor_001`` .. ``indoor_081`` at 645x432, shot on one afternoon in one office (timestamps
16:38-17:26 in scenes.csv), often several shots of one view in a row.

Output (the team's dataset format, readable by ``train`` as D_R / D_B and by ``eval``)::

    DATASET/image/NAME.png     8-bit RGB: the f/2.8 photo, unchanged (real lens defocus)
    DATASET/sigma/NAME.npy     float32 (H, W): thin-lens Gaussian sigma in px of this image;
                               NaN where the depth is untrustworthy (see "validity" below)
    DATASET/mask/NAME.png      8-bit: 255 = blurred (sigma >= blur_threshold_px), 0 = sharp,
                               128 = unknown (sigma is NaN). Losses and metrics must ignore 128
                               (``ops.metrics`` and ``eval`` do; a reader that thresholds at 128
                               would call these pixels blurred)
    DATASET/sharp/NAME.png     8-bit RGB: the f/8 photo registered onto the f/2.8 one (sub-pixel
                               translation + per-channel gain, see below), for deblurring pairs
    DATASET/manifest.jsonl     one JSON per sample: name, split, scene group, registration of the
                               sharp photo (shift, gain, valid box), label statistics
    DATASET/dataset.json       what this is: camera, thresholds, split rule, measured checks

Labels. sigma = c / 4 with c = alpha |x - S1| / x (paper Eq. 1, :mod:`defocus_cli.ops.thinlens`),
alpha = F^2 / (N (S1 - F)) for F = 35 mm, N = 2.8, S1 = 1.7 m, divided by the effective pixel
pitch 36 um at 645x432 (6 um sensor pixels, 6x subsampled): alpha = 7.299 px. sigma is 0 at 1.7 m,
1.0 px at 1.05 m and at 4.05 m, 2.4 px at 0.6 m and tends to 1.82 px far away.

What the source data is, and why the labels are built this way (the measurements behind each
point are in benchmarks/README.md, "The dfd-indoor labels"):

- every photo and depth map is 645x432; depth is uint16 millimetres, hole-filled; the blur
  measured between the f/2.8 and f/8 photos follows this camera's thin-lens curve (Spearman
  0.79), so labels keep the nominal camera (sigma = c / 4);
- speckle (a pixel more than 10 % off its 5x5 median) and depth below 0.4 m become NaN;
- RGB and depth are not pixel-registered near object outlines, so pixels within
  ``edge_band_px`` of a depth discontinuity are NaN: labels are trustworthy on surfaces;
- f/2.8 and f/8 shots differ by a global translation of up to 12.5 px and by exposure, so the
  sharp/ photo is registered (phase correlation + ECC) and gain-matched, and the manifest
  records the shift, gain and the box where both photos have data;
- the labels concentrate at 0.5-1 px: a constant 0.78 px map scores MAE 0.387 px on the test
  split, so MAE alone proves little; Spearman and AP are the informative figures.

Split (by group of overlapping views, never by photo): consecutive shots often show the same
view (ORB + RANSAC homography with >= 40 inliers between any two of the 81 f/8 photos links them),
which groups the 81 scenes into the 35 runs of :data:`SCENE_GROUPS`. A seeded permutation of the
groups fills test (<= 16 scenes) then val (<= 8 scenes); the rest is train: 57 / 8 / 16 with the
default seed. :func:`dfd_indoor_split` gives it for any scene id, so other datasets made from
these scenes (``synth``) can hold out the same ones.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from defocus_cli import __version__
from defocus_cli.errors import InputError
from defocus_cli.io.datasets import write_manifest, write_mask
from defocus_cli.io.images import IMAGE_SUFFIXES, read_image, read_png16, save_json, save_npy, write_image
from defocus_cli.ops.masks import MASK_BLURRED, MASK_SHARP, MASK_UNKNOWN, blur_mask
from defocus_cli.ops.thinlens import alpha_from_lens, coc_diameter, sigma_from_coc

#: runs of consecutive scene numbers whose photos overlap (ORB + RANSAC homography >= 40 inliers
#: between the f/8 photos, any pair, transitively; every group found is a run of consecutive ids)
SCENE_GROUPS: tuple[tuple[int, int], ...] = (
    (1, 4), (5, 6), (7, 7), (8, 9), (10, 10), (11, 14), (15, 16), (17, 18), (19, 19), (20, 21),
    (22, 26), (27, 29), (30, 33), (34, 36), (37, 37), (38, 42), (43, 46), (47, 47), (48, 48),
    (49, 50), (51, 52), (53, 58), (59, 59), (60, 60), (61, 61), (62, 62), (63, 67), (68, 69),
    (70, 70), (71, 71), (72, 72), (73, 74), (75, 76), (77, 79), (80, 81),
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DfdIndoorConfig:
    """How DFD indoor becomes a labelled dataset. Defaults are the authors' camera parameters."""

    focal_length_mm: float = 35.0
    f_number: float = 2.8  # of the defocused photos
    focus_distance_mm: float = 1700.0
    pixel_pitch_mm: float = 0.036  # effective, at 645x432 (6 um pixels, 6x subsampled)
    #: depth outside [min, max] is no reading: the sensor does not see nearer than ~0.4 m
    min_depth_mm: float = 400.0
    max_depth_mm: float = 12000.0
    #: a pixel further than this (relative) from its 5x5 median depth is speckle
    speckle_rel: float = 0.10
    #: a relative depth jump between neighbours above this is a depth discontinuity ...
    edge_rel: float = 0.05
    #: ... and labels within this distance of one are NaN (RGB-depth misregistration of 4-13 px)
    edge_band_px: float = 8.0
    #: sigma (px) from which a pixel counts as blurred in mask/ (CoC 4 px; synth uses the same)
    blur_threshold_px: float = 1.0
    #: split: a seeded permutation of SCENE_GROUPS fills test, then val, up to these many scenes
    split_seed: int = 0
    n_test: int = 16
    n_val: int = 8
    #: register the f/8 photo onto the f/2.8 one (translation + gain) before writing sharp/
    register_sharp: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.focal_length_mm > 0 and self.f_number > 0 and self.pixel_pitch_mm > 0,
             "focal length, f-number and pixel pitch must be > 0"),
            (self.focus_distance_mm > self.focal_length_mm, "focus distance must exceed the focal length"),
            (0 < self.min_depth_mm < self.max_depth_mm, "need 0 < min_depth_mm < max_depth_mm"),
            (self.speckle_rel > 0 and self.edge_rel > 0, "speckle_rel and edge_rel must be > 0"),
            (self.edge_band_px >= 0 and self.blur_threshold_px > 0, "edge band >= 0, blur threshold > 0"),
            (self.n_test >= 0 and self.n_val >= 0, "n_test and n_val must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DfdIndoorConfig: {message}")

    @property
    def alpha_px(self) -> float:
        """alpha of Eq. 1 in pixels (CoC diameter of a point at infinity)."""
        return alpha_from_lens(self.focal_length_mm, self.f_number, self.focus_distance_mm) / self.pixel_pitch_mm


# --------------------------------------------------------------------------------------------
# split


def scene_number(scene: str) -> int:
    """``indoor_017`` (or any id ending in ``_017``/``017``) -> 17."""
    digits = scene.rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    if not digits.isdigit():
        raise ValueError(f"not a DFD indoor scene id: {scene!r} (expected e.g. 'indoor_017')")
    return int(digits)


def group_of(scene: str) -> int:
    """Index into SCENE_GROUPS of a scene id."""
    n = scene_number(scene)
    for i, (first, last) in enumerate(SCENE_GROUPS):
        if first <= n <= last:
            return i
    raise ValueError(f"scene {scene!r}: number {n} is outside DFD indoor's 1..81")


def split_groups(seed: int = 0, n_test: int = 16, n_val: int = 8) -> dict[int, str]:
    """Split of each group index: a seeded permutation of the groups fills test (up to n_test
    scenes), then val (up to n_val); a group that would overflow goes on to the next split."""
    order = np.random.default_rng(seed).permutation(len(SCENE_GROUPS))
    counts = {"test": 0, "val": 0}
    caps = {"test": n_test, "val": n_val}
    out = {}
    for g in order.tolist():
        size = SCENE_GROUPS[g][1] - SCENE_GROUPS[g][0] + 1
        for split in ("test", "val"):
            if counts[split] + size <= caps[split]:
                counts[split] += size
                out[g] = split
                break
        else:
            out[g] = "train"
    return out


def dfd_indoor_split(scene: str, seed: int = 0, n_test: int = 16, n_val: int = 8) -> str:
    """"train" | "val" | "test" of a DFD indoor scene id (e.g. ``indoor_017``), by scene group."""
    return split_groups(seed, n_test, n_val)[group_of(scene)]


# --------------------------------------------------------------------------------------------
# labels


def valid_depth(depth_mm: np.ndarray, config: DfdIndoorConfig) -> np.ndarray:
    """(H, W) bool: depth readings to trust. depth_mm: (H, W) float/uint, 0 = no reading.

    Drops no-reading and out-of-range pixels, speckle (off its 5x5 median by > speckle_rel) and a
    band of edge_band_px around depth discontinuities (where RGB and depth disagree).
    """
    if depth_mm.ndim != 2:
        raise ValueError(f"valid_depth: expected (H, W) depth, got shape {depth_mm.shape}")
    z = depth_mm.astype(np.float32)
    ok = (z >= config.min_depth_mm) & (z <= config.max_depth_mm)
    # median of the uint16 map: OpenCV's 5x5 median needs 8-bit or 16-bit input
    med = cv2.medianBlur(np.clip(depth_mm, 0, 65535).astype(np.uint16), 5).astype(np.float32)
    ok &= np.abs(z - med) <= config.speckle_rel * np.maximum(med, 1.0)
    if config.edge_band_px > 0:
        lz = np.log(np.maximum(med, 1.0))
        jump = np.zeros(z.shape, bool)
        jump[:, 1:] |= np.abs(np.diff(lz, axis=1)) > np.log1p(config.edge_rel)
        jump[1:, :] |= np.abs(np.diff(lz, axis=0)) > np.log1p(config.edge_rel)
        if jump.any():
            dist = cv2.distanceTransform((~jump).astype(np.uint8), cv2.DIST_L2, 5)
            ok &= dist >= config.edge_band_px
    return ok


def sigma_from_depth(depth_mm: np.ndarray, config: DfdIndoorConfig) -> np.ndarray:
    """(H, W) float32 thin-lens Gaussian sigma in px of the f/2.8 photo; NaN where not valid_depth."""
    ok = valid_depth(depth_mm, config)
    sigma = np.full(depth_mm.shape, np.nan, np.float32)
    c = coc_diameter(depth_mm[ok].astype(np.float64), config.focus_distance_mm, config.alpha_px)
    sigma[ok] = np.asarray(sigma_from_coc(c), np.float32)
    return sigma


# --------------------------------------------------------------------------------------------
# the f/8 - f/2.8 pair


@dataclass(frozen=True)
class Registration:
    """sharp_registered(x, y) = gain * sharp(x - shift[0], y - shift[1]); box = (x0, y0, x1, y1),
    end-exclusive, where the shifted photo has data (minus the interpolation kernel's reach)."""

    shift: tuple[float, float]
    gain: tuple[float, float, float]
    box: tuple[int, int, int, int]
    response: float  # phase-correlation peak (about 1 for a clean translation)
    method: str  # "phase correlation + ECC", or "phase correlation" where ECC failed


def register_pair(sharp: np.ndarray, blurred: np.ndarray) -> tuple[np.ndarray, Registration]:
    """Align the sharp (f/8) photo to the blurred (f/2.8) one: global translation by phase
    correlation (a Gaussian-blurred copy of the same view keeps its phase, so the peak is sharp)
    refined by ECC, Lanczos resampling, then a per-channel gain matching the means inside the
    overlap.

    sharp, blurred: (H, W, 3) float32 in [0, 1]. Returns the registered sharp photo (clipped to
    [0, 1]) and the :class:`Registration`.
    """
    if sharp.shape != blurred.shape or sharp.ndim != 3 or sharp.shape[2] != 3:
        raise ValueError(f"register_pair: expected two (H, W, 3) images of one size, got "
                         f"{sharp.shape} and {blurred.shape}")
    h, w = blurred.shape[:2]
    a = sharp.mean(axis=2).astype(np.float64)
    b = blurred.mean(axis=2).astype(np.float64)
    window = cv2.createHanningWindow((w, h), cv2.CV_64F)
    # copies: OpenCV's phaseCorrelate multiplies its inputs by the window in place
    (dx, dy), response = cv2.phaseCorrelate(a.copy(), b.copy(), window)
    # phase correlation's sub-pixel peak is biased by up to ~0.2 px; ECC (maximising the
    # correlation of the two photos under a translation) refines it to ~0.03 px from there
    warp = np.float32([[1, 0, -dx], [0, 1, -dy]])
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    try:
        _, warp = cv2.findTransformECC(b.astype(np.float32), a.astype(np.float32), warp,
                                       cv2.MOTION_TRANSLATION, criteria, None, 5)
    except cv2.error:
        method = "phase correlation"  # ECC did not converge: keep the phase-correlation shift
    else:
        if abs(-warp[0, 2] - dx) <= 2 and abs(-warp[1, 2] - dy) <= 2:
            dx, dy = float(-warp[0, 2]), float(-warp[1, 2])
            method = "phase correlation + ECC"
        else:  # ECC ran off to another optimum: the coarse estimate is the safer one
            method = "phase correlation"
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(sharp, m, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
    reach = 4  # Lanczos4 reads 4 px either side
    x0 = min(w, max(0, math.ceil(dx)) + reach)
    y0 = min(h, max(0, math.ceil(dy)) + reach)
    x1 = max(x0, min(w, w + math.floor(dx)) - reach)
    y1 = max(y0, min(h, h + math.floor(dy)) - reach)
    inner = (slice(y0, y1), slice(x0, x1))
    # gain on unsaturated pixels only: clipped highlights would pull it towards 1
    usable = (moved[inner].max(axis=2) < 0.98) & (blurred[inner].max(axis=2) < 0.98)
    if usable.sum() < 100:
        gain = np.ones(3)
    else:
        gain = blurred[inner][usable].mean(axis=0) / np.maximum(moved[inner][usable].mean(axis=0), 1e-6)
    out = np.clip(moved * gain.astype(np.float32), 0.0, 1.0).astype(np.float32)
    reg = Registration(shift=(float(dx), float(dy)), gain=tuple(float(g) for g in gain),
                       box=(int(x0), int(y0), int(x1), int(y1)), response=float(response),
                       method=method)
    return out, reg


# --------------------------------------------------------------------------------------------
# the whole dataset


@dataclass
class PrepareReport:
    """What prepare_dfd_indoor did. samples: the manifest entries; failures: (scene, message)."""

    out: Path
    samples: list[dict]
    failures: list[tuple[str, str]]
    split_counts: dict[str, int]


def list_scenes(src: Path) -> list[str]:
    """Scene ids of a DFD indoor folder: every ``depth/NAME.png`` (sorted), checked against
    scenes.csv where present."""
    src = Path(src)
    for sub in ("defocused", "allinfocus", "depth"):
        if not (src / sub).is_dir():
            raise InputError(f"{src}: not a DFD indoor folder (no {sub}/); expected "
                             "defocused/, allinfocus/, depth/ and scenes.csv")
    scenes = sorted(p.stem for p in (src / "depth").glob("*.png"))
    if not scenes:
        raise InputError(f"{src / 'depth'}: no depth PNG files")
    csv_path = src / "scenes.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            listed = {row["scene"] for row in csv.DictReader(f)}
        missing = sorted(listed - set(scenes))
        if missing:
            raise InputError(f"{src}: scenes.csv lists scenes without depth: {', '.join(missing[:5])}")
    return scenes


def _photo(src: Path, sub: str, scene: str) -> Path:
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        p = src / sub / f"{scene}{suffix}"
        if p.is_file():
            return p
    raise InputError(f"{src / sub}: no photo for scene {scene}")


def prepare_scene(src: Path, scene: str, config: DfdIndoorConfig) -> dict:
    """Read one scene -> dict with "image", "sigma", "mask", "sharp" arrays and "entry" (manifest)."""
    blurred = read_image(_photo(src, "defocused", scene)).pixels
    sharp = read_image(_photo(src, "allinfocus", scene)).pixels
    depth = read_png16(src / "depth" / f"{scene}.png", "depth in mm")
    if blurred.shape[:2] != depth.shape or sharp.shape != blurred.shape:
        raise InputError(f"{src}: scene {scene}: sizes differ (f/2.8 {blurred.shape[:2]}, "
                         f"f/8 {sharp.shape[:2]}, depth {depth.shape})")
    sigma = sigma_from_depth(depth, config)
    mask = blur_mask(sigma, config.blur_threshold_px)
    entry: dict = {"name": scene, "split": dfd_indoor_split(scene, config.split_seed, config.n_test, config.n_val),
                   "scene": scene, "group": group_of(scene), "size": [blurred.shape[1], blurred.shape[0]]}
    if config.register_sharp:
        sharp, reg = register_pair(sharp, blurred)
        entry.update(sharp_shift=list(reg.shift), sharp_gain=list(reg.gain), sharp_valid=list(reg.box),
                     sharp_registration_response=reg.response, sharp_registration=reg.method)
    finite = sigma[np.isfinite(sigma)]
    entry["label"] = {
        "valid_fraction": float(finite.size / sigma.size),
        "blurred_fraction_of_valid": float((finite >= config.blur_threshold_px).mean()) if finite.size else None,
        "sigma_px_percentiles_5_50_95": [float(v) for v in np.percentile(finite, [5, 50, 95])] if finite.size else None,
        "depth_mm_min_max": [int(depth.min()), int(depth.max())],
    }
    return {"image": blurred, "sigma": sigma, "mask": mask, "sharp": sharp, "entry": entry}


def prepare_dfd_indoor(src: str | Path, out: str | Path, config: DfdIndoorConfig = DfdIndoorConfig(),
                       progress: Callable[[str], None] | None = None) -> PrepareReport:
    """Turn a DFD indoor folder into a dataset folder (layout in the module docstring).

    Existing files are overwritten (the output is a pure function of the source and config).
    A scene that fails is reported in ``failures`` and left out of the manifest.
    progress: called with each scene id once it is written.
    """
    src, out = Path(src), Path(out)
    scenes = list_scenes(src)
    for sub in ("image", "sigma", "mask", "sharp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    entries, failures = [], []
    for scene in scenes:
        try:
            r = prepare_scene(src, scene, config)
        except (InputError, ValueError) as e:
            failures.append((scene, str(e)))
        else:
            write_image(out / "image" / f"{scene}.png", r["image"])
            save_npy(out / "sigma" / f"{scene}.npy", r["sigma"])
            write_mask(out / "mask" / f"{scene}.png", r["mask"])
            write_image(out / "sharp" / f"{scene}.png", r["sharp"])
            entries.append(r["entry"])
        if progress is not None:
            progress(scene)
    write_manifest(out, entries)
    counts = {s: sum(e["split"] == s for e in entries) for s in SPLITS}
    save_json(out / "dataset.json", {
        "generator": "defocus eval prepare-dfd",
        "version": __version__,
        "kind": "real",
        "source": {"name": "DFD indoor (Carvalho et al., 3DRW ECCV-W 2018)", "path": str(src),
                   "scenes": len(scenes)},
        "config": asdict(config),
        "camera": {"alpha_px": config.alpha_px, "model": "sigma = alpha |x - S1| / x / 4 (paper Eq. 1, sigma = c/4)"},
        "units": {"sigma": "Gaussian sigma in px of image/NAME.png; NaN = no label",
                  "mask": f"{MASK_BLURRED} blurred (sigma >= blur_threshold_px), {MASK_SHARP} sharp, {MASK_UNKNOWN} unknown (ignore)",
                  "depth": "mm (source)"},
        "splits": {"rule": "by group of overlapping views (SCENE_GROUPS in defocus_cli.pipelines.realdata); "
                           "seeded permutation of groups fills test then val",
                   "counts": counts,
                   "scenes": {s: [e["name"] for e in entries if e["split"] == s] for s in SPLITS}},
        "sharp": "f/8 photo registered onto the f/2.8 photo (translation + per-channel gain); compare "
                 "inside the manifest's sharp_valid box (x0, y0, x1, y1)" if config.register_sharp
                 else "f/8 photo as shot (not registered)",
        "failures": [{"scene": s, "error": m} for s, m in failures],
    })
    return PrepareReport(out=out, samples=entries, failures=failures, split_counts=counts)
