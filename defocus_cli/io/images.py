"""Reading and writing images and maps: the one place that touches image files.

Inside the library an image is ``(H, W, 3) float32 RGB in [0, 1]`` and a map is ``(H, W)
float32``. Reading handles JPEG/PNG/TIFF/WebP/BMP, 8 and 16 bit, greyscale, RGBA/LA (alpha
dropped, with a note), palette, CMYK and EXIF orientation, and refuses decompression bombs.
Every write is atomic: it goes to a temporary file in the target folder, then is renamed.

Map files (units: Gaussian sigma in pixels of the image the map belongs to):
- ``.npy``: float32 sigma, exact.
- 16-bit PNG: ``round(sigma * PNG16_SCALE)``, i.e. 1 unit = 0.001 px, saturating at 65.535 px.
- preview PNG: 8-bit colour map (inferno), for people only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from PIL import ExifTags, UnidentifiedImageError
from PIL import Image as PILImage

from defocus_cli.errors import InputError

#: 16-bit PNG maps store round(value * PNG16_SCALE)
PNG16_SCALE = 1000.0
#: refuse images above this many pixels (decompression bombs); 24 MP photos are far below it
MAX_PIXELS = 250_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
_EXIF_KEEP = ("Make", "Model", "FocalLength", "FNumber", "SubjectDistance", "FocalLengthIn35mmFilm",
              "FocalPlaneXResolution", "FocalPlaneYResolution", "FocalPlaneResolutionUnit",
              "ExifImageWidth", "ExifImageHeight", "Orientation", "LensModel")

_UMASK = os.umask(0)
os.umask(_UMASK)

PILImage.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a message naming the file


@dataclass
class Image:
    """A decoded photo. ``pixels``: (H, W, 3) float32 RGB in [0, 1], EXIF orientation applied."""

    path: Path
    pixels: np.ndarray
    bit_depth: int  # 8 or 16: of the source file, so outputs can match it
    format: str  # "JPEG", "PNG", ...
    notes: list[str] = field(default_factory=list)
    exif: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.pixels.shape[1], self.pixels.shape[0]


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success,
    delete it on failure, so a reader never sees a half-written file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise InputError(f"{path.parent}: cannot write here ({e.strerror})") from None
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# reading


def _exif_dict(im: PILImage.Image) -> dict[str, Any]:
    try:
        raw = im.getexif()
    except (OSError, ValueError, SyntaxError):  # malformed EXIF is not worth failing a photo for
        return {}
    tags = dict(raw)
    try:
        tags.update(raw.get_ifd(ExifTags.IFD.Exif))
    except (KeyError, OSError, ValueError):
        pass
    out = {}
    for tag, value in tags.items():
        name = ExifTags.TAGS.get(tag)
        if name in _EXIF_KEEP:
            try:
                out[name] = float(value) if not isinstance(value, (str, bytes)) else str(value).strip("\x00 ")
            except (TypeError, ValueError):
                continue
    return out


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (1..8) to an (H, W, ...) array."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.swapaxes(x, 0, 1)[:, ::-1],
        7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
        8: lambda x: np.swapaxes(x, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _is_16bit(im: PILImage.Image, path: Path) -> bool:
    if im.mode.startswith("I;16") or im.mode in ("I", "RGB;16", "RGBA;16"):
        return True
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        return len(head) >= 25 and head[24] == 16  # IHDR bit depth
    if im.format == "TIFF":
        bits = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(b == 16 for b in bits if b)
    return False


def _read_16bit(path: Path, notes: list[str]) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    a = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if a is None:
        raise InputError(f"{path}: cannot decode this 16-bit image")
    if a.dtype != np.uint16:
        a = a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a.astype(np.uint16)
    if a.ndim == 2:
        notes.append("greyscale: replicated to RGB")
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 4:
        notes.append("alpha channel dropped")
        a = a[..., :3]
    a = a[..., ::-1]  # OpenCV decodes BGR
    return a.astype(np.float32) / 65535.0


def read_image(path: str | Path) -> Image:
    """Read a photo -> :class:`Image` with (H, W, 3) float32 RGB pixels in [0, 1].

    Raises InputError (naming the file) for a missing, empty, non-image, truncated, or too
    large file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    notes: list[str] = []
    try:
        with PILImage.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP is above the "
                                 f"{MAX_PIXELS / 1e6:.0f} MP limit (possible decompression bomb)")
            if w < 1 or h < 1:
                raise InputError(f"{path}: image has zero size ({w}x{h})")
            fmt = im.format or path.suffix.lstrip(".").upper()
            exif = _exif_dict(im)
            orientation = int(exif.get("Orientation", 1) or 1)
            if _is_16bit(im, path):
                pixels, bit_depth = _read_16bit(path, notes), 16
            else:
                im.load()
                pixels, bit_depth = _pil_to_rgb(im, notes), 8
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (or a format this tool cannot read)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's truncated/corrupt-data errors
        raise InputError(f"{path}: cannot decode image ({e})") from None
    if orientation != 1:
        pixels = _orient(pixels, orientation)
        notes.append(f"EXIF orientation {orientation} applied")
    return Image(path=path, pixels=pixels, bit_depth=bit_depth, format=fmt, notes=notes, exif=exif)


def _pil_to_rgb(im: PILImage.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha channel dropped")
        im = im.convert("RGB")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
        im = im.convert("RGB")
    elif mode in ("L", "1"):
        notes.append("greyscale: replicated to RGB")
        im = im.convert("RGB")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float32)
        notes.append("32-bit float image: clipped to [0, 1]")
        return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2)
    elif mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) * np.float32(1 / 255)


def read_raw(path: str | Path, what: str = "image", flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file as stored (any bit depth, channels in OpenCV's BGR order; ``flags``
    are OpenCV's imread flags, e.g. IMREAD_GRAYSCALE).

    InputError naming the file and ``what`` it should be when it is missing, empty or not a
    decodable image. (Photos go through ``read_image``; this is for maps, masks and depth.)
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    a = cv2.imdecode(data, flags) if data.size else None
    if a is None:
        raise InputError(f"{path}: missing, truncated or not an image (expected {what})")
    return a


def read_png16(path: str | Path, what: str = "16-bit PNG") -> np.ndarray:
    """Decode a single-channel 16-bit PNG -> (H, W) uint16 (the raw stored values).

    InputError naming the file and ``what`` it should be for a missing, truncated, 8-bit or
    multi-channel file.
    """
    a = read_raw(path, what)
    if a.dtype != np.uint16 or a.ndim != 2:
        raise InputError(f"{path}: expected a single-channel 16-bit PNG ({what}), got "
                         f"{a.dtype} {'x'.join(map(str, a.shape))}")
    return a


def encode_png16(values: np.ndarray, scale: float = PNG16_SCALE) -> np.ndarray:
    """(H, W) float map -> uint16 round(values * scale), NaN as 0, clipped to 0..65535."""
    return np.clip(np.round(np.nan_to_num(values) * scale), 0, 65535).astype(np.uint16)


def decode_png16(data: np.ndarray, scale: float = PNG16_SCALE) -> np.ndarray:
    """uint16 values written by ``encode_png16`` -> float32 values / scale."""
    return data.astype(np.float32) / np.float32(scale)


def load_map(path: str | Path) -> np.ndarray:
    """Read a defocus (or other) map: ``.npy`` float (H, W), or a 16-bit PNG in PNG16_SCALE units."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: map file not found")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable .npy map ({e})") from None
    elif path.suffix.lower() == ".png":
        a = decode_png16(read_png16(path, f"map, sigma x {PNG16_SCALE:g}"))
    else:
        raise InputError(f"{path}: maps are .npy or 16-bit .png files")
    a = np.squeeze(a)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{path}: expected an (H, W) numeric map, got shape {a.shape} {a.dtype}")
    return a.astype(np.float32)


# --------------------------------------------------------------------------------------------
# writing


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what}: expected (H, W, 3) RGB, got shape {rgb.shape}")


def write_image(path: str | Path, rgb: np.ndarray, bit_depth: int = 8, quality: int = 95) -> Path:
    """Write (H, W, 3) float RGB in [0, 1] to ``path`` (format from the suffix), atomically.

    bit_depth 16 is kept for PNG and TIFF; other formats are 8-bit.
    """
    path = Path(path)
    _check_rgb(rgb, f"write_image({path.name})")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported output format {suffix!r}")
    if bit_depth == 16 and suffix in (".png", ".tif", ".tiff"):
        data = np.round(np.clip(rgb, 0, 1) * 65535).astype(np.uint16)
    else:
        data = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    params = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif suffix == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(data[..., ::-1]), params):
            raise InputError(f"{path}: could not write image")
    return path


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Save an array as ``.npy`` (float maps as float32), atomically."""
    path = Path(path)
    a = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array
    with atomic_write(path) as tmp:
        np.save(tmp, a, allow_pickle=False)
    return path


def map_png_params(*extra: int) -> list[int]:
    """cv2.imwrite parameters for a PNG of a map: zlib level 1 and, where this OpenCV can set it
    (``IMWRITE_PNG_FILTER``), the Up filter on every row instead of libpng's per-row choice
    among five. Maps are smooth, so Up compresses them as well as the choice does; on a 12 MP
    map it halved the 16-bit encode (0.79 -> 0.44 s, 8.6 -> 8.1 MB) and cut the preview's to a
    third (0.73 -> 0.23 s, same size; benchmarks/README.md)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, *extra]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return params


def save_png16(path: str | Path, values: np.ndarray, scale: float = PNG16_SCALE) -> Path:
    """Save an (H, W) map as a 16-bit PNG holding ``encode_png16(values, scale)``, atomically."""
    path = Path(path)
    if values.ndim != 2:
        raise ValueError(f"save_png16: expected an (H, W) map, got shape {values.shape}")
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), encode_png16(values, scale), map_png_params()):
            raise InputError(f"{path}: could not write PNG")
    return path


def subsample(values: np.ndarray) -> np.ndarray:
    """A strided view of an (H, W) map with at most ~1 M values, for order statistics (a full
    percentile of a 24 MP map costs about a second and says nothing more)."""
    step = max(1, int(np.sqrt(values.size / 1e6)))
    return values[::step, ::step] if values.ndim == 2 else values


def robust_max(values: np.ndarray, q: float = 99.5) -> float:
    """The q-th percentile of a map, from its subsample."""
    sample = subsample(values)
    return float(np.percentile(sample, q)) if sample.size else 1.0


def _colorize_bgr(values: np.ndarray, vmin: float, vmax: float | None, colormap: int) -> np.ndarray:
    v = values.astype(np.float32, copy=False)
    if vmax is None:
        vmax = robust_max(np.nan_to_num(v))
    vmax = max(vmax, vmin + 1e-6)
    # clamped below vmin first: convertScaleAbs would fold negative values back up
    shifted = np.maximum(np.nan_to_num(v) - np.float32(vmin), 0)
    u8 = cv2.convertScaleAbs(shifted, alpha=255.0 / (vmax - vmin))
    return cv2.applyColorMap(u8, colormap)


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float | None = None,
             colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """(H, W) map -> (H, W, 3) float32 RGB preview in [0, 1]; vmax defaults to the 99.5th percentile."""
    return _colorize_bgr(values, vmin, vmax, colormap)[..., ::-1].astype(np.float32) / 255


def save_preview(path: str | Path, values: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> Path:
    """Save a colour-mapped 8-bit PNG preview of an (H, W) map (for people; not data)."""
    path = Path(path)
    if values.ndim != 2:
        raise ValueError(f"save_preview: expected an (H, W) map, got shape {values.shape}")
    bgr = _colorize_bgr(values, vmin, vmax, cv2.COLORMAP_INFERNO)
    # level 1, run-length strategy, Up filter (map_png_params): a 12 MP preview in 0.23 s, 0.73 s
    # with libpng's own per-row filter choice; smooth maps compress about as well
    params = map_png_params(cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE)
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr, params):
            raise InputError(f"{path}: could not write PNG")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (numpy scalars and paths allowed)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path
