"""Dataset folders: the manifest and the blur masks, read and written in one place.

A dataset folder (made by `defocus synth` or `defocus eval prepare-dfd`) holds image/ and some of
sigma/, mask/, sharp/, radius/, with ``manifest.jsonl``: one JSON object per sample, with at
least "name" and usually "split" ("train", "val" or "test").

Blur masks are 8-bit PNGs: MASK_BLURRED (255) blurred, MASK_SHARP (0) sharp, any other value
(the datasets write MASK_UNKNOWN, 128) unknown. ``ops.masks`` turns them into labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from defocus_cli.errors import InputError
from defocus_cli.io.images import atomic_write, read_raw

MANIFEST = "manifest.jsonl"


def read_jsonl(path: str | Path, log: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped). InputError names the line.

    log: the file is an append-only log (a training run's metrics.jsonl) whose writer may have
    been killed mid-line: a last line without its newline is such a cut-short write, not a
    record, and is skipped.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = text.split("\n")[:-1] if log else text.splitlines()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not JSON ({exc})") from None
        if not isinstance(entry, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(entry).__name__}")
        out.append(entry)
    return out


def read_manifest(root: str | Path, require: tuple[str, ...] = ("name", "split")) -> list[dict[str, Any]]:
    """The entries of ROOT/manifest.jsonl, each checked to have the keys in ``require``."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: missing; a dataset folder needs {MANIFEST} (one JSON object per sample)")
    entries = read_jsonl(path)
    for lineno, entry in enumerate(entries, 1):
        missing = [k for k in require if k not in entry]
        if missing:
            raise InputError(f"{path}: entry {lineno} ({entry.get('name', '?')!r}) lacks "
                             f"{', '.join(repr(k) for k in missing)}")
    return entries


def write_manifest(root: str | Path, entries: Iterable[dict[str, Any]]) -> Path:
    """Write ROOT/manifest.jsonl atomically, one compact JSON object per line, in the given order."""
    path = Path(root) / MANIFEST
    text = "".join(json.dumps(e, sort_keys=False) + "\n" for e in entries)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def has_manifest(root: str | Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def read_mask(path: str | Path) -> np.ndarray:
    """A blur mask PNG -> (H, W) uint8 (MASK_BLURRED / MASK_SHARP / other = unknown)."""
    return read_raw(path, "a blur mask", cv2.IMREAD_GRAYSCALE)


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write an (H, W) uint8 blur mask as PNG, atomically."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"write_mask: expected (H, W) uint8, got {mask.shape} {mask.dtype}")
    path = Path(path)
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), mask):
            raise InputError(f"{path}: could not write mask")
    return path
