"""Thin-lens defocus maths (DMENet paper, Sec. 3.2, Eq. 1-2).

Notation of the paper: x is the object distance of a point, S1 the focus distance, F the focal
length, N the f-number, D = F/N the aperture diameter and f1 = F*S1/(S1 - F) the image distance.
The circle of confusion (CoC) diameter on the sensor is c(x) = alpha * |x - S1| / x with
alpha = f1 * D / S1 (Eq. 1). Distances x and S1 share one unit; alpha and c share another (the
sensor's: millimetres, or pixels after dividing by the pixel pitch). The Gaussian blur sigma
of a defocused point is sigma = c / 4 (the paper's empirical choice).

Every function takes floats or numpy arrays and broadcasts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ArrayLike = float | np.ndarray

#: the paper's empirical ratio between the CoC diameter and the Gaussian sigma (sigma = c / 4)
COC_PER_SIGMA = 4.0
#: the paper's largest CoC diameter in SYNDOF, in pixels (so sigma_max = 7 px)
C_MAX = 28.0


def coc_diameter(depth: ArrayLike, focus_distance: ArrayLike, alpha: ArrayLike) -> ArrayLike:
    """CoC diameter c = alpha * |x - S1| / x (Eq. 1).

    depth: object distance x > 0 (same unit as focus_distance). Returns c in alpha's unit.
    """
    x = np.asarray(depth, dtype=np.float64)
    if np.any(x <= 0):
        raise ValueError("coc_diameter: depth must be > 0 everywhere")
    c = np.asarray(alpha, dtype=np.float64) * np.abs(x - focus_distance) / x
    return c if c.ndim else float(c)


def alpha_from_lens(focal_length: float, f_number: float, focus_distance: float) -> float:
    """alpha = f1 * D / S1 of Eq. 1 from physical lens parameters.

    f1 = F*S1/(S1 - F) is the image distance and D = F/N the aperture diameter, so
    alpha = F^2 / (N * (S1 - F)). focal_length and focus_distance in one length unit; the result
    is in that unit too (divide by the pixel pitch for pixels).
    """
    if focal_length <= 0 or f_number <= 0:
        raise ValueError("alpha_from_lens: focal length and f-number must be > 0")
    if focus_distance <= focal_length:
        raise ValueError(
            f"alpha_from_lens: focus distance {focus_distance} must exceed the focal length "
            f"{focal_length} (a real image needs S1 > F)"
        )
    image_distance = focal_length * focus_distance / (focus_distance - focal_length)
    aperture = focal_length / f_number
    return image_distance * aperture / focus_distance


def alpha_upper_bound(
    x_near: ArrayLike, x_far: ArrayLike, focus_distance: ArrayLike, c_max: float = C_MAX
) -> ArrayLike:
    """alpha_up = c_max * min(x_far/|x_far - S1|, x_near/|x_near - S1|) (Eq. 2).

    The largest alpha for which no depth in [x_near, x_far] gets a CoC above c_max. A bound whose
    denominator is 0 (S1 at that end of the range) does not constrain alpha; if neither does
    (x_near == x_far == S1) the result is +inf.
    """
    x_near = np.asarray(x_near, dtype=np.float64)
    x_far = np.asarray(x_far, dtype=np.float64)
    with np.errstate(divide="ignore"):
        far = np.where(x_far != focus_distance, x_far / np.abs(x_far - focus_distance), np.inf)
        near = np.where(x_near != focus_distance, x_near / np.abs(x_near - focus_distance), np.inf)
    a = c_max * np.minimum(far, near)
    return a if a.ndim else float(a)


def sigma_from_coc(c: ArrayLike) -> ArrayLike:
    """Gaussian sigma = c / 4 (Sec. 3.3)."""
    return c / COC_PER_SIGMA


def coc_from_sigma(sigma: ArrayLike) -> ArrayLike:
    """CoC diameter c = 4 * sigma (inverse of sigma_from_coc)."""
    return sigma * COC_PER_SIGMA


def depth_from_coc(
    c: ArrayLike, focus_distance: float, alpha: float, side: Literal["near", "far"]
) -> ArrayLike:
    """Invert Eq. 1 on one side of the focus plane.

    Eq. 1 is two-valued: a CoC c > 0 comes from x = alpha*S1/(alpha + c) in front of the focus
    plane ("near") or from x = alpha*S1/(alpha - c) behind it ("far"). On the far side c tends to
    alpha as x goes to infinity, so c >= alpha has no finite depth and maps to +inf.
    """
    if alpha <= 0:
        raise ValueError("depth_from_coc: alpha must be > 0")
    c = np.asarray(c, dtype=np.float64)
    if np.any(c < 0):
        raise ValueError("depth_from_coc: CoC diameters must be >= 0")
    if side == "near":
        x = alpha * focus_distance / (alpha + c)
    elif side == "far":
        with np.errstate(divide="ignore"):
            x = np.where(c < alpha, alpha * focus_distance / np.maximum(alpha - c, 1e-300), np.inf)
    else:
        raise ValueError(f"depth_from_coc: side must be 'near' or 'far', got {side!r}")
    return x if x.ndim else float(x)
