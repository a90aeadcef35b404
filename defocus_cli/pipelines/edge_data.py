"""Training patches for the edge networks of paper 002 (``models.edge``), from the shared data.

Three sources, each degraded after the blur the way a camera would (white noise of a random
level up to ``noise_max``, 8-bit rounding, JPEG at quality 70-95 with probability
``jpeg_prob``), then edge points found by the detector that runs at inference
(``ops.edges.detect_edges``), and a 41 px patch cut around each:

1. **Sharp photos** (every folder given: Urban100, SunHays80, BSDS500, Kodak24, ...), each
   reduced by a random factor in [0.5, 1] (less of the lens's own blur), cut into crops and
   blurred by a Gaussian in one of three patterns (the paper's Sec. IV-A, Gaussian instead of
   disk, the tool's unit): *uniform* sigma ~ U[0, 6]; *gradual*, sigma varying linearly across
   the crop between two values up to 3 px apart; *step-wise*, two regions split by a random line
   whose sigma differ by 0.25 px (small blur changes at one depth). Every point is a pattern
   edge, labelled with the sigma at its position.
2. **Renders of a `defocus synth` dataset** (its train and val splits; the test split is never
   read): RGB-D scenes (dfd-indoor training scenes, the SYNDOF samples) and procedural
   foreground/background scenes, with their true sigma maps.
3. **Middlebury RGB-D scenes** (2005/2006, disparity as inverse depth), rendered here with the
   paper's random camera (``synth.render_camera``), ``middlebury_renders`` cameras per scene.

In renders an edge point is labelled by the true sigma map around it: a **depth edge** when
sigma spans more than max(0.5, 0.2 sigma_hi) px within 3 px of it (the blur is a mixture), a
**pattern edge** (label: sigma at the point) when it spans at most max(0.2, 0.08 sigma_hi) px
within 10 px, otherwise left out; points near unknown sigma are left out. Up to
``points_per_render`` points of each kind are drawn per render.

Splits: sharp photos and Middlebury scenes by a hash of their name (``val_fraction``), renders
by the dataset's own split. Output, OUT/{train,val}/:

    patches.npy  (N, 41, 41, 3) uint8 RGB
    sigma.npy    (N,) float32: Gaussian sigma px at the centre (NaN for depth edges)
    kind.npy     (N,) uint8: 0 pattern edge, 1 depth edge
    source.npy   (N,) uint8: index into dataset.json "sources"

and OUT/dataset.json (options, counts, time, bytes).
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defocus_cli import __version__
from defocus_cli.errors import InputError
from defocus_cli.io.datasets import read_manifest
from defocus_cli.io.images import IMAGE_SUFFIXES, atomic_write, load_map, read_image, save_json
from defocus_cli.models.edge import DEPTH, HALF, PATCH, PATTERN
from defocus_cli.ops.edges import detect_edges, edge_points

SOURCES = ("sharp-uniform", "sharp-gradual", "sharp-step", "render-rgbd", "render-procedural",
           "middlebury")
SIGMA_MAX = 6.0
#: px; the step of the blur stack that spatially varying blur is interpolated from
STACK_STEP = 0.25


@dataclass(frozen=True)
class EdgeDataConfig:
    output: Path
    sharp: tuple[Path, ...] = ()
    renders: Path | None = None
    middlebury: Path | None = None
    crops_per_photo: int = 4
    crop: int = 256
    points_per_crop: int = 48
    points_per_render: int = 120
    middlebury_renders: int = 6
    noise_max: float = 0.01
    jpeg_prob: float = 0.5
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if not (self.sharp or self.renders or self.middlebury):
            raise InputError("nothing to make patches from: give --sharp, --renders or --middlebury")
        if self.crop < PATCH + 8:
            raise InputError(f"--crop must be >= {PATCH + 8}, got {self.crop}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
        d["sharp"] = [str(p) for p in self.sharp]
        d["renders"] = str(self.renders) if self.renders else None
        d["middlebury"] = str(self.middlebury) if self.middlebury else None
        return d


def split_of(name: str, val_fraction: float) -> str:
    h = int(hashlib.sha256(f"edge-split:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def degrade(rgb: np.ndarray, rng: np.random.Generator, noise_max: float, jpeg_prob: float) -> np.ndarray:
    """float RGB [0, 1] -> uint8 RGB after noise, 8-bit rounding and maybe JPEG."""
    noisy = rgb + rng.normal(0.0, rng.uniform(0.0, noise_max), rgb.shape).astype(np.float32)
    u8 = np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    if rng.uniform() < jpeg_prob:
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]),
                              [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
        u8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(u8)


def gaussian(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return rgb if sigma <= 1e-3 else cv2.GaussianBlur(rgb, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def blur_varying(rgb: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Spatially varying Gaussian blur, interpolated per pixel between uniform blurs at sigma
    levels STACK_STEP apart (exact where sigma is on a level; the field must vary slowly)."""
    lo_level = int(np.floor(sigma.min() / STACK_STEP))
    hi_level = int(np.ceil(sigma.max() / STACK_STEP))
    t = sigma / STACK_STEP
    out = np.zeros_like(rgb)
    for k in range(lo_level, hi_level + 1):
        w = np.clip(1 - np.abs(t - k), 0, 1)[..., None]
        out += w * gaussian(rgb, k * STACK_STEP)
    return out


def _cut(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    if len(ys) == 0:
        return np.zeros((0, PATCH, PATCH, 3), np.uint8)
    return np.stack([img[y - HALF:y + HALF + 1, x - HALF:x + HALF + 1] for y, x in zip(ys, xs)])


def _sample(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(ys) > n:
        keep = rng.choice(len(ys), n, replace=False)
        return ys[keep], xs[keep]
    return ys, xs


Parts = dict[str, list[np.ndarray]]


def _add(parts: Parts, patches, sigma, kind, source) -> None:
    n = len(patches)
    parts["patches"].append(patches)
    parts["sigma"].append(np.asarray(sigma, np.float32).reshape(n))
    parts["kind"].append(np.full(n, kind, np.uint8))
    parts["source"].append(np.full(n, source, np.uint8))


def _empty() -> Parts:
    return {"patches": [], "sigma": [], "kind": [], "source": []}


def photo_patches(path: str, config: EdgeDataConfig, index: int) -> Parts:
    """Pattern-edge patches of one sharp photo under uniform, gradual and step-wise blur."""
    rng = np.random.default_rng([config.seed, 1, index])
    parts = _empty()
    photo = read_image(path).pixels
    for _ in range(config.crops_per_photo):
        f = rng.uniform(0.5, 1.0)
        h, w = photo.shape[:2]
        img = cv2.resize(photo, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        c = min(config.crop, h, w)
        if c < PATCH + 8:
            continue
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        img = np.ascontiguousarray(img[y0:y0 + c, x0:x0 + c])
        pattern = rng.choice(3, p=[0.5, 0.25, 0.25])
        if pattern == 0:
            s = float(rng.uniform(0, SIGMA_MAX))
            field = np.full((c, c), s, np.float32)
            blurred = gaussian(img, s)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:c, 0:c].astype(np.float32)
            u = ((xx - c / 2) * np.cos(angle) + (yy - c / 2) * np.sin(angle)) / c + 0.5  # ~[0, 1]
            if pattern == 1:
                a = float(rng.uniform(0, SIGMA_MAX))
                b = float(np.clip(a + rng.uniform(-3, 3), 0, SIGMA_MAX))
                field = (a + (b - a) * np.clip(u, 0, 1)).astype(np.float32)
                blurred = blur_varying(img, field)
            else:
                a = float(rng.uniform(0, SIGMA_MAX - STACK_STEP))
                field = np.where(u < rng.uniform(0.3, 0.7), a, a + STACK_STEP).astype(np.float32)
                blurred = np.where((field > a)[..., None], gaussian(img, a + STACK_STEP), gaussian(img, a))
        u8 = degrade(blurred.astype(np.float32), rng, config.noise_max, config.jpeg_prob)
        ys, xs = edge_points(detect_edges(u8), border=HALF + 1)
        ys, xs = _sample(rng, ys, xs, config.points_per_crop)
        _add(parts, _cut(u8, ys, xs), field[ys, xs], PATTERN, int(pattern))
    return parts


def _label_render(u8: np.ndarray, sigma: np.ndarray, rng: np.random.Generator, n: int, source: int,
                  parts: Parts) -> None:
    """Depth- and pattern-edge patches of one render with its true sigma map."""
    unknown = ~np.isfinite(sigma)
    s = np.where(unknown, 0, sigma).astype(np.float32)
    near_unknown = cv2.dilate(unknown.astype(np.uint8), np.ones((21, 21), np.uint8)) > 0

    def spread(r: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        hi = cv2.dilate(s, k)
        return hi - cv2.erode(s, k), hi

    span3, hi3 = spread(3)
    span10, hi10 = spread(10)
    ys, xs = edge_points(detect_edges(u8), border=HALF + 1)
    ok = ~near_unknown[ys, xs]
    ys, xs = ys[ok], xs[ok]
    depth = span3[ys, xs] > np.maximum(0.5, 0.2 * hi3[ys, xs])
    pattern = span10[ys, xs] <= np.maximum(0.2, 0.08 * hi10[ys, xs])
    dy, dx = _sample(rng, ys[depth], xs[depth], n)
    _add(parts, _cut(u8, dy, dx), np.full(len(dy), np.nan), DEPTH, source)
    py, px = _sample(rng, ys[pattern], xs[pattern], n)
    _add(parts, _cut(u8, py, px), s[py, px], PATTERN, source)


def render_patches(root: str, name: str, kind: str, config: EdgeDataConfig, index: int) -> Parts:
    rng = np.random.default_rng([config.seed, 2, index])
    parts = _empty()
    image = read_image(Path(root) / "image" / f"{name}.png").pixels
    sigma = load_map(Path(root) / "sigma" / f"{name}.npy").astype(np.float32)
    u8 = degrade(image, rng, config.noise_max, config.jpeg_prob)
    _label_render(u8, sigma, rng, config.points_per_render,
                  SOURCES.index("render-procedural" if kind == "procedural" else "render-rgbd"), parts)
    return parts


def read_middlebury(scene: Path) -> tuple[np.ndarray, np.ndarray]:
    """view1.png and disp1.png of a Middlebury scene -> (RGB float32, depth = 1 / disparity with
    NaN where the disparity is unknown (0))."""
    rgb = read_image(scene / "view1.png").pixels
    disp = cv2.imread(str(scene / "disp1.png"), cv2.IMREAD_UNCHANGED)
    if disp is None:
        raise InputError(f"{scene / 'disp1.png'}: unreadable")
    disp = disp.astype(np.float32)
    if disp.ndim == 3:
        disp = disp[..., 0]
    depth = np.where(disp > 0, 1.0 / np.maximum(disp, 1e-6), np.nan).astype(np.float32)
    return rgb, depth


def middlebury_patches(scene: str, config: EdgeDataConfig, index: int) -> Parts:
    from defocus_cli.pipelines.synth import render_camera

    rng = np.random.default_rng([config.seed, 3, index])
    parts = _empty()
    rgb, depth = read_middlebury(Path(scene))
    for _ in range(config.middlebury_renders):
        out, sigma, _ = render_camera(rgb, depth, rng)
        u8 = degrade(out, rng, config.noise_max, config.jpeg_prob)
        _label_render(u8, sigma, rng, config.points_per_render, SOURCES.index("middlebury"), parts)
    return parts


def _run(job: tuple) -> tuple[str, Parts]:
    fn, split, args = job
    return split, fn(*args)


def plan_jobs(config: EdgeDataConfig) -> list[tuple]:
    jobs: list[tuple] = []
    photos = sorted(p for folder in config.sharp for p in folder.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    for i, p in enumerate(photos):
        jobs.append((photo_patches, split_of(p.stem, config.val_fraction), (str(p), config, i)))
    if config.renders is not None:
        for i, e in enumerate(read_manifest(config.renders)):
            if e["split"] in ("train", "val"):
                jobs.append((render_patches, e["split"], (str(config.renders), e["name"], e["kind"], config, i)))
    if config.middlebury is not None:
        scenes = sorted(p for p in config.middlebury.iterdir() if (p / "disp1.png").is_file())
        for i, p in enumerate(scenes):
            jobs.append((middlebury_patches, split_of(p.name, config.val_fraction), (str(p), config, i)))
    if not jobs:
        raise InputError("no photo, render or Middlebury scene found in the folders given")
    return jobs


def _save(path: Path, a: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def make_edge_data(config: EdgeDataConfig, on_progress=None) -> dict[str, Any]:
    """Build the patch dataset into config.output -> the dataset.json record."""
    t0 = time.perf_counter()
    jobs = plan_jobs(config)
    acc: dict[str, Parts] = {"train": _empty(), "val": _empty()}
    with ProcessPoolExecutor(config.workers) as pool:
        for done, (split, parts) in enumerate(pool.map(_run, jobs, chunksize=4), 1):
            for k, v in parts.items():
                acc[split][k].extend(v)
            if on_progress is not None:
                on_progress(done, len(jobs))
    out = Path(config.output)
    counts: dict[str, Any] = {}
    total_bytes = 0
    for split, parts in acc.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        arrays = {k: (np.concatenate(v) if v else None) for k, v in parts.items()}
        if arrays["patches"] is None:
            arrays = {"patches": np.zeros((0, PATCH, PATCH, 3), np.uint8), "sigma": np.zeros(0, np.float32),
                      "kind": np.zeros(0, np.uint8), "source": np.zeros(0, np.uint8)}
        for k, a in arrays.items():
            _save(out / split / f"{k}.npy", a)
            total_bytes += (out / split / f"{k}.npy").stat().st_size
        counts[split] = {
            "patches": len(arrays["kind"]),
            "pattern": int((arrays["kind"] == PATTERN).sum()),
            "depth": int((arrays["kind"] == DEPTH).sum()),
            "by_source": {name: int((arrays["source"] == i).sum()) for i, name in enumerate(SOURCES)},
        }
    record = {
        "generator": "defocus train edge-data", "version": __version__,
        "format": {"patches": "(N, 41, 41, 3) uint8 RGB centred on an edge point",
                   "sigma": "(N,) float32 Gaussian sigma px at the centre; NaN for depth edges",
                   "kind": "(N,) uint8 0 pattern edge, 1 depth edge", "source": "(N,) uint8 index into sources"},
        "sources": list(SOURCES), "options": config.to_dict(), "jobs": len(jobs), "counts": counts,
        "seconds": round(time.perf_counter() - t0, 1), "bytes": total_bytes,
    }
    save_json(out / "dataset.json", record)
    return record


@dataclass
class PatchSet:
    """One split of an edge patch dataset, memory-mapped."""

    patches: np.ndarray
    sigma: np.ndarray
    kind: np.ndarray
    source: np.ndarray

    @classmethod
    def open(cls, root: str | Path, split: str) -> PatchSet:
        folder = Path(root) / split
        try:
            arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r" if k == "patches" else None)
                      for k in ("patches", "sigma", "kind", "source")}
        except FileNotFoundError as e:
            raise InputError(f"{folder}: not an edge patch dataset ({e.filename} missing); make one with "
                             "`defocus train edge-data`") from None
        n = {k: len(a) for k, a in arrays.items()}
        if len(set(n.values())) != 1 or arrays["patches"].shape[1:] != (PATCH, PATCH, 3):
            raise InputError(f"{folder}: inconsistent arrays {n}, patches {arrays['patches'].shape}")
        return cls(**arrays)

    def __len__(self) -> int:
        return len(self.kind)


def read_edge_data_record(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
