"""Depth from a defocus map (DMENet paper Sec. 5.4, "depth from blur"), by inverting Eq. 1.

Eq. 1, c = alpha |x - S1| / x, is two-valued: a blur c comes from a depth in front of the focus
plane or behind it. A single defocus map cannot tell which, so the caller says where the focus
is: ``near`` (the usual photograph: the subject is sharp, everything else lies behind it, blur
grows with depth) or ``far`` (everything lies in front of the focus plane, blur grows as objects
come nearer). Pixels on the other side of the focus plane get a wrong depth: that is the
ambiguity, not a bug, and the result says so.

- pseudo-depth (no lens data): depth in units of the focus distance (S1 = 1) under an assumed
  alpha; only its order and ratios along the chosen side mean anything.
- metric depth (focal length, f-number, focus distance and pixel pitch known, from flags or
  EXIF): metres. On the far side a blur of alpha or more has no finite depth (c tends to alpha
  as x goes to infinity): such pixels get +inf and are counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from defocus_cli.errors import InputError
from defocus_cli.ops.thinlens import alpha_from_lens, coc_from_sigma, depth_from_coc

Focus = Literal["near", "far"]
#: pseudo-depth assumes alpha = this factor x the largest CoC of the map, so the blurriest pixel
#: maps to a finite depth (5x the focus distance for focus=near, 1/5 of it for focus=far)
PSEUDO_ALPHA_MARGIN = 1.25
#: diagonal of a 36 x 24 mm frame, the reference of FocalLengthIn35mmFilm
FULL_FRAME_DIAGONAL_MM = float(np.hypot(36.0, 24.0))
#: EXIF FocalPlaneResolutionUnit -> millimetres per unit
_EXIF_UNIT_MM = {1: None, 2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}


@dataclass(frozen=True)
class LensParams:
    """Thin-lens camera: focal length (mm), f-number, focus distance (m), pixel pitch (um) at the
    resolution of the map (a photo downscaled 2x has twice the sensor's pitch)."""

    focal_length_mm: float
    f_number: float
    focus_distance_m: float
    pixel_pitch_um: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"lens parameter {name} must be a positive number, got {value!r}")
        if self.focus_distance_m * 1000 <= self.focal_length_mm:
            raise ValueError(f"focus distance {self.focus_distance_m} m must exceed the focal length "
                             f"{self.focal_length_mm} mm")

    @property
    def alpha_px(self) -> float:
        """alpha of Eq. 1 in pixels: the CoC diameter at infinite depth."""
        alpha_mm = alpha_from_lens(self.focal_length_mm, self.f_number, self.focus_distance_m * 1000)
        return alpha_mm / (self.pixel_pitch_um / 1000)


@dataclass(frozen=True)
class DepthConfig:
    focus: Focus = "near"
    lens: LensParams | None = None

    def __post_init__(self) -> None:
        if self.focus not in ("near", "far"):
            raise ValueError(f"focus must be 'near' or 'far', got {self.focus!r}")


@dataclass
class DepthResult:
    depth: np.ndarray  # (H, W) float32: metres (metric) or focus distances (pseudo); +inf = beyond
    kind: str  # "metric" | "pseudo"
    units: str
    alpha_px: float
    focus: Focus
    notes: list[str] = field(default_factory=list)
    beyond: int = 0  # pixels whose blur no depth on the chosen side produces

    def describe(self) -> dict[str, Any]:
        finite = self.depth[np.isfinite(self.depth)]
        return {"kind": self.kind, "units": self.units, "focus": self.focus, "alpha_px": self.alpha_px,
                "notes": self.notes, "pixels_beyond_invertible_range": self.beyond,
                "range": [float(finite.min()), float(finite.max())] if finite.size else None}


def depth_from_sigma(sigma: np.ndarray, config: DepthConfig = DepthConfig()) -> DepthResult:
    """Depth of every pixel of a defocus map.

    sigma: (H, W) float Gaussian sigma in px (>= 0) of the image the lens parameters describe.
    Returns float32 depth: metres with lens parameters, else focus distances (pseudo-depth).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim != 2:
        raise ValueError(f"depth_from_sigma: expected an (H, W) map, got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)) or sigma.min() < 0:
        raise ValueError("depth_from_sigma: sigma must be finite and >= 0")
    c = coc_from_sigma(sigma)
    notes = [f"focus={config.focus}: every pixel is taken to lie "
             f"{'behind' if config.focus == 'near' else 'in front of'} the focus plane; a pixel on "
             "the other side gets a wrong depth (Eq. 1 is two-valued)"]
    if config.lens is None:
        alpha = PSEUDO_ALPHA_MARGIN * max(float(c.max()), 1e-6)
        depth = depth_from_coc(c, 1.0, alpha, "far" if config.focus == "near" else "near")
        notes.append(f"pseudo-depth: no lens data; alpha assumed {PSEUDO_ALPHA_MARGIN} x the largest "
                     "CoC, depth in units of the focus distance: only its order is meaningful")
        return DepthResult(np.asarray(depth, np.float32), "pseudo", "focus distances (S1 = 1)",
                           alpha, config.focus, notes)
    alpha = config.lens.alpha_px
    side = "far" if config.focus == "near" else "near"
    depth = np.asarray(depth_from_coc(c, config.lens.focus_distance_m, alpha, side), np.float32)
    beyond = int(np.count_nonzero(~np.isfinite(depth)))
    if beyond:
        notes.append(f"{beyond} pixels blur at least alpha = {alpha:.2f} px CoC, more than any depth "
                     "behind the focus plane produces: depth +inf (check the lens parameters, or "
                     "those pixels lie in front of the focus plane)")
    return DepthResult(depth, "metric", "metres", alpha, config.focus, notes, beyond)


def lens_from_exif(exif: dict[str, Any], image_width: int, image_height: int = 0) -> dict[str, float]:
    """What EXIF gives of LensParams' fields (missing ones are left out).

    image_width, image_height: the photo as read (EXIF orientation applied). The pixel pitch
    must be that of this resolution, since the map is in its pixels:

    - from FocalPlaneXResolution (sensor pixels per unit), scaled by ExifImageWidth / the
      photo's width along the same sensor axis when the photo was resized (a photo rotated by
      its EXIF orientation has the sensor's x axis vertical);
    - else from FocalLengthIn35mmFilm: the crop factor gives the sensor diagonal
      (43.27 mm / crop), spread over the photo's pixel diagonal.
    """
    out: dict[str, float] = {}
    focal = float(exif.get("FocalLength", 0) or 0)
    if focal > 0:
        out["focal_length_mm"] = focal
    if exif.get("FNumber", 0) > 0:
        out["f_number"] = float(exif["FNumber"])
    distance = exif.get("SubjectDistance")
    if isinstance(distance, float) and 0 < distance < 1e6:  # 0 = unknown, 0xFFFFFFFF = infinity
        out["focus_distance_m"] = float(distance)
    rotated = int(exif.get("Orientation", 1) or 1) in (5, 6, 7, 8)
    sensor_x_px = image_height if rotated and image_height > 0 else image_width
    res = exif.get("FocalPlaneXResolution", 0)
    unit_mm = _EXIF_UNIT_MM.get(int(exif.get("FocalPlaneResolutionUnit", 2) or 2))
    f35 = float(exif.get("FocalLengthIn35mmFilm", 0) or 0)
    if res and res > 0 and unit_mm:
        pitch_um = unit_mm / res * 1000
        exif_width = exif.get("ExifImageWidth")
        if exif_width and exif_width > 0 and sensor_x_px > 0:
            pitch_um *= float(exif_width) / sensor_x_px
        out["pixel_pitch_um"] = pitch_um
    elif f35 > 0 and focal > 0 and image_width > 0 and image_height > 0:
        diagonal_mm = FULL_FRAME_DIAGONAL_MM * focal / f35
        out["pixel_pitch_um"] = diagonal_mm / float(np.hypot(image_width, image_height)) * 1000
    return out


def resolve_lens(exif: dict[str, Any], image_width: int, image_height: int,
                 flags: dict[str, float | None]) -> tuple[LensParams | None, dict[str, dict[str, Any]]]:
    """The lens for metric depth: EXIF (``lens_from_exif``) overridden by explicit ``flags``.

    flags: LensParams field -> value or None (not given). Returns (LensParams or None for
    pseudo-depth, {field: {"value": v, "source": "exif" | "flag"}}). All four parameters known:
    metric. Some given as flags but not all four known: InputError naming the missing ones (a
    user who asks for metric depth must not silently get pseudo-depth). Only partial EXIF:
    pseudo-depth.
    """
    known: dict[str, float] = lens_from_exif(exif, image_width, image_height)
    sources = {k: "exif" for k in known}
    for k, v in flags.items():
        if k not in LensParams.__dataclass_fields__:
            raise ValueError(f"resolve_lens: unknown lens parameter {k!r}")
        if v is not None:
            known[k], sources[k] = float(v), "flag"
    described = {k: {"value": v, "source": sources[k]} for k, v in known.items()}
    if len(known) == len(LensParams.__dataclass_fields__):
        try:
            return LensParams(**known), described
        except ValueError as e:
            raise InputError(str(e)) from None
    if "flag" in sources.values():
        missing = sorted(set(LensParams.__dataclass_fields__) - set(known))
        raise InputError(f"metric depth needs all four lens parameters; missing {', '.join(missing)} "
                         "(give them as flags, or none for pseudo-depth)")
    return None, described
