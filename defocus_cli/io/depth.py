"""Depth readers: every depth format `defocus synth` accepts, read into one convention.

A depth map inside the library is ``(H, W) float32``, larger = farther, NaN where the file has
no valid reading. Its unit is metres where the format says so (``DepthMap.unit == "m"``) and an
arbitrary scale otherwise (``"relative"``): the thin-lens CoC c = alpha |x - S1| / x only
depends on ratios of depths, so a depth known up to a scale factor is as good for synthesis.

Formats (``encoding`` names; ``"auto"`` picks one from the file, see :func:`detect_encoding`):

==========================  ===========================================================
``png-mm``                  16-bit single-channel PNG/TIFF in millimetres, 0 = no reading
                            (Kinect-style sensors; the DFD indoor set)
``synthia``                 SYNTHIA 16-bit 3-channel PNG: depth in centimetres in the
                            first (R) channel, as SYNDOF's generator reads it; 0 = invalid.
                            65535 (beyond the renderer's range, e.g. sky) is kept as 655.35 m
``syndof-cm``               SYNDOF's Middlebury files: named ``disp*.png`` but holding 16-bit
                            depth in centimetres (checked on Adirondack: the wall at 3.07 m is
                            larger than the chair's arm at 1.62 m, and the range matches the
                            scene's calibration); 0 = invalid
``middlebury-disparity``    Middlebury disparity, PFM (float px, inf = unknown) or 8-bit PNG
                            (0 = unknown). With a ``calib.txt`` beside the file:
                            depth = baseline * f / (d * s + doffs) in metres (s = calibration
                            width / map width, for reduced-size maps). Without one: 1 / d,
                            relative, with a note saying so (ignoring doffs distorts depth
                            ratios)
``sintel``                  MPI Sintel ``.dpt``: tag 202021.25, width, height, float32
                            depth (metres in Sintel's scene units)
``npy``                     ``.npy`` float (H, W) depth, taken as given (unit "relative");
                            non-finite or <= 0 = invalid
==========================  ===========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defocus_cli.errors import InputError
from defocus_cli.io.images import read_raw

ENCODINGS = ("auto", "png-mm", "synthia", "syndof-cm", "middlebury-disparity", "sintel", "npy")
DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".pfm", ".dpt", ".npy")
SINTEL_TAG = 202021.25
_MAX_SIDE = 100_000


@dataclass(frozen=True)
class DepthMap:
    """depth: (H, W) float32, larger = farther, NaN = invalid. unit: "m" or "relative"."""

    path: Path
    depth: np.ndarray
    unit: str
    encoding: str
    notes: tuple[str, ...] = ()

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.depth).mean())


# --------------------------------------------------------------------------------------------
# raw readers


def read_pfm(path: str | Path) -> np.ndarray:
    """Read a PFM file -> (H, W) or (H, W, 3) float32, top row first."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"Pf", b"PF"):
            raise InputError(f"{path}: not a PFM file (header {header[:8]!r}, expected Pf or PF)")
        dims = f.readline().split()
        while dims and dims[0].startswith(b"#"):
            dims = f.readline().split()
        try:
            width, height = int(dims[0]), int(dims[1])
            scale = float(f.readline().strip())
        except (IndexError, ValueError):
            raise InputError(f"{path}: corrupt PFM header") from None
        channels = 3 if header == b"PF" else 1
        if not (0 < width < _MAX_SIDE and 0 < height < _MAX_SIDE):
            raise InputError(f"{path}: PFM size {width}x{height} is not plausible")
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4")
    if data.size != width * height * channels:
        raise InputError(
            f"{path}: PFM holds {data.size} values, expected {width}x{height}x{channels} "
            "(truncated file?)"
        )
    a = data.reshape(height, width, channels) if channels == 3 else data.reshape(height, width)
    return np.ascontiguousarray(a[::-1]).astype(np.float32)  # PFM stores the bottom row first


def read_sintel_dpt(path: str | Path) -> np.ndarray:
    """Read an MPI Sintel ``.dpt`` depth file -> (H, W) float32."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 12:
        raise InputError(f"{path}: too short for a Sintel .dpt file ({len(raw)} bytes)")
    tag = float(np.frombuffer(raw[:4], "<f4")[0])
    width, height = (int(v) for v in np.frombuffer(raw[4:12], "<i4"))
    if tag != SINTEL_TAG:
        raise InputError(f"{path}: not a Sintel .dpt file (tag {tag}, expected {SINTEL_TAG})")
    if not (0 < width < _MAX_SIDE and 0 < height < _MAX_SIDE):
        raise InputError(f"{path}: .dpt size {width}x{height} is not plausible")
    n = width * height
    if len(raw) - 12 != 4 * n:
        raise InputError(
            f"{path}: .dpt holds {(len(raw) - 12) // 4} values, expected {width}x{height} "
            "(truncated file?)"
        )
    return np.frombuffer(raw[12:], "<f4").reshape(height, width).astype(np.float32)


def read_middlebury_calib(path: str | Path) -> dict[str, float]:
    """Parse a Middlebury ``calib.txt`` -> {"f", "doffs", "baseline", "width"} (f in px of the
    calibration width, baseline in mm)."""
    path = Path(path)
    text = path.read_text(errors="replace")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    try:
        cam0 = re.findall(r"[-+0-9.eE]+", values["cam0"])
        calib = {
            "f": float(cam0[0]),
            "doffs": float(values["doffs"]),
            "baseline": float(values["baseline"]),
            "width": float(values["width"]),
        }
    except (KeyError, IndexError, ValueError):
        raise InputError(
            f"{path}: not a Middlebury calib.txt (needs cam0, doffs, baseline and width)"
        ) from None
    if calib["f"] <= 0 or calib["baseline"] <= 0 or calib["width"] <= 0:
        raise InputError(f"{path}: calibration values must be positive, got {calib}")
    return calib


# --------------------------------------------------------------------------------------------
# detection and decoding


def detect_encoding(path: str | Path) -> str:
    """Pick an encoding from the suffix, the name and (for PNG/TIFF) the bit depth and channels."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dpt":
        return "sintel"
    if suffix == ".npy":
        return "npy"
    if suffix == ".pfm":
        return "middlebury-disparity"
    if suffix in (".png", ".tif", ".tiff"):
        a = read_raw(path, "a depth or disparity image")
        is_disp = path.stem.lower().startswith("disp")
        if a.dtype == np.uint16:
            if is_disp:
                return "syndof-cm"
            if a.ndim == 3:
                return "synthia"
            return "png-mm"
        if a.dtype == np.uint8 and is_disp:
            return "middlebury-disparity"
        raise InputError(
            f"{path}: an {a.dtype} image is not a depth format this tool knows (expected a 16-bit "
            "PNG in mm, SYNTHIA or SYNDOF 16-bit depth, a Middlebury disp*.png/.pfm, a Sintel "
            ".dpt or a .npy float array); convert it to .npy depth, larger = farther"
        )
    raise InputError(
        f"{path}: unsupported depth file type {suffix!r} (supported: "
        f"{', '.join(DEPTH_SUFFIXES)})"
    )


def _single_channel(a: np.ndarray, path: Path, channel: int = 0) -> np.ndarray:
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        return a[..., channel]
    raise InputError(f"{path}: expected a 2-D depth image, got shape {a.shape}")


def _disparity_to_depth(
    d: np.ndarray, path: Path, notes: list[str]
) -> tuple[np.ndarray, str]:
    d = d.astype(np.float64)
    calib_path = path.parent / "calib.txt"
    if calib_path.is_file():
        calib = read_middlebury_calib(calib_path)
        s = calib["width"] / d.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = d * s + calib["doffs"]
            depth = np.where(
                np.isfinite(d) & (d > 0) & (denom > 0),
                calib["baseline"] * calib["f"] / denom / 1000.0,
                np.nan,
            )
        notes.append(
            f"disparity converted with {calib_path.name}: depth = baseline*f/(d*{s:.4g} + doffs)"
        )
        return depth, "m"
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(np.isfinite(d) & (d > 0), 1.0 / d, np.nan)
    notes.append(
        "no calib.txt beside the disparity: depth taken as 1/disparity (relative); the true "
        "depth is baseline*f/(d + doffs), so depth ratios are approximate"
    )
    return depth, "relative"


def read_depth(path: str | Path, encoding: str = "auto") -> DepthMap:
    """Read a depth file -> :class:`DepthMap` ((H, W) float32, larger = farther, NaN invalid).

    Raises InputError naming the file for a missing, unreadable or unsupported file, or one
    without a single valid depth.
    """
    path = Path(path)
    if encoding not in ENCODINGS:
        raise InputError(f"unknown depth encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if not path.is_file():
        raise InputError(f"{path}: depth file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    notes: list[str] = []
    enc = detect_encoding(path) if encoding == "auto" else encoding
    unit = "m"
    if enc == "png-mm":
        a = read_raw(path, "a depth or disparity image")
        if a.dtype != np.uint16:
            raise InputError(f"{path}: png-mm depth must be 16-bit, got {a.dtype}")
        if a.ndim == 3:
            notes.append("multi-channel depth PNG: first channel used")
        raw = _single_channel(a, path).astype(np.float32)
        depth = np.where(raw > 0, raw / 1000.0, np.nan)
    elif enc in ("synthia", "syndof-cm"):
        a = read_raw(path, "a depth or disparity image")
        if a.dtype != np.uint16:
            raise InputError(f"{path}: {enc} depth must be 16-bit, got {a.dtype}")
        # OpenCV decodes BGR: the file's first (R) channel is the last here
        raw = _single_channel(a, path, channel=2 if a.ndim == 3 else 0).astype(np.float32)
        depth = np.where(raw > 0, raw / 100.0, np.nan)
        if enc == "syndof-cm" and encoding == "auto":
            notes.append(
                "16-bit disp*.png read as SYNDOF depth in centimetres, not disparity (pass the "
                "middlebury-disparity encoding to read it as disparity)"
            )
        if enc == "synthia" and (raw == 65535).any():
            notes.append("saturated SYNTHIA depth (65535 cm, e.g. sky) kept as 655.35 m")
    elif enc == "middlebury-disparity":
        if path.suffix.lower() == ".pfm":
            d = read_pfm(path)
            if d.ndim == 3:
                raise InputError(f"{path}: expected a single-channel (Pf) disparity PFM")
            depth, unit = _disparity_to_depth(d, path, notes)
        else:
            a = read_raw(path, "a depth or disparity image")
            d = _single_channel(a, path).astype(np.float64)
            with np.errstate(divide="ignore"):
                depth = np.where(d > 0, 1.0 / d, np.nan)  # 0 = unknown in Middlebury PNGs
            unit = "relative"
            notes.append(
                "disparity PNG: depth taken as 1/value (relative); its scale factor and the "
                "disparity offset are unknown, so depth ratios are approximate"
            )
    elif enc == "sintel":
        depth = read_sintel_dpt(path)
    elif enc == "npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable .npy array ({e})") from None
        a = np.squeeze(a)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise InputError(
                f"{path}: expected an (H, W) numeric depth array, got shape {a.shape} {a.dtype}"
            )
        depth = a.astype(np.float64)
        unit = "relative"
    else:  # pragma: no cover - ENCODINGS is checked above
        raise InputError(f"{path}: unknown depth encoding {enc!r}")

    depth = np.asarray(depth, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    depth = depth.astype(np.float32)
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise InputError(f"{path}: depth has shape {depth.shape}, expected (H, W)")
    if not np.isfinite(depth).any():
        raise InputError(f"{path}: no valid depth value in the file (all invalid or 0)")
    return DepthMap(path=path, depth=depth, unit=unit, encoding=enc, notes=tuple(notes))


# --------------------------------------------------------------------------------------------
# pairing RGB and depth folders


_MIDDLEBURY_DEPTH = re.compile(r"^disp(\d*)$", re.IGNORECASE)


def is_middlebury_disparity(path: Path) -> bool:
    """A Middlebury disparity file by its name (``disp0.pfm``, ``disp1.png``, ...)."""
    return bool(_MIDDLEBURY_DEPTH.match(path.stem)) and path.suffix.lower() in (".png", ".pfm")


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def match_rgbd(
    rgb_dir: str | Path, depth_dir: str | Path, image_suffixes: tuple[str, ...]
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair images under rgb_dir with depth files under depth_dir by relative path without
    suffix (``a/b/x.jpg`` with ``a/b/x.png``); Middlebury's ``dispN`` pairs with ``imN`` (2014
    and later) or ``viewN`` (2005, 2006) of the same folder, and is never taken for an image, so
    one folder may hold both (``rgb_dir == depth_dir``). Returns (pairs sorted by image path,
    unmatched images, unmatched depth files).
    """
    rgb_dir, depth_dir = Path(rgb_dir), Path(depth_dir)
    for d, what in ((rgb_dir, "--rgb"), (depth_dir, "--depth")):
        if not d.is_dir():
            raise InputError(f"{d}: {what} folder not found")
    images = sorted(
        p for p in rgb_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in image_suffixes and not _MIDDLEBURY_DEPTH.match(p.stem)
    )
    depths = sorted(
        p for p in depth_dir.rglob("*") if p.is_file() and p.suffix.lower() in DEPTH_SUFFIXES
    )
    if rgb_dir.resolve() == depth_dir.resolve():  # one folder: a photo is not its own depth
        photos = set(images)
        depths = [p for p in depths if p not in photos]
    by_key: dict[str, Path] = {}
    for p in depths:
        key = _key(p, depth_dir)
        m = _MIDDLEBURY_DEPTH.match(p.stem)
        if m and is_middlebury_disparity(p):
            for name in ("im", "view"):
                by_key.setdefault(Path(key).with_name(f"{name}{m.group(1) or '0'}").as_posix(), p)
            continue
        by_key.setdefault(key, p)
    pairs, lone_images = [], []
    used: set[Path] = set()
    for p in images:
        d = by_key.get(_key(p, rgb_dir))
        if d is None:
            lone_images.append(p)
        else:
            pairs.append((p, d))
            used.add(d)
    lone_depths = [p for p in depths if p not in used]
    return pairs, lone_images, lone_depths
