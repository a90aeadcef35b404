"""Non-blind deconvolution with a hyper-Laplacian gradient prior (Krishnan & Fergus, NIPS 2009).

Problem: given a blurred image y and its blur kernel k, find the sharp image x minimising

    lambda/2 * ||k * x - y||^2 + sum_i |(d_x x)_i|^alpha + |(d_y x)_i|^alpha

with first-order differences d_x, d_y and 0 < alpha <= 1 (natural images have heavy-tailed
gradients; alpha ~ 0.5-0.8 fits them). Half-quadratic splitting introduces auxiliary gradients
w and a weight beta:

    lambda/2 ||k*x - y||^2 + beta/2 ||d x - w||^2 + sum |w|^alpha

and alternates two easy sub-problems while beta grows geometrically (continuation) from
beta_start to beta_max:

* w-step: per pixel, argmin_w |w|^alpha + beta/2 (w - v)^2 with v = d x. For alpha = 1/2 the
  stationary condition becomes a depressed cubic in t = sqrt|w|, for alpha = 2/3 a depressed
  quartic in t = |w|^(1/3) (solved by Ferrari's method through its resolvent cubic); both are
  solved in closed form. alpha = 1 is soft thresholding. Any other alpha uses a lookup table of
  the beta = 1 solution (the problem is scale-covariant, so one table serves every beta),
  interpolated linearly without branches (Newton steps only beyond the table's end).
* x-step: a quadratic problem that is diagonal in the Fourier domain, so one FFT pair per step.

Boundaries. The Fourier x-step assumes a periodic image; a real image's opposite borders do not
match, and the mismatch rings through the whole result. The image is therefore reflected
outwards by a margin, and that margin is cross-faded (raised cosine) into a strongly low-passed
periodic copy of itself, so the frame is smooth across the periodic wrap and the border region
stays consistent with the blur model. The margin is cut off afterwards.

Backends: numpy arrays are processed with numpy.fft on the CPU; pass ``device`` (a
``torch.device``) to run the same algorithm with torch.fft on that device (CUDA included).
Computation is float32 either way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: alpha values with a closed-form w-step
ANALYTIC_ALPHAS = (0.5, 2.0 / 3.0, 1.0)


@dataclass(frozen=True)
class DeconvConfig:
    """Parameters of the hyper-Laplacian deconvolution.

    Defaults chosen by measurement (benchmarks/README.md, "deblur"): layered deblurring of real
    f/2.8 JPEG photos (dfd-indoor, every 8th scene) with their ground-truth maps, scored by
    PSNR against the f/8 shot, over lam in {100, 200, 300, 500, 1000, 3000} and alpha in
    {0.5, 2/3, 0.8, 1}: lam 200-300 with alpha 0.8-1 is best (+0.23 to +0.27 dB), lam >= 1000
    loses (it amplifies JPEG noise, clipping and map errors), alpha 0.5 loses detail. On
    synthetic blur with 1 % white noise a larger lam (2000-5000) is better (+4.2 vs +3.1 dB at
    sigma 2). The layered deblur therefore sets lam per photo and level from the photo's noise
    (pipelines.deblur.noise_adaptive_lam); this default is the weight for JPEG photos.
    """

    #: weight of the data term; larger trusts the blurred image more (less noise suppression)
    lam: float = 300.0
    #: exponent of the gradient prior, 0 < alpha <= 1 (1/2 and 2/3 have closed-form w-steps,
    #: other values a lookup table)
    alpha: float = 0.8
    #: first half-quadratic weight; Krishnan & Fergus start at 1
    beta_start: float = 1.0
    #: continuation stops before beta reaches this (Krishnan & Fergus: 256)
    beta_max: float = 256.0
    #: geometric growth of beta per outer iteration (Krishnan & Fergus: 2*sqrt(2))
    beta_rate: float = 2.0 * math.sqrt(2.0)
    #: alternations of w- and x-step per beta value
    inner_iterations: int = 1

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"DeconvConfig: lam must be > 0, got {self.lam}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"DeconvConfig: alpha must be in (0, 1], got {self.alpha}")
        if not self.beta_start > 0 or not self.beta_max > 0:
            raise ValueError("DeconvConfig: beta_start and beta_max must be > 0")
        if not self.beta_rate > 1:
            raise ValueError(f"DeconvConfig: beta_rate must be > 1, got {self.beta_rate}")
        if self.inner_iterations < 1:
            raise ValueError("DeconvConfig: inner_iterations must be >= 1")

    def betas(self) -> list[float]:
        """The continuation schedule: beta_start * rate^i while below beta_max."""
        out, beta = [], self.beta_start
        while beta < self.beta_max:
            out.append(beta)
            beta *= self.beta_rate
        return out


# --------------------------------------------------------------------------------------------
# array backends: the algorithm is written once against this small interface


class _NumpyBackend:
    name = "numpy"

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def rfft2(self, a):
        return np.fft.rfft2(a, axes=(-2, -1))

    def irfft2(self, a, shape):
        return np.fft.irfft2(a, s=shape, axes=(-2, -1)).astype(np.float32, copy=False)

    def constant(self, a: np.ndarray):
        return a

    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    sign = staticmethod(np.sign)
    cos = staticmethod(np.cos)
    arccos = staticmethod(np.arccos)
    conj = staticmethod(np.conj)

    @staticmethod
    def clip(a, lo, hi):
        return np.clip(a, lo, hi)

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def sum_hw(a):
        return a.sum(axis=(-2, -1), keepdims=True)

    @staticmethod
    def cbrt(a):
        return np.cbrt(a)

    @staticmethod
    def amax_abs(a) -> float:
        return float(np.max(np.abs(a))) if a.size else 0.0

    @staticmethod
    def table_w(v, table: "_ScaledTable"):
        idx = v * np.asarray(table.inv_dz, v.dtype)
        idx += np.asarray(table.offset, v.dtype)
        np.clip(idx, 0.0, table.top, out=idx)
        i = idx.astype(np.intp)
        idx -= i
        pair = np.take(table.complex_array(np.result_type(v.dtype, np.complex64)), i)
        return pair.real + pair.imag * idx

    @staticmethod
    def scratch(name: str, shape, like):
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def sub(a, b, out):
        return np.subtract(a, b, out=out)

    @staticmethod
    def add(a, b, out):
        return np.add(a, b, out=out)

    @staticmethod
    def x_step(div, gamma: float, numer, inv_denom, shape):
        """irfft2((numer + gamma * rfft2(div)) * inv_denom); div None stands for zeros."""
        if div is None:
            return np.fft.irfft2(numer * inv_denom, s=shape, axes=(-2, -1)).astype(np.float32)
        spec = np.fft.rfft2(div, axes=(-2, -1))
        spec *= gamma
        spec += numer
        spec *= inv_denom
        return np.fft.irfft2(spec, s=shape, axes=(-2, -1)).astype(np.float32, copy=False)

    @staticmethod
    def copy_out(a) -> np.ndarray:
        return np.array(a, dtype=np.float32, order="C", copy=True)


#: elements per chunk of the table w-step's scratch (4 MB float32)
_W_CHUNK = 1 << 20


class _Arena:
    """Scratch tensors reused across the iterations and frames of a deconvolution.

    A fresh multi-MB tensor costs page faults on every first touch (the allocator returns
    large blocks to the OS when freed), and the half-quadratic loop would otherwise allocate
    a dozen frame-sized tensors per beta: about 2.4 s of a 22 s 12 MP deblur (measured by
    letting glibc keep freed memory instead). One flat buffer per name grows to the largest
    frame and is viewed at each frame's shape.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, Any, str], Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any, device: Any):
        import torch

        n = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


_scratch = threading.local()


def thread_scratch_buffers() -> None:
    """Give the calling thread (a worker) its own scratch buffers for as long as it lives."""
    if getattr(_scratch, "arena", None) is None:
        _scratch.arena = _Arena()


@contextlib.contextmanager
def scratch_buffers():
    """Within this block, torch deconvolutions on this thread share one set of scratch
    buffers (held until the block ends) instead of allocating their own per frame."""
    previous = getattr(_scratch, "arena", None)
    _scratch.arena = _Arena() if previous is None else previous
    try:
        yield
    finally:
        _scratch.arena = previous


class _TorchBackend:
    name = "torch"

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        # shared scratch inside scratch_buffers(), else this backend's own (one frame)
        self.arena = getattr(_scratch, "arena", None) or _Arena()
        # the w-step's gather: numpy's on CPU tensors (2x faster there), torch.take elsewhere
        self.numpy_gather = self.device.type == "cpu"

    def asarray(self, a: np.ndarray):
        return self.torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=self.device)

    def rfft2(self, a):
        return self.torch.fft.rfft2(a, dim=(-2, -1))

    def irfft2(self, a, shape):
        return self.torch.fft.irfft2(a, s=shape, dim=(-2, -1))

    def constant(self, a: np.ndarray):
        return self.torch.as_tensor(a, device=self.device)

    def sqrt(self, a):
        return self.torch.sqrt(a)

    def abs(self, a):
        return self.torch.abs(a)

    def sign(self, a):
        return self.torch.sign(a)

    def cos(self, a):
        return self.torch.cos(a)

    def arccos(self, a):
        return self.torch.arccos(a)

    def conj(self, a):
        return self.torch.conj(a)

    def clip(self, a, lo, hi):
        return self.torch.clamp(a, lo, hi)

    def zeros_like(self, a):
        return self.torch.zeros_like(a)

    def sum_hw(self, a):
        return a.sum(dim=(-2, -1), keepdim=True)

    def cbrt(self, a):
        return self.torch.sign(a) * self.torch.abs(a).pow(1.0 / 3.0)

    def amax_abs(self, a) -> float:
        if a.numel() == 0:
            return 0.0
        lo, hi = self.torch.aminmax(a)
        return max(-float(lo), float(hi))

    def _buf(self, name: str, shape, dtype=None):
        dtype = self.torch.float32 if dtype is None else dtype
        return self.arena.get(name, tuple(shape), dtype, self.device)

    def table_w(self, v, table: "_ScaledTable"):
        torch = self.torch
        if v.dtype != torch.float32:
            idx = (v * table.inv_dz + table.offset).clamp_(0.0, table.top)
            i = idx.to(torch.int64)
            pair = torch.take(table.complex_tensor(torch.complex128, v.device), i)
            pr = torch.view_as_real(pair)
            return torch.addcmul(pr[..., 0], pr[..., 1], idx.sub_(i))
        out = self._buf("w", v.shape)
        flat_v, flat_out = v.reshape(-1), out.view(-1)
        # in chunks, so the scratch does not grow with the frame (a whole 12 MP image)
        for a in range(0, flat_v.numel(), _W_CHUNK):
            self._table_w_chunk(flat_v[a : a + _W_CHUNK], table, flat_out[a : a + _W_CHUNK])
        return out

    def _table_w_chunk(self, v, table: "_ScaledTable", out) -> None:
        torch = self.torch
        shape = v.shape
        idx = self._buf("idx", shape)
        torch.mul(v, table.inv_dz, out=idx)
        idx.add_(table.offset).clamp_(0.0, table.top)
        pair = self._buf("pair", shape, torch.complex64)
        if self.numpy_gather:
            # floor(idx) without a float -> int conversion pass: adding 2^23 - 1/2 rounds
            # idx - 1/2 to an integer held in the float32 mantissa (0 <= idx < 2^22; a tie
            # rounds down to the previous cell with f = 1, the same value). The cells go to
            # int64 (numpy's gather converts int32 indices itself: 5.4 vs 1.2 ms per 660k),
            # and numpy's gather beats torch.take here
            m = self._buf("round", shape)
            torch.add(idx, 8388607.5, out=m)
            i = self._buf("cell", shape, torch.int64)
            torch.sub(m.view(torch.int32), 0x4B000000, out=i)
            idx.sub_(m.sub_(8388608.0))
            np.take(table.complex_array(np.complex64), i.numpy(), out=pair.numpy())
        else:
            i = idx.to(torch.int64)
            idx.sub_(i)
            torch.take(table.complex_tensor(torch.complex64, v.device), i, out=pair)
        pr = torch.view_as_real(pair)
        torch.addcmul(pr[..., 0], pr[..., 1], idx, out=out)

    def scratch(self, name: str, shape, like):
        return self._buf(name, shape, like.dtype)

    def sub(self, a, b, out):
        return self.torch.sub(a, b, out=out)

    def add(self, a, b, out):
        return self.torch.add(a, b, out=out)

    def x_step(self, div, gamma: float, numer, inv_denom, shape):
        """irfft2((numer + gamma * rfft2(div)) * inv_denom); div None stands for zeros."""
        fft = self.torch.fft
        spec = self._buf("spec", numer.shape, numer.dtype)
        if div is None:
            self.torch.mul(numer, inv_denom, out=spec)
        else:
            fft.rfft2(div, dim=(-2, -1), out=spec)
            spec.mul_(gamma).add_(numer).mul_(inv_denom)
        x = self._buf("x", numer.shape[:-2] + tuple(shape), inv_denom.dtype)
        return fft.irfft2(spec, s=shape, dim=(-2, -1), out=x)

    def copy_out(self, a) -> np.ndarray:
        # the result may be a view of a scratch buffer: always copy
        return np.array(a.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


def _gradients(x, xp):
    """(2, ...) periodic forward differences of x: [0] along the width, [1] the height."""
    out = xp.scratch("grad", (2,) + tuple(x.shape), x)
    xp.sub(x[..., 1:], x[..., :-1], out[0, ..., :-1])
    xp.sub(x[..., :1], x[..., -1:], out[0, ..., -1:])
    xp.sub(x[..., 1:, :], x[..., :-1, :], out[1, ..., :-1, :])
    xp.sub(x[..., :1, :], x[..., -1:, :], out[1, ..., -1:, :])
    return out


def _divergence(w, xp):
    """d_x^T w[0] + d_y^T w[1], the adjoint of _gradients."""
    wx, wy = w[0], w[1]
    out = xp.add(wx, wy, xp.scratch("div", tuple(wx.shape), wx))
    out *= -1
    out[..., 1:] += wx[..., :-1]
    out[..., :1] += wx[..., -1:]
    out[..., 1:, :] += wy[..., :-1, :]
    out[..., :1, :] += wy[..., -1:, :]
    return out


def _backend_for(device: Any) -> _NumpyBackend | _TorchBackend:
    return _NumpyBackend() if device is None else _TorchBackend(device)


# --------------------------------------------------------------------------------------------
# w-step


def w_threshold(alpha: float, beta: float) -> float:
    """|v| at and below which argmin_w |w|^alpha + beta/2 (w-v)^2 is w = 0.

    At beta = 1 the non-zero stationary point u satisfies alpha*u^(alpha-1) = z - u; it beats
    w = 0 once u^alpha + (u - z)^2/2 < z^2/2, and both equalities together give
    u* = (2(1-alpha))^(1/(2-alpha)), z* = u* + alpha*u*^(alpha-1). Scaling w = s*u, v = s*z with
    s = beta^(-1/(2-alpha)) maps any beta onto beta = 1.
    """
    if alpha >= 1.0:
        return 1.0 / beta  # soft threshold (alpha = 1): u* -> 0, z* -> 1
    u = (2.0 * (1.0 - alpha)) ** (1.0 / (2.0 - alpha))
    z = u + alpha * u ** (alpha - 1.0)
    return z * beta ** (-1.0 / (2.0 - alpha))


def _w_half(av, beta: float, xp):
    """alpha = 1/2 on |v| = av above the threshold.

    Stationary point of t = sqrt(w): t^3 - av*t + 1/(2 beta) = 0, a depressed cubic. Above the
    threshold (1.5 beta^(-2/3)) it has three real roots (its discriminant changes sign at
    (27/16)^(1/3) beta^(-2/3) < 1.5 beta^(-2/3)), and the largest one, the trigonometric
    k = 0 root, is the local minimum nearest v.
    """
    arg = xp.clip((-0.75 * math.sqrt(3.0) / beta) / (av * xp.sqrt(av)), -1.0, 1.0)
    t = 2.0 * xp.sqrt(av / 3.0) * xp.cos(xp.arccos(arg) / 3.0)
    return t * t


def _w_two_thirds(av, beta: float, xp):
    """alpha = 2/3 on |v| = av above the threshold.

    Stationary point of t = w^(1/3): t^4 - av*t + r = 0 with r = 2/(3 beta), a depressed
    quartic. Ferrari: (t^2 + m)^2 = 2m (t + av/(4m))^2 holds for m a root of the resolvent
    cubic m^3 - r m - av^2/8 = 0. Above the threshold (1.4756 beta^(-3/4)) the resolvent's
    discriminant av^4/256 - r^3/27 is positive (0.0185 vs 0.0110 beta^-3 at the threshold), so
    it has one real root, given by Cardano as A + r/(3A), A = cbrt(av^2/16 + sqrt(disc)). With
    s = sqrt(2m), the larger root of t^2 - s t + m - av/(2s) = 0 is the local minimum.
    """
    r = 2.0 / (3.0 * beta)
    av2 = av * av
    disc = xp.clip(av2 * av2 / 256.0 - r**3 / 27.0, 0.0, None)
    big_a = xp.cbrt(av2 / 16.0 + xp.sqrt(disc))
    m = big_a + r / (3.0 * big_a)
    s = xp.sqrt(2.0 * m)
    t = 0.5 * (s + xp.sqrt(xp.clip(2.0 * av / s - s * s, 0.0, None)))
    return t * t * t


#: cells of the w-step lookup table per threshold z* (beta = 1): the table spans [z*, 64 z*]
#: in steps of z* / W_TABLE_CELLS, where linear interpolation errs by < 2e-5 for alpha in
#: [0.3, 0.95] (tests/ops/test_deconv.py checks 1e-4 against brute force)
W_TABLE_CELLS = 1024
#: the table's end in units of z*
W_TABLE_SPAN = 64


@functools.lru_cache(maxsize=16)
def _w_table(alpha: float) -> tuple[float, float, np.ndarray]:
    """Lookup table u(z) = argmin_u |u|^alpha + (u - z)^2 / 2 on [z*, 64 z*] (beta = 1).

    Returns (z*, dz, u) with z = z* + k dz. z_max = 64 z* covers gradients up to |v| ~ 1 for
    beta <= 256 at alpha >= 0.5; beyond it Newton steps from u = z converge on their own
    (u -> z for large z). Built in float64 by Newton from the right, which converges
    monotonically: g(u) = u - z + alpha u^(alpha-1) is convex and increasing right of the
    root we want.
    """
    z0 = w_threshold(alpha, 1.0)
    dz = z0 / W_TABLE_CELLS
    z = z0 + dz * np.arange((W_TABLE_SPAN - 1) * W_TABLE_CELLS + 1)
    u = z.copy()
    for _ in range(200):
        g = u - z + alpha * u ** (alpha - 1.0)
        dg = 1.0 + alpha * (alpha - 1.0) * u ** (alpha - 2.0)
        step = g / dg
        u = u - step
        if np.max(np.abs(step)) < 1e-14:
            break
    return z0, dz, u


class _ScaledTable:
    """The beta = 1 table scaled to one beta, laid out for branch-free interpolation in v.

    Signed v maps to the fractional cell index c + f = v / dz + offset, and the solution is
    val[c] + f * slope[c] (stored as one complex number per cell, so one gather fetches both).
    The cells run from -v_end to v_end; the 2 * W_TABLE_CELLS cells of (-thr, thr) hold zeros
    and their ends fall exactly on +-thr, so w = 0 below the threshold needs no mask, and no
    abs or sign pass is needed either. One extra cell at each end holds the table's end
    value; |v| beyond v_end is corrected by Newton steps (_table_w).
    """

    def __init__(self, alpha: float, beta: float) -> None:
        z0, dz, u = _w_table(alpha)
        scale = beta ** (-1.0 / (2.0 - alpha))
        m = len(u) - 1  # cells on each side beyond the threshold
        self.thr = z0 * scale  # == w_threshold(alpha, beta)
        self.v_end = (z0 + dz * m) * scale
        self.inv_dz = 1.0 / (dz * scale)
        # cell 1 starts at -v_end
        self.offset = float(m + W_TABLE_CELLS + 1)
        du = np.diff(u)
        val = np.concatenate(
            [[-u[-1]], -u[:0:-1], np.zeros(2 * W_TABLE_CELLS), u[:-1], [u[-1]]]
        )
        slope = np.concatenate(
            [[0.0], du[::-1], np.zeros(2 * W_TABLE_CELLS), du, [0.0]]
        )
        self.top = float(len(val) - 1)
        self._table = (val + 1j * slope) * scale  # complex128
        self._cache: dict[tuple[Any, ...], Any] = {}

    def complex_array(self, dtype) -> np.ndarray:
        key = ("numpy", np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = self._table.astype(dtype)
        return self._cache[key]

    def complex_tensor(self, dtype, device) -> Any:
        import torch

        key = ("torch", str(dtype), str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self._table, dtype=dtype, device=device)
        return self._cache[key]


@functools.lru_cache(maxsize=16)
def _scaled_table(alpha: float, beta: float) -> _ScaledTable:
    return _ScaledTable(alpha, beta)


def _newton_w(av, beta: float, alpha: float, xp, steps: int = 3, start=None):
    """Solution for |v| = av above the threshold by Newton steps on the beta = 1 problem,
    from u = z (far above the threshold) or from a given solution estimate ``start``."""
    scale = beta ** (-1.0 / (2.0 - alpha))
    z = av / scale
    u = z if start is None else start / scale
    for _ in range(steps):
        u = xp.clip(u, 1e-12, None)
        g = u - z + alpha * u ** (alpha - 1.0)
        dg = 1.0 + alpha * (alpha - 1.0) * u ** (alpha - 2.0)
        u = u - g / xp.clip(dg, 1e-6, None)
    return u * scale


def _table_w(v, vmax: float, beta: float, alpha: float, xp):
    """w-step for alpha without a closed form: table interpolation with no branches."""
    table = _scaled_table(alpha, beta)
    out = xp.table_w(v, table)
    if beta < 1.0:
        # the interpolation error scales like the solution, beta^(-1/(2-alpha)) > 1 here:
        # Newton steps from the table's value restore it
        nz = out != 0
        start = xp.abs(out[nz])
        out[nz] = xp.sign(out[nz]) * _newton_w(xp.abs(v[nz]), beta, alpha, xp, 1, start)
    if vmax > table.v_end:
        far = xp.abs(v) > table.v_end
        sel = v[far]
        out[far] = xp.sign(sel) * _newton_w(xp.abs(sel), beta, alpha, xp)
    return out


def _solve_w(v, beta: float, alpha: float, xp):
    """The w-step on any array; None when every |v| is at or below the threshold (w = 0)."""
    thr = w_threshold(alpha, beta)
    vmax = xp.amax_abs(v)
    if not vmax > thr:
        return None
    closed = alpha == 1.0 or abs(alpha - 0.5) < 1e-12 or abs(alpha - 2.0 / 3.0) < 1e-12
    if not closed:
        return _table_w(v, vmax, beta, alpha, xp)
    # Only gradients above the threshold get a non-zero w; they are a minority for most betas,
    # so the (costly) closed forms run on that subset alone.
    above = xp.abs(v) > thr
    sel = v[above]
    av = xp.abs(sel)
    if alpha == 1.0:
        mag = av - thr
    elif abs(alpha - 0.5) < 1e-12:
        mag = _w_half(av, beta, xp)
    else:
        mag = _w_two_thirds(av, beta, xp)
    out = xp.zeros_like(v)
    out[above] = xp.sign(sel) * mag
    return out


def solve_w(v: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    """Elementwise argmin_w |w|^alpha + beta/2 (w - v)^2 (the w-step), numpy.

    v: any-shape float array. Closed form for alpha in {1/2, 2/3, 1}, otherwise a lookup
    table (linear interpolation; Newton steps beyond its end). Returns an array of v's shape
    and dtype (float32 or float64).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"solve_w: alpha must be in (0, 1], got {alpha}")
    if not beta > 0:
        raise ValueError(f"solve_w: beta must be > 0, got {beta}")
    v = np.asarray(v)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = _solve_w(v, float(beta), float(alpha), _NumpyBackend())
    if out is None:
        return np.zeros_like(v)
    return np.asarray(out, dtype=v.dtype)


# --------------------------------------------------------------------------------------------
# kernels and frames


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Normalised, sampled 2-D Gaussian of standard deviation sigma px.

    radius defaults to ceil(3 sigma) (the kernel then holds > 99.7 % of the mass per axis).
    Returns (2r+1, 2r+1) float64 summing to 1; sigma <= 0 gives the 1x1 identity kernel.
    """
    if sigma <= 0:
        return np.ones((1, 1))
    r = int(math.ceil(3.0 * sigma)) if radius is None else int(radius)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def good_fft_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast for every FFT library)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def margin_for_kernel(kernel: np.ndarray) -> int:
    """Margin (px) added around an image before the Fourier deconvolution.

    Two kernel radii: the first is the taper band, the second keeps the band's small
    inconsistency with the blur model away from the kept pixels (measured in
    tests/ops/test_deconv.py: border error equals interior error).
    """
    r = max(kernel.shape) // 2
    return 2 * r + 8


def reflect_frame(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """image[y0:y1, x0:x1] where the window may extend past the image.

    Outside pixels are the point reflection of the image through its border pixel,
    2*image[edge] - image[mirror]: unlike a plain mirror it keeps the slope continuous, so the
    border does not look like a crease that the deconvolution would sharpen. Beyond one image
    width the mirror index is clamped. image: (H, W) or (H, W, C); returns float32.
    """
    image = np.asarray(image, dtype=np.float32)
    # first cut the image down to the pixels the window reads (a view), so that the row
    # pass does not extend columns the column pass then drops
    c0, c1 = _source_span(image.shape[1], x0, x1)
    rows = _odd_extend(image[:, c0:c1], y0, y1, axis=0)
    return _odd_extend(rows, x0 - c0, x1 - c0, axis=1)


def _source_span(n: int, lo: int, hi: int) -> tuple[int, int]:
    """[s0, s1): the indices of an axis of length n that _odd_extend(lo, hi) reads.

    The cut keeps a real border wherever the window reaches past it (s0 = 0 when lo < 0,
    s1 = n when hi > n), so the reflection stays about the image's own edge."""
    s0, s1 = min(max(lo, 0), n - 1), max(min(hi, n), 1)
    if lo < 0:
        s0, s1 = 0, max(s1, min(-lo, n - 1) + 1)
    if hi > n:
        s0, s1 = min(s0, max(2 * n - 1 - hi, 0)), n
    return s0, s1


def _odd_extend(a: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
    n = a.shape[axis]

    def at(index) -> tuple:  # index along `axis`, everything along the others
        return (slice(None),) * axis + (index,)

    shape = list(a.shape)
    shape[axis] = hi - lo
    out = np.empty(shape, dtype=np.float32)
    i0, i1 = min(max(lo, 0), n), max(min(hi, n), 0)
    if i1 > i0:  # the part inside the image: a plain copy
        out[at(slice(i0 - lo, i1 - lo))] = a[at(slice(i0, i1))]
    if lo < 0:  # before the first pixel: 2 * first - mirror
        i = np.arange(lo, min(hi, 0))
        out[at(slice(0, len(i)))] = 2 * a[at(slice(0, 1))] - a[at(np.minimum(-i, n - 1))]
    if hi > n:  # after the last pixel: 2 * last - mirror
        i = np.arange(max(lo, n), hi)
        mirror = a[at(np.maximum(2 * (n - 1) - i, 0))]
        out[at(slice(hi - lo - len(i), hi - lo))] = 2 * a[at(slice(n - 1, n))] - mirror
    return out


def _taper_weights(n: int, lo: int, hi: int) -> np.ndarray:
    """1-D weight: 1 on [lo, hi), raised-cosine down to 0 at both array ends."""
    w = np.ones(n, dtype=np.float64)
    if lo > 0:
        w[:lo] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(lo) + 0.5) / lo)
    if hi < n:
        m = n - hi
        w[hi:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    return w


#: frames up to this many pixels keep their Fourier constants and taper in a cache
_CACHE_MAX_PIXELS = 1 << 22


@functools.lru_cache(maxsize=8)
def _taper_frame(h: int, w: int, keep: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) float32 weight: 1 on the kept box, raised-cosine to 0 across the context band."""
    y0, y1, x0, x1 = keep
    return np.outer(_taper_weights(h, y0, y1), _taper_weights(w, x0, x1)).astype(np.float32)


def psf2otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of the kernel zero-padded to shape with its centre moved to (0, 0), complex128."""
    kh, kw = kernel.shape
    if kh > shape[0] or kw > shape[1]:
        raise ValueError(f"psf2otf: kernel {kernel.shape} larger than frame {shape}")
    kernel = np.asarray(kernel, dtype=np.float64)
    total = kernel.sum()
    col, row = kernel.sum(axis=1), kernel.sum(axis=0)
    if total != 0 and np.allclose(np.outer(col, row) / total, kernel, rtol=0, atol=1e-14):
        # separable (a Gaussian is): two 1-D transforms instead of a 2-D one
        def axis(k: np.ndarray, n: int) -> np.ndarray:
            line = np.zeros(n)
            line[: len(k)] = k
            return np.roll(line, -(len(k) // 2))

        rows_tf = np.fft.fft(axis(col, shape[0]))[:, None]
        return rows_tf * (np.fft.rfft(axis(row, shape[1])) / total)
    big = np.zeros(shape, dtype=np.float64)
    big[:kh, :kw] = kernel
    big = np.roll(big, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.fft.rfft2(big)


# --------------------------------------------------------------------------------------------
# the solver on one frame


@dataclass(frozen=True)
class _Spectra:
    """Fourier-domain constants of one frame shape and kernel (rfft2 layout)."""

    otf: np.ndarray  # complex64, the kernel's transfer function
    otf_power: np.ndarray  # float32, |otf|^2
    grad_power: np.ndarray  # float32, |F(d_x)|^2 + |F(d_y)|^2
    smooth_tf: np.ndarray  # float32, low-pass of the border taper
    fill_tf: np.ndarray  # float32, Gaussian at the kernel's scale (unknown-pixel fill)
    #: (lam, betas) -> inverse_denominators(), filled on first use
    inverse_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def inverse_denominators(self, config: DeconvConfig) -> list[np.ndarray]:
        """float32 1 / (|otf|^2 + beta/lam |grad|^2) for each beta of the schedule (cached)."""
        key = (config.lam, tuple(config.betas()))
        cache = self.inverse_cache
        if key not in cache:
            cache[key] = [
                (1.0 / (self.otf_power + np.float32(b / config.lam) * self.grad_power)).astype(
                    np.float32
                )
                for b in key[1]
            ]
        return cache[key]


@functools.lru_cache(maxsize=8)
def _spectral_constants(
    kernel_bytes: bytes, kernel_shape: tuple[int, int], shape: tuple[int, int], band: int
) -> _Spectra:
    """Cached: a layered deblur calls this for many tiles of one shape and kernel."""
    kernel = np.frombuffer(kernel_bytes, dtype=np.float64).reshape(kernel_shape)
    h, w = shape
    # frequency grids (cycles/sample) of the rfft2 layout
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]

    def gauss(s: float) -> np.ndarray:
        # transfer function of a sampled Gaussian wrapped around the frame: positive in space
        # (a Gaussian sampled in frequency and cut at Nyquist would ring below zero)
        def axis(n: int) -> np.ndarray:
            d = np.arange(n, dtype=np.float64)
            d = np.minimum(d, n - d)
            g = np.exp(-0.5 * (d / s) ** 2)
            return g / g.sum()

        return (np.fft.fft(axis(h))[:, None] * np.fft.rfft(axis(w))[None, :]).real.astype(
            np.float32
        )

    otf = psf2otf(kernel, shape)
    return _Spectra(
        otf=otf.astype(np.complex64),
        otf_power=(np.abs(otf) ** 2).astype(np.float32),
        # forward differences [1, -1] have |F|^2 = 4 sin^2(pi f) per axis
        grad_power=(4.0 * np.sin(np.pi * fx) ** 2 + 4.0 * np.sin(np.pi * fy) ** 2).astype(
            np.float32
        ),
        # std = band width: smooth enough to be continuous across the periodic wrap
        smooth_tf=gauss(band),
        # a Gaussian kernel of radius 3 sigma: shape / 6 recovers ~sigma for any kernel
        fill_tf=gauss(max(kernel_shape[0] / 6.0, 1.0)),
    )


def deconvolve_frame(
    frame: np.ndarray,
    kernel: np.ndarray,
    keep: tuple[int, int, int, int],
    config: DeconvConfig = DeconvConfig(),
    device: Any = None,
    unknown: np.ndarray | None = None,
) -> np.ndarray:
    """Deconvolve a frame whose outer band (outside ``keep``) is context, return the kept part.

    frame: (C, H, W) float array, H and W ideally good FFT sizes (see good_fft_size); the band
    outside keep = (y0, y1, x0, x1) holds real or reflected context and is cross-faded into a
    smooth periodic copy before the Fourier solve. kernel: (kh, kw), sums to 1, smaller than
    the frame. unknown: optional (H, W) weights in [0, 1] marking context not to trust; it is
    replaced by a smooth extrapolation of the other pixels (normalised convolution) before the
    solve. Use it on context sharper than the kernel (another depth): such content contradicts
    the blur model, and a depth edge between it and the kept pixels would ring into them.
    Returns (C, y1-y0, x1-x0) float32 numpy, not clipped.
    """
    if frame.ndim != 3:
        raise ValueError(f"deconvolve_frame: frame must be (C, H, W), got shape {frame.shape}")
    if unknown is not None and unknown.shape != frame.shape[1:]:
        raise ValueError(
            f"deconvolve_frame: unknown must be {frame.shape[1:]} like the frame, "
            f"got {unknown.shape}"
        )
    xp = _backend_for(device)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _deconvolve_frame(xp, frame, kernel, keep, config, unknown)


def _deconvolve_frame(xp, frame, kernel, keep, config, unknown) -> np.ndarray:
    _, h, w = frame.shape
    y0, y1, x0, x1 = keep
    shape = (h, w)
    band = max(min(y0, x0, h - y1, w - x1), 1)
    kernel = np.asarray(kernel, dtype=np.float64)
    # frames of a layered deblur repeat shapes and kernels; a whole large image does not, and
    # its constants (hundreds of MB) are not kept
    cached = h * w <= _CACHE_MAX_PIXELS
    spectra = _spectral_constants if cached else _spectral_constants.__wrapped__
    consts = spectra(kernel.tobytes(), kernel.shape, shape, band)

    y = xp.asarray(frame)
    if unknown is not None:
        # Normalised convolution: the Gaussian-weighted average of the trusted pixels near
        # them, fading (eps) into their plain mean where none is within a few sigma. The
        # Gaussian is a periodised, sampled one, positive in space, so the denominator cannot
        # ring below zero.
        m = xp.asarray(unknown)
        known = 1.0 - m
        eps = 1e-3
        near = xp.constant(consts.fill_tf)
        yk = y * known
        count = known.sum()
        mean = xp.sum_hw(yk) / max(float(count), 1e-6)
        num = xp.irfft2(xp.rfft2(yk) * near, shape) + eps * mean
        den = xp.irfft2(xp.rfft2(known) * near, shape) + eps
        y = known * y + m * (num / den)
    weight = xp.constant((_taper_frame if cached else _taper_frame.__wrapped__)(h, w, keep))
    # cross-fade the context band into a periodic low-pass copy (see module docstring)
    smooth = xp.irfft2(xp.rfft2(y) * xp.constant(consts.smooth_tf), shape)
    y = smooth + weight * (y - smooth)

    numer_data = xp.conj(xp.constant(consts.otf)) * xp.rfft2(y)
    x = y
    alpha = float(config.alpha)
    for beta, inv_denom in zip(config.betas(), consts.inverse_denominators(config)):
        gamma = beta / config.lam
        inv_denom = xp.constant(inv_denom)
        for _ in range(config.inner_iterations):
            # forward differences (periodic, matching the Fourier model), x and y stacked
            w = _solve_w(_gradients(x, xp), beta, alpha, xp)
            # the adjoint differences d^T w, summed in space so the x-step needs one FFT;
            # none while every gradient is below the threshold (w = 0: the early betas)
            x = xp.x_step(None if w is None else _divergence(w, xp), gamma, numer_data,
                          inv_denom, shape)
    return xp.copy_out(x[:, y0:y1, x0:x1])


def deconvolve(
    image: np.ndarray,
    kernel: np.ndarray,
    config: DeconvConfig = DeconvConfig(),
    *,
    device: Any = None,
) -> np.ndarray:
    """Non-blind deconvolution of a whole image by a spatially uniform kernel.

    image: (H, W) or (H, W, C) float array (nominally [0, 1]); kernel: (kh, kw) non-negative,
    normalised to sum 1 here. device: None for numpy on the CPU, or a torch.device (or string)
    to run with torch on it. Returns float32 of the image's shape, not clipped (ringing-free
    results stay close to the input's range; clip for display).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"deconvolve: image must be (H, W) or (H, W, C), got shape {image.shape}")
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.size == 0 or np.any(kernel < 0) or kernel.sum() <= 0:
        raise ValueError(
            f"deconvolve: kernel must be a non-empty 2-D non-negative array, got shape {kernel.shape}"
        )
    kernel = kernel / kernel.sum()
    h, w = image.shape[:2]
    m = margin_for_kernel(kernel)
    fh, fw = good_fft_size(h + 2 * m), good_fft_size(w + 2 * m)
    top, left = (fh - h) // 2, (fw - w) // 2
    frame = reflect_frame(image, -top, fh - top, -left, fw - left)
    chw = frame[None] if frame.ndim == 2 else np.moveaxis(frame, -1, 0)
    out = deconvolve_frame(chw, kernel, (top, top + h, left, left + w), config, device)
    return out[0] if image.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, 0, -1))
