"""SYNDOF-style training-set synthesis (DMENet paper, Sec. 3).

Sources are sharp images with depth: RGB-D pairs from folders (any format of
:mod:`defocus_cli.io.depth`) and procedural scenes (random occluding shapes at random depths,
textured with patches of sharp photos or with built-in procedural textures) whose depth is exact.
Each sample draws a camera as the paper does -- focus distance S1 uniform in [x_near, x_far],
alpha uniform in [0, alpha_up] (Eq. 2, c_max = 28 px by default) -- and renders the defocused
image with the layered renderer of :mod:`defocus_cli.ops.layered`.

Dataset layout (a contract the training and evaluation code rely on)::

    DATASET/image/NAME.png    8-bit RGB, the defocused image
    DATASET/sigma/NAME.npy    float32 (H, W): Gaussian sigma (px) at each pixel's position in the
                              sharp image (= CoC / 4); NaN where the source depth was invalid
    DATASET/mask/NAME.png     8-bit: 255 = blurred (sigma >= mask_threshold), 0 = sharp,
                              128 = unknown (sigma NaN); see ops.masks
    DATASET/sharp/NAME.png    8-bit RGB, the all-in-focus scene it was rendered from (so a
                              dataset is also a set of deblurring pairs for `eval --deblur`)
    DATASET/manifest.jsonl    one JSON object per sample (sorted by name): name, split, source,
                              scene, camera (S1, alpha, alpha_up, c_max), seed, sizes, statistics
    DATASET/dataset.json      generator, version, options, seed, mask threshold, units, counts
    DATASET/.progress/        one record per finished sample (what makes a re-run resume)

Splits are by source scene, never by sample: a scene's split is a fixed function of its id
(sha256, independent of --seed), so a scene stays in one split across runs and dataset sizes.
Every sample's random numbers come from ``SeedSequence([seed, crc32(scene), k])``, so a seed
reproduces the dataset bit for bit, with any number of workers, and adding sources or samples
leaves existing samples unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import re
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from defocus_cli import __version__
from defocus_cli.errors import DefocusError, InputError, ProcessingError
from defocus_cli.io.datasets import write_manifest
from defocus_cli.io.depth import ENCODINGS, is_middlebury_disparity, match_rgbd, read_depth
from defocus_cli.io.images import IMAGE_SUFFIXES, atomic_write, read_image, save_json, save_npy
from defocus_cli.ops.layered import (
    MAX_LAYERS,
    layers_from_signed_sigma,
    render_layers,
    signed_sigma_from_depth,
)
from defocus_cli.ops.masks import MASK_BLURRED, MASK_SHARP, MASK_UNKNOWN, blur_mask
from defocus_cli.ops.thinlens import C_MAX, alpha_upper_bound

GENERATOR = "defocus synth"
#: default blurred/sharp threshold of the masks, px of Gaussian sigma (CoC 4 px)
MASK_THRESHOLD = 1.0
#: options that change what a sample looks like; a dataset folder refuses a re-run that
#: changes any of them (counts and sources may change: samples are independent)
CONTENT_OPTIONS = (
    "seed", "c_max", "max_layers", "procedural_size", "max_side", "mask_threshold",
    "depth_percentiles", "depth_encoding", "textures",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RGBDSource:
    """A folder pair: images under rgb_dir matched by name with depth files under depth_dir."""

    rgb_dir: Path
    depth_dir: Path
    name: str  # prefix of sample names and the manifest's "source"


@dataclass(frozen=True)
class SynthConfig:
    """What `defocus synth` generates.

    sources: RGB-D folder pairs. procedural: number of procedural samples (one scene each).
    textures: folder of sharp photos for procedural textures (None = built-in textures).
    samples_per_source: samples drawn from each RGB-D image (the paper: 8,231 from 2,006).
    c_max: largest CoC diameter, px (Eq. 2; sigma_max = c_max / 4).
    procedural_size: (width, height) of procedural scenes. max_side: RGB-D images whose long
    side exceeds it are reduced to it (0 = keep). depth_percentiles: x_near and x_far are these
    percentiles of the valid depth (robust to stray far readings); depth is clipped to them.
    val_fraction / test_fraction: share of scenes in each split.
    """

    output: Path
    sources: tuple[RGBDSource, ...] = ()
    procedural: int = 0
    textures: Path | None = None
    samples_per_source: int = 8
    seed: int = 0
    workers: int = 1
    c_max: float = C_MAX
    max_layers: int = MAX_LAYERS
    procedural_size: tuple[int, int] = (320, 320)
    max_side: int = 0
    mask_threshold: float = MASK_THRESHOLD
    depth_percentiles: tuple[float, float] = (0.5, 99.5)
    depth_encoding: str = "auto"
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            (self.procedural >= 0, f"procedural must be >= 0, got {self.procedural}"),
            (self.samples_per_source >= 1, f"samples per source must be >= 1, got {self.samples_per_source}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (self.c_max > 0, f"c_max must be > 0, got {self.c_max}"),
            (1 <= self.max_layers <= MAX_LAYERS, f"max_layers must be 1..{MAX_LAYERS}, got {self.max_layers}"),
            (min(self.procedural_size) >= 16, f"procedural size must be >= 16x16, got {self.procedural_size}"),
            (self.max_side == 0 or self.max_side >= 16, f"max_side must be 0 or >= 16, got {self.max_side}"),
            (self.mask_threshold > 0, f"mask threshold must be > 0, got {self.mask_threshold}"),
            (0 <= self.depth_percentiles[0] < self.depth_percentiles[1] <= 100,
             f"depth percentiles must satisfy 0 <= low < high <= 100, got {self.depth_percentiles}"),
            (self.depth_encoding in ENCODINGS, f"depth encoding must be one of {ENCODINGS}"),
            (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1,
             "val and test fractions must be >= 0 and sum to < 1"),
            (bool(self.sources) or self.procedural > 0, "nothing to generate: give RGB-D folders or --procedural N"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON, without those that cannot change the output (output folder,
        workers), so the same command elsewhere writes the same bytes."""
        d = asdict(self)
        del d["output"], d["workers"]
        d["textures"] = str(self.textures) if self.textures else None
        d["sources"] = [
            {"name": s.name, "rgb_dir": str(s.rgb_dir), "depth_dir": str(s.depth_dir)}
            for s in self.sources
        ]
        d["procedural_size"] = list(self.procedural_size)
        d["depth_percentiles"] = list(self.depth_percentiles)
        return d


@dataclass(frozen=True)
class SampleSpec:
    """One sample to generate: everything it depends on besides the config."""

    name: str
    kind: str  # "rgbd" | "procedural"
    source: str
    scene: str
    index: int  # k-th sample of its scene
    split: str
    rgb_path: Path | None = None
    depth_path: Path | None = None

    def entropy(self, seed: int) -> list[int]:
        return [seed, zlib.crc32(self.scene.encode()), self.index]


@dataclass
class SynthReport:
    """What a run did. failures: (sample name, message); exit_code: the worst failure's."""

    planned: int
    generated: int
    skipped: int
    exit_code: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# planning


def split_of(scene: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a scene: a fixed function of its id (not of the seed).

    Scenes of the DFD indoor set (ids ``.../indoor_NNN``) take the split of the real labelled
    dataset made from the same scenes (pipelines.realdata.dfd_indoor_split, grouped by
    overlapping views), so renders of the real evaluation scenes never reach training.
    """
    if _DFD_SCENE.search(scene):
        from defocus_cli.pipelines.realdata import dfd_indoor_split

        return dfd_indoor_split(scene)
    u = int(hashlib.sha256(f"split:{scene}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


_DFD_SCENE = re.compile(r"(^|/)indoor_\d{3}$")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def plan_samples(config: SynthConfig) -> tuple[list[SampleSpec], list[str]]:
    """All samples of the config, and the files that found no partner (RGB-D folders)."""
    specs: list[SampleSpec] = []
    unmatched: list[str] = []
    names = [s.name for s in config.sources]
    if len(set(names)) != len(names):
        raise InputError(f"RGB-D source names must differ, got {names}")
    for source in config.sources:
        pairs, lone_rgb, lone_depth = match_rgbd(source.rgb_dir, source.depth_dir, IMAGE_SUFFIXES)
        unmatched += [f"{p} (no depth)" for p in lone_rgb] + [f"{p} (no image)" for p in lone_depth]
        if not pairs:
            raise InputError(
                f"{source.rgb_dir}: no image matches a depth file in {source.depth_dir} by name"
            )
        for rgb, depth in pairs:
            key = rgb.relative_to(source.rgb_dir).with_suffix("").as_posix()
            scene = f"{source.name}/{key}"
            # the views of one Middlebury scene (view1 / view5, im0 / im1) share its split
            group = scene.rsplit("/", 1)[0] if is_middlebury_disparity(depth) else scene
            split = split_of(group, config.val_fraction, config.test_fraction)
            for k in range(config.samples_per_source):
                specs.append(SampleSpec(
                    name=f"{_slug(source.name)}-{_slug(key.replace('/', '_'))}-{k:02d}",
                    kind="rgbd", source=source.name, scene=scene, index=k, split=split,
                    rgb_path=rgb, depth_path=depth,
                ))
    for i in range(config.procedural):
        scene = f"procedural/{i:06d}"
        specs.append(SampleSpec(
            name=f"procedural-{i:06d}", kind="procedural", source="procedural", scene=scene,
            index=0, split=split_of(scene, config.val_fraction, config.test_fraction),
        ))
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise InputError(f"two samples would both be named {s.name!r}; rename a source")
        seen.add(s.name)
    return specs, unmatched


# --------------------------------------------------------------------------------------------
# procedural scenes


def _texture_files(folder: Path) -> tuple[Path, ...]:
    files = tuple(sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ))
    if not files:
        raise InputError(f"{folder}: --textures folder holds no images")
    return files


@functools.lru_cache(maxsize=64)
def _load_texture(path: Path) -> np.ndarray:
    return read_image(path).pixels


def _photo_patch(rng: np.random.Generator, photo: np.ndarray, w: int, h: int) -> np.ndarray:
    """A (h, w) patch of a photo, never enlarged (an enlarged patch would not be sharp)."""
    ph, pw = photo.shape[:2]
    if ph < h or pw < w:  # mirror-tile small photos: still sharp, unlike up-sampling
        photo = np.pad(photo, ((0, max(0, h - ph)), (0, max(0, w - pw)), (0, 0)), mode="symmetric")
        ph, pw = photo.shape[:2]
    zoom = rng.uniform(1.0, max(1.0, min(2.0, pw / w, ph / h)))
    cw, ch = min(pw, int(round(w * zoom))), min(ph, int(round(h * zoom)))
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    patch = photo[y0:y0 + ch, x0:x0 + cw]
    if (cw, ch) != (w, h):
        patch = cv2.resize(patch, (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = rng.uniform(0.75, 1.2)
    return np.clip(patch * gain, 0.0, 1.0).astype(np.float32)


def _builtin_texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Procedural texture with edges at many scales: noise, stripes, checkers, dots, lines."""
    colors = rng.random((4, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 5)
    if kind == 0:  # multi-octave value noise, partly thresholded into hard-edged blobs
        t = np.zeros((h, w), np.float32)
        for octave in range(1, 6):
            cells = 2 ** octave
            small = rng.random((cells + 1, cells + 1)).astype(np.float32)
            t += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / octave
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        if rng.random() < 0.6:
            t = (t > rng.uniform(0.3, 0.7)).astype(np.float32) * 0.7 + t * 0.3
    elif kind == 1:  # stripes
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 40)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == 2:  # rotated checkerboard
        theta, period = rng.uniform(0, np.pi), rng.uniform(4, 48)
        u = (xx * np.cos(theta) + yy * np.sin(theta)) / period
        v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif kind == 3:  # dots
        canvas = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(20, 200))):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(canvas, c, int(rng.integers(1, 12)), float(rng.uniform(0.3, 1.0)), -1)
        t = canvas
    else:  # random lines
        canvas = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(10, 80))):
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(canvas, p1, p2, float(rng.uniform(0.3, 1.0)), int(rng.integers(1, 5)))
        t = canvas
    t = np.clip(t, 0, 1)[..., None]
    base = colors[0] * (1 - t) + colors[1] * t
    # fine noise on top, so flat areas are not entirely free of texture
    base += rng.normal(0, 0.03, base.shape).astype(np.float32)
    return np.clip(base, 0, 1).astype(np.float32)


def _plane_inverse_depth(rng: np.random.Generator, w: int, h: int, z: float, tilt: float) -> np.ndarray:
    """1/depth of a plane through depth z at the image centre: affine in pixel coordinates."""
    gy, gx = rng.normal(0, tilt, 2) / max(w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    inv = 1.0 / z * (1.0 + gx * (xx - w / 2) + gy * (yy - h / 2))
    return np.maximum(inv, 1.0 / (50.0 * z))  # keep far points finite


def make_procedural_scene(
    rng: np.random.Generator, width: int, height: int, textures: tuple[Path, ...] | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A sharp image with exact depth: a background plane and occluding textured shapes.

    Returns rgb (H, W, 3) float32 in [0, 1], depth (H, W) float32 metres, and a description.
    Shapes have hard edges so colour and depth edges coincide exactly (no mixed pixels).
    """

    def texture() -> np.ndarray:
        if textures:
            photo = _load_texture(textures[int(rng.integers(0, len(textures)))])
            return _photo_patch(rng, photo, width, height)
        return _builtin_texture(rng, width, height)

    # depth ratios of everyday scenes; a moderate far/near ratio keeps S1 ~ U[x_near, x_far]
    # from putting the focus at the far end almost every time
    z_near = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    z_far = z_near * float(np.exp(rng.uniform(np.log(2.0), np.log(12.0))))
    rgb = texture()
    inv = _plane_inverse_depth(rng, width, height, z_far, tilt=rng.uniform(0.0, 1.5))
    depth = (1.0 / inv).astype(np.float64)
    n_shapes = int(rng.integers(3, 13))
    shapes = []
    for _ in range(n_shapes):
        z = float(np.exp(rng.uniform(np.log(z_near), np.log(z_far))))
        mask = np.zeros((height, width), np.uint8)
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        size = float(rng.uniform(0.06, 0.45)) * max(width, height)
        kind = ("ellipse", "box", "polygon", "bar")[int(rng.integers(0, 4))]
        if kind == "ellipse":
            axes = (int(size * rng.uniform(0.3, 1.0)), int(size * rng.uniform(0.3, 1.0)))
            cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif kind == "box":
            box = ((cx, cy), (size * rng.uniform(0.4, 1.6), size * rng.uniform(0.4, 1.6)),
                   float(rng.uniform(0, 90)))
            cv2.fillPoly(mask, [cv2.boxPoints(box).astype(np.int32)], 1)
        elif kind == "polygon":
            n = int(rng.integers(3, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = size * rng.uniform(0.3, 1.0, n)
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
        else:
            theta = rng.uniform(0, np.pi)
            d = np.array([np.cos(theta), np.sin(theta)]) * size
            p1 = (int(cx - d[0]), int(cy - d[1]))
            p2 = (int(cx + d[0]), int(cy + d[1]))
            cv2.line(mask, p1, p2, 1, max(2, int(size * rng.uniform(0.05, 0.25))))
        shape_depth = 1.0 / _plane_inverse_depth(rng, width, height, z, tilt=rng.uniform(0.0, 0.6))
        visible = (mask > 0) & (shape_depth < depth)  # z-buffer: occlusion matches depth
        if not visible.any():
            continue
        tex = texture()
        rgb[visible] = tex[visible]
        depth[visible] = shape_depth[visible]
        shapes.append({"kind": kind, "depth": round(z, 4)})
    info = {"z_near": z_near, "z_far": z_far, "shapes": shapes,
            "textures": "photos" if textures else "built-in"}
    return rgb, depth.astype(np.float32), info


# --------------------------------------------------------------------------------------------
# one sample


def _fill_invalid(depth: np.ndarray) -> np.ndarray:
    """Invalid (NaN) depth takes its nearest valid neighbour's value, for rendering only."""
    invalid = ~np.isfinite(depth)
    if not invalid.any():
        return depth
    _, labels = cv2.distanceTransformWithLabels(
        invalid.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    valid_values = depth[~invalid]
    # labels number the zero (valid) pixels in raster order, starting at 1
    return np.where(invalid, valid_values[labels - 1], depth).astype(np.float32)


def _load_rgbd(spec: SampleSpec, config: SynthConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    image = read_image(spec.rgb_path)
    dmap = read_depth(spec.depth_path, config.depth_encoding)
    rgb, depth = image.pixels, dmap.depth
    notes = list(image.notes) + list(dmap.notes)
    h, w = rgb.shape[:2]
    if depth.shape != (h, w):
        dh, dw = depth.shape
        if abs(dw / dh - w / h) > 0.01:
            raise InputError(
                f"{spec.depth_path}: depth is {dw}x{dh} but the image {spec.rgb_path.name} is {w}x{h}"
            )
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        notes.append(f"depth resized from {dw}x{dh} (nearest)")
    if config.max_side and max(h, w) > config.max_side:
        f = config.max_side / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
        notes.append(f"reduced from {w}x{h} to {size[0]}x{size[1]}")
    info = {"rgb_path": str(spec.rgb_path), "depth_path": str(spec.depth_path),
            "depth_encoding": dmap.encoding, "depth_unit": dmap.unit, "notes": notes}
    return np.ascontiguousarray(rgb, dtype=np.float32), depth, info


def render_camera(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator, c_max: float = C_MAX,
                  max_layers: int = MAX_LAYERS, depth_percentiles: tuple[float, float] = (0.5, 99.5)
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The paper's random camera on one RGB-D scene, rendered layer by layer.

    rgb (H, W, 3) float32 in [0, 1]; depth (H, W) in any unit that grows with distance, NaN
    where unknown. x_near / x_far are ``depth_percentiles`` of the valid depth (depth is
    clipped to them); S1 ~ U[x_near, x_far], alpha ~ U[0, alpha_up] (Eq. 2 with ``c_max``).
    -> (render (H, W, 3) float32, sigma (H, W) float32 px with NaN where depth was unknown,
    {"S1", "alpha", "alpha_up", "x_near", "x_far", "layers"}).
    """
    valid = np.isfinite(depth)
    x_near, x_far = (float(v) for v in np.percentile(depth[valid], depth_percentiles))
    filled = np.clip(_fill_invalid(depth), x_near, x_far)
    focus = float(rng.uniform(x_near, x_far))
    if x_far > x_near:
        alpha_up = float(alpha_upper_bound(x_near, x_far, focus, c_max))
        alpha = float(rng.uniform(0.0, alpha_up))
    else:  # a flat scene: every depth is in focus whatever the aperture
        alpha_up, alpha = 0.0, 0.0
    signed = signed_sigma_from_depth(filled, focus, alpha)
    layers = layers_from_signed_sigma(signed, max_layers=max_layers)
    out = render_layers(rgb, layers)
    sigma = np.abs(signed).astype(np.float32)
    sigma[~valid] = np.nan
    return out, sigma, {"S1": focus, "alpha": alpha, "alpha_up": alpha_up, "x_near": x_near,
                        "x_far": x_far, "layers": layers.count}


def render_sample(spec: SampleSpec, config: SynthConfig, textures: tuple[Path, ...] | None):
    """-> (image (H, W, 3) uint8, sigma (H, W) float32 with NaN, mask (H, W) uint8, record,
    sharp (H, W, 3) uint8: the all-in-focus scene the image was rendered from)."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.entropy(config.seed)))
    if spec.kind == "procedural":
        width, height = config.procedural_size
        rgb, depth, info = make_procedural_scene(rng, width, height, textures)
        info = {"procedural": info, "depth_unit": "m"}
    else:
        rgb, depth, info = _load_rgbd(spec, config)
    out, sigma, camera = render_camera(rgb, depth, rng, config.c_max, config.max_layers,
                                       config.depth_percentiles)
    focus, alpha, alpha_up = camera["S1"], camera["alpha"], camera["alpha_up"]
    x_near, x_far, layer_count = camera["x_near"], camera["x_far"], camera["layers"]
    valid = np.isfinite(sigma)
    image = np.round(out * 255.0).astype(np.uint8)
    mask = blur_mask(sigma, config.mask_threshold)
    h, w = sigma.shape
    record = {
        "name": spec.name,
        "split": spec.split,
        "source": spec.source,
        "scene": spec.scene,
        "kind": spec.kind,
        "sample_index": spec.index,
        "seed": config.seed,
        "sample_seed": spec.entropy(config.seed),
        "width": w,
        "height": h,
        "S1": focus,
        "alpha": alpha,
        "alpha_up": alpha_up,
        "c_max": config.c_max,
        "x_near": x_near,
        "x_far": x_far,
        "layers": layer_count,
        "sigma_max": float(np.nanmax(sigma)),
        "sigma_mean": float(np.nanmean(sigma)),
        "blurred_fraction": float((mask > 0).mean()),
        "invalid_fraction": float(1.0 - valid.mean()),
        "image": f"image/{spec.name}.png",
        "sigma": f"sigma/{spec.name}.npy",
        "mask": f"mask/{spec.name}.png",
        **info,
    }
    sharp = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, sigma.astype(np.float32), mask, record, sharp


def _write_png(path: Path, data: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), data, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise ProcessingError(f"{path}: could not write PNG")


def _progress_dir(output: Path) -> Path:
    return output / ".progress"


def generate_sample(spec: SampleSpec, config: SynthConfig, textures: tuple[Path, ...] | None) -> dict[str, Any]:
    """Render one sample and write its files; the progress record is written last."""
    image, sigma, mask, record, sharp = render_sample(spec, config, textures)
    out = config.output
    _write_png(out / "image" / f"{spec.name}.png", np.ascontiguousarray(image[..., ::-1]))
    save_npy(out / "sigma" / f"{spec.name}.npy", sigma)
    _write_png(out / "mask" / f"{spec.name}.png", mask)
    _write_png(out / "sharp" / f"{spec.name}.png", np.ascontiguousarray(sharp[..., ::-1]))
    save_json(_progress_dir(out) / f"{spec.name}.json", record)
    return record


def _worker_init() -> None:
    # one process per core already: OpenCV's own threads would only compete with each other
    cv2.setNumThreads(1)


def _worker(spec: SampleSpec, config: SynthConfig, textures) -> tuple[str, dict | None, str | None, int]:
    """-> (name, record or None, error message or None, exit code of the error)."""
    try:
        return spec.name, generate_sample(spec, config, textures), None, 0
    except DefocusError as e:
        return spec.name, None, str(e), e.exit_code
    except (OSError, ValueError, MemoryError) as e:
        return spec.name, None, f"{spec.rgb_path or spec.name}: {type(e).__name__}: {e}", 1


# --------------------------------------------------------------------------------------------
# the run


def _check_existing(config: SynthConfig) -> None:
    meta = _progress_dir(config.output) / "config.json"
    current = {k: config.to_dict()[k] for k in CONTENT_OPTIONS}
    current["textures"] = str(config.textures.resolve()) if config.textures else None
    current["version"] = __version__
    if meta.is_file():
        previous = json.loads(meta.read_text())
        changed = [k for k in current if previous.get(k) != current[k]]
        if changed:
            raise InputError(
                f"{config.output}: holds a dataset made with other options ({', '.join(changed)}); "
                "use a new folder, or delete this one to start over"
            )
    else:
        save_json(meta, current)


def _counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_split = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    by_source: dict[str, dict[str, int]] = {}
    scenes: dict[str, set[str]] = {s: set() for s in SPLITS}
    for r in records:
        src = by_source.setdefault(r["source"], {"samples": 0, **{s: 0 for s in SPLITS}})
        src["samples"] += 1
        src[r["split"]] += 1
        scenes[r["split"]].add(r["scene"])
    return {"samples": len(records), "by_split": by_split,
            "scenes_by_split": {s: len(v) for s, v in scenes.items()}, "by_source": by_source}


def run_synth(
    config: SynthConfig,
    on_progress: Callable[[str, str, int, int], None] | None = None,
) -> SynthReport:
    """Generate (or complete) the dataset of ``config``; see the module docstring for the layout.

    on_progress(sample name, "done" | "skipped" | "failed", finished, total) is called as
    samples finish. Failed samples are reported, not raised; the manifest lists finished ones.
    """
    specs, unmatched = plan_samples(config)
    textures = _texture_files(config.textures) if config.textures else None
    out = config.output
    try:
        for sub in ("image", "sigma", "mask", "sharp", ".progress"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the dataset folder ({e.strerror})") from None
    _check_existing(config)

    records: dict[str, dict[str, Any]] = {}
    todo: list[SampleSpec] = []
    for spec in specs:
        rec_path = _progress_dir(out) / f"{spec.name}.json"
        files = [out / "image" / f"{spec.name}.png", out / "sigma" / f"{spec.name}.npy",
                 out / "mask" / f"{spec.name}.png", out / "sharp" / f"{spec.name}.png"]
        if rec_path.is_file() and all(f.is_file() for f in files):
            records[spec.name] = json.loads(rec_path.read_text())
        else:
            todo.append(spec)
    report = SynthReport(planned=len(specs), generated=0, skipped=len(records), unmatched=unmatched)
    total = len(specs)
    finished = len(records)
    if on_progress:
        on_progress("", "skipped", finished, total)

    def collect(name: str, record: dict | None, error: str | None, code: int) -> None:
        nonlocal finished
        finished += 1
        if record is not None:
            records[name] = record
            report.generated += 1
        else:
            report.failures.append((name, error or "unknown error"))
            report.exit_code = max(report.exit_code, code)
        if on_progress:
            on_progress(name, "done" if record is not None else "failed", finished, total)

    if config.workers == 1:
        for spec in todo:
            collect(*_worker(spec, config, textures))
    else:
        # "spawn", not the default fork: a child forked after OpenCV started its thread pool can
        # deadlock in its first parallel cv2 call
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=context,
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_worker, spec, config, textures) for spec in todo]
            for fut in as_completed(futures):
                collect(*fut.result())

    # the split is re-derived from the plan, so a re-run also updates an older dataset's splits
    ordered = sorted((dict(records[s.name], split=s.split) for s in specs if s.name in records),
                     key=lambda r: r["name"])
    write_manifest(out, (dict(sorted(r.items())) for r in ordered))
    report.counts = _counts(ordered)
    save_json(out / "dataset.json", {
        "generator": GENERATOR,
        "version": __version__,
        "format": {
            "image": "image/NAME.png: 8-bit RGB, the defocused image",
            "sigma": "sigma/NAME.npy: float32 (H, W) Gaussian sigma in px at each pixel's "
                     "position in the sharp image; NaN where the source depth was invalid",
            "mask": f"mask/NAME.png: 8-bit, {MASK_BLURRED} where sigma >= {config.mask_threshold:g} px "
                    f"(blurred), {MASK_SHARP} below, {MASK_UNKNOWN} where sigma is NaN (unknown)",
            "sharp": "sharp/NAME.png: 8-bit RGB, the all-in-focus scene the image was rendered from",
            "manifest": "manifest.jsonl: one JSON object per sample, sorted by name",
        },
        "units": {
            "sigma": "Gaussian blur sigma in pixels of the sample's image; sigma = c / 4 with "
                     "c = alpha * |x - S1| / x the circle-of-confusion diameter (paper Eq. 1)",
            "alpha": "px (CoC diameter at infinite depth)",
            "S1, x_near, x_far": "the source's depth unit (manifest depth_unit: m or relative)",
        },
        "camera_sampling": "S1 ~ U[x_near, x_far]; alpha ~ U[0, alpha_up], alpha_up from Eq. 2 "
                           "with c_max; x_near/x_far = depth percentiles, depth clipped to them",
        "mask_threshold_px": config.mask_threshold,
        "sigma_max_px": config.c_max / 4.0,
        "splits": "by source scene: DFD indoor scenes take the real dfd-real split "
                  "(pipelines.realdata.dfd_indoor_split); other scenes: sha256('split:' + scene) "
                  "decides, independent of the seed "
                  f"(val {config.val_fraction:g}, test {config.test_fraction:g})",
        "seed": config.seed,
        "options": config.to_dict(),
        "counts": report.counts,
        "failures": len(report.failures),
    })
    return report
