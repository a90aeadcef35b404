"""Training data for DMENet: the three sets of the paper (Sec. 4.1) and their augmentation.

- D_S, synthetic with labels: a ``synth`` dataset folder (contract of the synth pipeline)::

      DATASET/image/NAME.png     8-bit RGB defocused image
      DATASET/sigma/NAME.npy     float32 (H, W) Gaussian sigma in px; NaN = no label
      DATASET/mask/NAME.png      blur mask (io.datasets; not used for D_S)
      DATASET/manifest.jsonl     {"name": ..., "split": "train"|"val"|"test"} per sample
      DATASET/dataset.json       free-form description, copied into the run's metadata

- D_R, real without labels: any folder of photos, or a dataset folder (its ``train`` split).
  Scenes an evaluation uses must be held out: ``exclude`` names them. Optionally with
  pseudo-labels: another estimator's maps of the same photos (``MAPS/NAME.defocus.npy``, sigma in
  px of the photo, from `defocus estimate REAL -o MAPS --maps npy`), cropped with the photo.
- D_B, real with binary blur masks: a dataset folder with image/ + mask/ (+ manifest.jsonl), or a
  folder of masks named like the D_R photos. Mask values follow ops.masks: 255 blurred, 0 sharp,
  any other value unknown (NaN in the labels, left out of L_S).

Every mini-batch is a pure function of (seed, step, rank): the synthetic set is walked epoch by
epoch in a seeded permutation, the real sets are drawn per step, and augmentation (random crop,
horizontal flip, rotation by a multiple of 90 degrees, which is exact for the labels) uses a
generator seeded by (seed, step, rank, set). A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, with no loader state in the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from defocus_cli.errors import InputError
from defocus_cli.io.datasets import (
    has_manifest,
    read_jsonl,
    read_manifest,
    read_mask,
    write_manifest,
    write_mask,
)
from defocus_cli.io.images import IMAGE_SUFFIXES, load_map, read_image, save_npy, write_image
from defocus_cli.maps import map_path_for
from defocus_cli.ops.masks import blur_mask, mask_labels

# stream ids that keep the augmentation generators of the three sets independent
_SYNTH, _REAL, _MASKED = 0, 1, 2


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] through the project's one image reader (EXIF-oriented)."""
    return read_image(path).pixels


def write_toy_dataset(root: str | Path, *, n_train: int = 8, n_val: int = 2, size: int = 64,
                      seed: int = 0) -> Path:
    """Write a tiny labelled dataset in the synth format (for smoke tests and benchmarks).

    Each sample is a random texture blurred with a Gaussian of one sigma (left half) and another
    (right half), drawn in [0, 5] px; the sigma map holds them, with NaN in a 4-px border column
    at the seam where the blur mixes both; the mask is blurred where sigma >= 1 px, unknown at
    the seam. Returns ROOT.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("image", "sigma", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_train + n_val):
        name = f"toy_{i:04d}"
        tex = cv2.resize(rng.random((size // 4, size // 4, 3), dtype=np.float32), (size, size),
                         interpolation=cv2.INTER_NEAREST)
        s1, s2 = rng.uniform(0.0, 5.0, size=2)
        half = size // 2
        out = np.empty_like(tex)
        for sl, s in ((slice(0, half), s1), (slice(half, size), s2)):
            out[:, sl] = cv2.GaussianBlur(tex, (0, 0), s)[:, sl] if s > 0.05 else tex[:, sl]
        sigma = np.empty((size, size), np.float32)
        sigma[:, :half], sigma[:, half:] = s1, s2
        sigma[:, half - 2:half + 2] = np.nan
        write_image(root / "image" / f"{name}.png", out)
        save_npy(root / "sigma" / f"{name}.npy", sigma)
        write_mask(root / "mask" / f"{name}.png", blur_mask(sigma, 1.0))
        entries.append({"name": name, "split": "train" if i < n_train else "val"})
    write_manifest(root, entries)
    (root / "dataset.json").write_text(json.dumps({"kind": "toy", "seed": seed, "size": size}))
    return root


def is_dataset_folder(root: Path) -> bool:
    return (root / "image").is_dir() and has_manifest(root)


@dataclass(frozen=True)
class SynthSet:
    """D_S: image / sigma file pairs of one split."""

    root: Path
    names: tuple[str, ...]

    @classmethod
    def open(cls, root: str | Path, split: str) -> SynthSet:
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"{root}: synthetic dataset folder not found (make one with `defocus synth`)")
        for sub in ("image", "sigma"):
            if not (root / sub).is_dir():
                raise InputError(f"{root}: not a synth dataset (no {sub}/ folder)")
        names = tuple(e["name"] for e in read_manifest(root) if e["split"] == split)
        for name in names[:1] + names[-1:]:  # cheap sanity check; every file is checked when read
            for path in (root / "image" / f"{name}.png", root / "sigma" / f"{name}.npy"):
                if not path.is_file():
                    raise InputError(f"{path}: listed in manifest.jsonl but missing")
        return cls(root, names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.names[i]
        rgb = _read_rgb(self.root / "image" / f"{name}.png")
        sigma = load_map(self.root / "sigma" / f"{name}.npy")
        if sigma.shape != rgb.shape[:2]:
            raise InputError(f"{self.root / 'sigma' / name}.npy: shape {sigma.shape} differs from "
                             f"its image's {rgb.shape[:2]}")
        return rgb, sigma

    def description(self) -> dict:
        meta_path = self.root / "dataset.json"
        meta = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{meta_path}: not JSON ({exc})") from exc
        return {"path": str(self.root), "samples": len(self), "dataset_json": meta}


def read_exclusions(path: str | Path | None) -> set[str]:
    """Names (file stems) to hold out of the real sets.

    A ``.jsonl`` manifest excludes every entry whose split is not "train", by its "name" and, where
    it has one, by the last part of its "scene" (a synth manifest's ``dfd-indoor/indoor_017``
    holds out the real photo ``indoor_017.jpg``); any other file is a list of names, one per line
    (``#`` starts a comment).
    """
    if path is None:
        return set()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: exclusion list not found")
    if path.suffix == ".jsonl":
        names = set()
        for lineno, e in enumerate(read_jsonl(path), 1):
            if "name" not in e or "split" not in e:
                raise InputError(f"{path}: entry {lineno} lacks 'name' or 'split' (a manifest entry needs both)")
            if e["split"] != "train":
                names.add(e["name"])
                if e.get("scene"):
                    names.add(Path(str(e["scene"])).name)
        return names
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(Path(line).stem)
    return names


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def real_photos(root: str | Path, exclude: set[str]) -> list[Path]:
    """D_R: the photos of a folder (or a dataset folder's train split) minus ``exclude``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: real-photo folder not found")
    if is_dataset_folder(root):
        names = [e["name"] for e in read_manifest(root) if e["split"] == "train"]
        by_stem = {p.stem: p for p in _images_in(root / "image")}
        photos = [by_stem[n] for n in names if n in by_stem]
    else:
        photos = _images_in(root)
    return [p for p in photos if p.stem not in exclude]


def real_photo_maps(folder: str | Path, photos: list[Path]) -> list[Path]:
    """The pseudo-label map of each D_R photo: ``folder/NAME.defocus.npy``, in the photos' order.

    Raises InputError naming the first photos without a map (every photo needs one, so that a
    real crop always comes with its target).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: --real-maps folder not found")
    maps = [map_path_for(p, root) for p in photos]
    missing = [p.name for p, m in zip(photos, maps) if not m.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{root}: no map for {shown} of the --real photos; make them with "
                         f"`defocus estimate REAL -o {root} --maps npy`")
    return maps


def masked_photos(masks: str | Path, photos: list[Path] | None, exclude: set[str]) -> list[tuple[Path, Path]]:
    """D_B: (photo, mask) pairs from a dataset folder (image/ + mask/, train split) or from a
    folder of masks named like ``photos`` (matched by file stem)."""
    root = Path(masks)
    if not root.is_dir():
        raise InputError(f"{root}: mask folder not found")
    if (root / "mask").is_dir() and (root / "image").is_dir():
        names = None
        if has_manifest(root):
            names = {e["name"] for e in read_manifest(root) if e["split"] == "train"}
        mask_by_stem = {p.stem: p for p in _images_in(root / "mask")}
        pairs = [(p, mask_by_stem[p.stem]) for p in _images_in(root / "image")
                 if p.stem in mask_by_stem and (names is None or p.stem in names)]
    else:
        if not photos:
            raise InputError(f"{root}: a folder of masks needs the photos they belong to (--real DIR), "
                             "or pass a dataset folder with image/ and mask/")
        mask_by_stem = {p.stem: p for p in _images_in(root)}
        pairs = [(p, mask_by_stem[p.stem]) for p in photos if p.stem in mask_by_stem]
    return [(p, m) for p, m in pairs if p.stem not in exclude]


def augment(arrays: list[np.ndarray], crop: int, rng: np.random.Generator, pad_values: list[float]) -> list[np.ndarray]:
    """Random crop (crop x crop), horizontal flip and rotation by k*90 degrees, applied alike to
    every array ((H, W) or (H, W, C)). A side shorter than ``crop`` is padded with the array's
    ``pad_values`` entry (NaN for labels, so padding is masked out of the losses; images are
    reflect-padded and ignore the value)."""
    h, w = arrays[0].shape[:2]
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        padded = []
        for a, value in zip(arrays, pad_values):
            spec = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
            if np.isnan(value):
                padded.append(np.pad(a, spec, mode="constant", constant_values=np.nan))
            else:
                padded.append(np.pad(a, spec, mode="reflect" if ph < h and pw < w else "edge"))
        arrays = padded
        h, w = arrays[0].shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    flip = bool(rng.integers(0, 2))
    k = int(rng.integers(0, 4))
    out = []
    for a in arrays:
        a = a[y:y + crop, x:x + crop]
        if flip:
            a = a[:, ::-1]
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a))
    return out


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


@dataclass(frozen=True)
class BatchPlan:
    """How a step's mini-batches are drawn: sizes, crop, seed, sharding and the label scale."""

    batch: int
    crop: int
    seed: int
    rank: int
    world: int
    sigma_max: float

    def __post_init__(self) -> None:
        if self.crop % 16 or self.crop < 32:
            raise InputError(f"--crop must be a multiple of 16 and >= 32, got {self.crop}")
        if self.batch < 1:
            raise InputError(f"--batch must be >= 1, got {self.batch}")


def steps_per_epoch(n_train: int, batch: int, world: int) -> int:
    """Optimiser steps in one pass over D_S (the last incomplete global batch is dropped)."""
    return max(1, n_train // (batch * world))


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset indexed by the global step: item ``s`` is this rank's batch for step s.

    Returns a dict: "synth" (B, 3, c, c) float32 RGB [0, 1], "target" (B, 1, c, c) sigma/sigma_max
    with NaN holes; "real" (B, 3, c, c) when D_R exists, with "real_target" (B, 1, c, c) its
    pseudo-labels / sigma_max when ``real_maps`` is given; "masked" (B, 3, c, c) and "mask"
    (B, 1, c, c) in {0, 1} when D_B exists.
    """

    def __init__(self, synth: SynthSet, real: list[Path], masked: list[tuple[Path, Path]], plan: BatchPlan,
                 real_maps: list[Path] | None = None) -> None:
        if len(synth) == 0:
            raise InputError(f"{synth.root}: the train split is empty")
        if real_maps is not None and len(real_maps) != len(real):
            raise ValueError(f"StepBatches: {len(real_maps)} maps for {len(real)} real photos")
        self.synth, self.real, self.masked, self.plan = synth, real, masked, plan
        self.real_maps = real_maps
        self.spe = steps_per_epoch(len(synth), plan.batch, plan.world)
        self._perm_epoch = -1
        self._perm = np.arange(0)

    def __len__(self) -> int:  # indexed by step; the sampler bounds it
        return 2**62

    def _synth_indices(self, step: int) -> np.ndarray:
        p = self.plan
        epoch, pos = divmod(step, self.spe)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([p.seed, epoch]).permutation(len(self.synth))
            self._perm_epoch = epoch
        start = (pos * p.world + p.rank) * p.batch
        return self._perm[(start + np.arange(p.batch)) % len(self.synth)]

    def _draw(self, n: int, step: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.plan.seed, step, self.plan.rank, stream, 7])
        return rng.choice(n, size=self.plan.batch, replace=n < self.plan.batch)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        p = self.plan
        out: dict[str, torch.Tensor] = {}
        rng = np.random.default_rng([p.seed, step, p.rank, _SYNTH])
        imgs, targets = [], []
        for i in self._synth_indices(step):
            rgb, sigma = self.synth.load(int(i))
            rgb, sigma = augment([rgb, sigma], p.crop, rng, [0.0, np.nan])
            imgs.append(_chw(rgb))
            targets.append(torch.from_numpy(sigma / np.float32(p.sigma_max))[None])
        out["synth"] = torch.stack(imgs)
        out["target"] = torch.stack(targets)
        if self.real:
            rng = np.random.default_rng([p.seed, step, p.rank, _REAL])
            imgs, targets = [], []
            for i in self._draw(len(self.real), step, _REAL):
                rgb = _read_rgb(self.real[int(i)])
                if self.real_maps is None:
                    imgs.append(_chw(augment([rgb], p.crop, rng, [0.0])[0]))
                    continue
                sigma = load_map(self.real_maps[int(i)]).astype(np.float32)
                if sigma.shape != rgb.shape[:2]:
                    raise InputError(f"{self.real_maps[int(i)]}: map size {sigma.shape} differs from "
                                     f"{self.real[int(i)]}'s {rgb.shape[:2]}")
                rgb, sigma = augment([rgb, sigma], p.crop, rng, [0.0, np.nan])
                imgs.append(_chw(rgb))
                targets.append(torch.from_numpy(sigma / np.float32(p.sigma_max))[None])
            out["real"] = torch.stack(imgs)
            if targets:
                out["real_target"] = torch.stack(targets)
        if self.masked:
            rng = np.random.default_rng([p.seed, step, p.rank, _MASKED])
            imgs, masks = [], []
            for i in self._draw(len(self.masked), step, _MASKED):
                photo, mask_path = self.masked[int(i)]
                rgb, mask = _read_rgb(photo), mask_labels(read_mask(mask_path), np.float32)
                if mask.shape != rgb.shape[:2]:
                    raise InputError(f"{mask_path}: mask size {mask.shape} differs from {photo}'s {rgb.shape[:2]}")
                rgb, mask = augment([rgb, mask], p.crop, rng, [0.0, np.nan])
                imgs.append(_chw(rgb))
                masks.append(torch.from_numpy(mask)[None])
            out["masked"] = torch.stack(imgs)
            out["mask"] = torch.stack(masks)
        return out
