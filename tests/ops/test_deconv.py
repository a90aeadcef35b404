"""Hyper-Laplacian deconvolution (ops/deconv.py): w-step exactness, restoration gain, borders."""

from __future__ import annotations

import numpy as np
import pytest

from defocus_cli.ops.deconv import (
    DeconvConfig,
    deconvolve,
    deconvolve_frame,
    gaussian_kernel,
    good_fft_size,
    psf2otf,
    reflect_frame,
    scratch_buffers,
    solve_w,
    w_threshold,
)


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Reference 'same' convolution with symmetric borders, independent of the code under test."""
    r = kernel.shape[0] // 2
    pad = [(r, r), (r, r)] + [(0, 0)] * (image.ndim - 2)
    big = np.pad(image.astype(np.float64), pad, mode="symmetric")
    out = np.zeros(image.shape, dtype=np.float64)
    h, w = image.shape[:2]
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * big[dy : dy + h, dx : dx + w]
    return out.astype(np.float32)


def synthetic_scene(rng: np.random.Generator, h: int = 192, w: int = 192) -> np.ndarray:
    """Smooth shading plus random flat rectangles and discs: (h, w, 3) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fy, fx = rng.uniform(0.5, 1.5, 2)
        img[..., c] = 0.3 + 0.2 * np.sin(2 * np.pi * (fx * xx + fy * yy) / max(h, w))
    for _ in range(25):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            hh, ww = rng.integers(6, h // 3), rng.integers(6, w // 3)
            img[y0 : y0 + hh, x0 : x0 + ww] = colour
        else:
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, h / 6)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


# ---------------------------------------------------------------------------------- w-step


def brute_force_w(v: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    """argmin_w |w|^alpha + beta/2 (w - v)^2 by dense search on [0, |v|], then a finer one."""
    out = np.empty_like(v, dtype=np.float64)
    for i, vi in enumerate(v):
        a = abs(float(vi))
        grid = np.linspace(0.0, a, 20001)
        e = grid**alpha + beta / 2 * (grid - a) ** 2
        k = int(np.argmin(e))
        fine = np.linspace(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)], 2001)
        e = fine**alpha + beta / 2 * (fine - a) ** 2
        out[i] = np.sign(vi) * fine[int(np.argmin(e))]
    return out


@pytest.mark.parametrize("alpha", [0.5, 2.0 / 3.0, 1.0, 0.8, 0.3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_w_step_matches_brute_force(alpha: float, dtype: type) -> None:
    rng = np.random.default_rng(0)
    # the first betas of the default schedule and its last, plus values near each threshold
    for beta in (1.0, 2.0 * np.sqrt(2.0), 22.6, 181.0):
        thr = w_threshold(alpha, beta)
        v = np.concatenate(
            [rng.uniform(-1.5, 1.5, 60), thr * rng.uniform(0.9, 1.1, 20), [0.0, thr * 1.0001]]
        )
        v = v * rng.choice([-1.0, 1.0], len(v))
        got = solve_w(v.astype(dtype), beta, alpha)
        want = brute_force_w(v, beta, alpha)
        assert got.dtype == dtype
        # at the threshold both minima tie; compare energies there instead of positions
        energy = lambda w: np.abs(w) ** alpha + beta / 2 * (w - v) ** 2  # noqa: E731
        tie = np.abs(energy(want) - energy(np.zeros_like(v))) < 1e-9
        assert np.max(np.abs(got - want)[~tie]) < 1e-4, (alpha, beta)
        assert np.all(energy(got) <= energy(want) + 1e-6)


@pytest.mark.parametrize("alpha", [0.5, 2.0 / 3.0, 0.8])
def test_w_threshold_is_where_zero_stops_winning(alpha: float) -> None:
    beta = 8.0
    thr = w_threshold(alpha, beta)
    for v, nonzero in ((thr * 0.99, False), (thr * 1.01, True)):
        w = solve_w(np.array([v]), beta, alpha)[0]
        assert (w != 0) == nonzero


def test_w_step_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        solve_w(np.zeros(3), 1.0, 1.5)


# -------------------------------------------------------------------------------- helpers


def test_gaussian_kernel_is_normalised_and_symmetric() -> None:
    k = gaussian_kernel(2.0)
    assert k.shape == (13, 13)
    assert abs(k.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    assert gaussian_kernel(0.0).shape == (1, 1)


@pytest.mark.parametrize("sigma", [0.7, 1.1, 2.0, 3.5])
def test_gaussian_kernel_and_its_otf_blur_like_scipy(sigma: float) -> None:
    """Oracle: scipy.ndimage.gaussian_filter with periodic borders (mode 'wrap') and the
    documented radius ceil(3 sigma). Multiplying by psf2otf(gaussian_kernel) is the x-step's
    model of the blur, so a wrong kernel, radius or centre shows here. Tolerance 1e-12: both
    are float64, only FFT vs direct summation rounding differs."""
    from scipy import ndimage

    rng = np.random.default_rng(9)
    img = rng.random((36, 50))
    k = gaussian_kernel(sigma)
    r = int(np.ceil(3 * sigma))
    assert k.shape == (2 * r + 1, 2 * r + 1)
    via_otf = np.fft.irfft2(np.fft.rfft2(img) * psf2otf(k, img.shape), s=img.shape)
    want = ndimage.gaussian_filter(img, sigma, mode="wrap", radius=r)
    np.testing.assert_allclose(via_otf, want, rtol=0, atol=1e-12)


def test_psf2otf_of_an_asymmetric_kernel_is_a_periodic_convolution() -> None:
    """A non-separable, off-centre kernel takes psf2otf's general path; the oracle is
    scipy.ndimage.convolve (a true convolution, centre at k // 2) with periodic borders."""
    from scipy import ndimage

    rng = np.random.default_rng(10)
    img = rng.random((30, 41))
    k = np.zeros((5, 7))
    k[0, 1], k[2, 3], k[4, 6], k[1, 5] = 0.5, 0.2, 0.2, 0.1
    via_otf = np.fft.irfft2(np.fft.rfft2(img) * psf2otf(k, img.shape), s=img.shape)
    np.testing.assert_allclose(via_otf, ndimage.convolve(img, k, mode="wrap"), rtol=0, atol=1e-12)


def test_good_fft_size() -> None:
    for n in (1, 7, 97, 500, 1021):
        m = good_fft_size(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
    assert good_fft_size(512) == 512


def test_reflect_frame_point_reflection() -> None:
    img = np.arange(5, dtype=np.float32)[None, :].repeat(3, 0)  # a linear ramp 0..4
    frame = reflect_frame(img, 0, 3, -3, 8)
    # point reflection continues a linear ramp linearly
    np.testing.assert_allclose(frame[0], np.arange(-3, 8, dtype=np.float32))
    inside = reflect_frame(img, 1, 2, 1, 4)
    np.testing.assert_array_equal(inside, img[1:2, 1:4])


def test_config_schedule_and_validation() -> None:
    betas = DeconvConfig().betas()
    assert betas[0] == 1.0 and betas[-1] < 256.0 and len(betas) == 6
    np.testing.assert_allclose(np.diff(np.log(betas)), np.log(2 * np.sqrt(2)))
    with pytest.raises(ValueError, match="lam must be > 0"):
        DeconvConfig(lam=0)
    with pytest.raises(ValueError, match="beta_rate must be > 1"):
        DeconvConfig(beta_rate=1.0)


# ------------------------------------------------------------------------- deconvolution


def test_constant_image_stays_constant() -> None:
    img = np.full((40, 50, 3), 0.37, np.float32)
    out = deconvolve(img, gaussian_kernel(2.0))
    np.testing.assert_allclose(out, 0.37, atol=1e-4)


@pytest.mark.parametrize(("lam", "min_gain"), [(None, 3.0), (2000.0, 3.5)])
def test_gain_sigma2_one_percent_noise(lam: float | None, min_gain: float) -> None:
    """Known Gaussian sigma 2 plus 1 % noise: >= 3 dB PSNR gain with the defaults (measured
    3.15 dB; they are tuned for JPEG photos) and more with lam = 2000 (measured 4.15 dB),
    the better data weight for clean input with white noise."""
    rng = np.random.default_rng(0)
    sharp = synthetic_scene(rng)
    kernel = gaussian_kernel(2.0)
    noisy = blur(sharp, kernel) + rng.normal(0, 0.01, sharp.shape).astype(np.float32)
    cfg = DeconvConfig() if lam is None else DeconvConfig(lam=lam)
    out = np.clip(deconvolve(noisy, kernel, cfg), 0, 1)
    assert out.shape == sharp.shape and out.dtype == np.float32
    gain = psnr(out, sharp) - psnr(noisy, sharp)
    assert gain >= min_gain, gain


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_no_ringing_at_borders(sigma: float) -> None:
    """A crop of a larger blurred scene (true content continues past its borders): the error in
    the 8 px border band stays below the blurred input's and within 2.5x the interior error.
    A plain periodic deconvolution of the same crop is shown to fail the same check."""
    rng = np.random.default_rng(1)
    big = synthetic_scene(rng, 256, 256)
    kernel = gaussian_kernel(sigma)
    blurred = blur(big, kernel) + rng.normal(0, 0.01, big.shape).astype(np.float32)
    c = 32
    crop, sharp = blurred[c:-c, c:-c], big[c:-c, c:-c]

    def band_errors(img: np.ndarray) -> tuple[float, float]:
        e = ((img - sharp) ** 2).mean(-1)
        ring = np.ones_like(e, dtype=bool)
        ring[8:-8, 8:-8] = False
        return float(e[ring].mean()), float(e[~ring].mean())

    border, interior = band_errors(deconvolve(crop, kernel))
    border_in, _ = band_errors(crop)
    assert border < border_in
    assert border < 2.5 * interior

    h, w = crop.shape[:2]
    periodic = deconvolve_frame(np.moveaxis(crop, -1, 0).copy(), kernel, (0, h, 0, w))
    border_p, interior_p = band_errors(np.moveaxis(periodic, 0, -1))
    assert border_p > 10 * interior_p  # the check does detect wrap-around ringing


def test_colour_equals_per_channel_and_grey_shape() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((48, 40, 3)).astype(np.float32)
    kernel = gaussian_kernel(1.5)
    colour = deconvolve(img, kernel)
    for c in range(3):
        grey = deconvolve(img[..., c], kernel)
        assert grey.shape == (48, 40)
        np.testing.assert_allclose(colour[..., c], grey, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 2.0 / 3.0, 0.8])
def test_torch_backend_matches_numpy(alpha: float) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    sharp = synthetic_scene(rng, 64, 80)
    kernel = gaussian_kernel(1.5)
    noisy = blur(sharp, kernel) + rng.normal(0, 0.01, sharp.shape).astype(np.float32)
    cfg = DeconvConfig(alpha=alpha)
    a = deconvolve(noisy, kernel, cfg)
    b = deconvolve(noisy, kernel, cfg, device=torch.device("cpu"))
    # the w-step thresholds are discontinuous, so float rounding can flip a few pixels
    assert np.mean(np.abs(a - b)) < 1e-4
    assert np.max(np.abs(a - b)) < 2e-2


def test_scratch_buffers_are_reused_without_aliasing_results() -> None:
    """Inside scratch_buffers() frames of different sizes share scratch tensors; each result is
    its own copy (a later frame does not overwrite it) and equals the unshared result."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    kernel = gaussian_kernel(1.5)
    big = blur(synthetic_scene(rng, 72, 90), kernel)
    small = blur(synthetic_scene(rng, 40, 50), kernel)
    cpu = torch.device("cpu")
    want_big = deconvolve(big, kernel, device=cpu)
    want_small = deconvolve(small, kernel, device=cpu)
    with scratch_buffers():
        got_big = deconvolve(big, kernel, device=cpu)
        got_small = deconvolve(small, kernel, device=cpu)
        again = deconvolve(big, kernel, device=cpu)
    np.testing.assert_array_equal(got_big, want_big)
    np.testing.assert_array_equal(got_small, want_small)
    np.testing.assert_array_equal(again, want_big)


def test_torch_take_gather_matches_numpy_gather() -> None:
    """The w-step's GPU gather (torch.take, int64 cells) run on the CPU equals the CPU one
    (numpy gather, cells from the float32 rounding trick), also across chunks."""
    torch = pytest.importorskip("torch")
    from defocus_cli.ops import deconv

    rng = np.random.default_rng(6)
    v = torch.from_numpy(rng.normal(0, 0.3, (2, 1, 700, 800)).astype(np.float32))
    thr = deconv.w_threshold(0.8, 64.0)
    # zero, past the table's end (Newton) on both sides, just above and below the threshold
    v[0, 0, 0, :5] = torch.tensor([0.0, 5.0, -5.0, thr * 1.001, -thr * 0.999])
    outs = []
    for numpy_gather in (True, False):
        xp = deconv._TorchBackend("cpu")
        xp.numpy_gather = numpy_gather
        outs.append(deconv._solve_w(v, 64.0, 0.8, xp).clone())
    assert v.numel() > deconv._W_CHUNK  # more than one chunk
    # the two floors may pick neighbouring cells (f ~ 1 vs f ~ 0): float32 rounding apart
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    assert outs[0][0, 0, 0, 3] > 0 and outs[0][0, 0, 0, 4] == 0
    want = solve_w(v.numpy(), 64.0, 0.8)
    np.testing.assert_allclose(outs[0].numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_divergence_is_the_adjoint_of_the_gradients(backend: str) -> None:
    """<grad x, w> = <x, div w> for the periodic differences of the x-step's Fourier model."""
    from defocus_cli.ops import deconv

    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 9, 13)).astype(np.float32)
    w = rng.normal(size=(2, 2, 9, 13)).astype(np.float32)
    xp = deconv._backend_for(None if backend == "numpy" else "cpu")
    g = xp.copy_out(deconv._gradients(xp.asarray(x), xp))
    d = xp.copy_out(deconv._divergence(xp.asarray(w), xp))
    np.testing.assert_allclose(g[0, :, :, :-1], x[:, :, 1:] - x[:, :, :-1], atol=1e-6)
    np.testing.assert_allclose(g[1, :, -1], x[:, 0] - x[:, -1], atol=1e-6)  # periodic
    np.testing.assert_allclose(np.sum(g * w), np.sum(x * d), rtol=1e-5)


def test_w_step_beyond_the_table_and_below_beta_one() -> None:
    """|v| past the lookup table's end (Newton from u = v) and beta < 1 (Newton from the
    table) against brute force."""
    rng = np.random.default_rng(5)
    for beta in (0.3, 181.0):
        v = rng.uniform(-6.0, 6.0, 80) * (1.0 if beta > 1 else 4.0)
        got = solve_w(v, beta, 0.8)
        want = brute_force_w(v, beta, 0.8)
        assert np.max(np.abs(got - want)) < 1e-4


def test_input_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"image must be \(H, W\) or \(H, W, C\)"):
        deconvolve(np.zeros((2, 2, 2, 2)), gaussian_kernel(1.0))
    with pytest.raises(ValueError, match="kernel must be a non-empty 2-D non-negative"):
        deconvolve(np.zeros((8, 8)), -np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"frame must be \(C, H, W\)"):
        deconvolve_frame(np.zeros((8, 8)), gaussian_kernel(1.0), (0, 8, 0, 8))
