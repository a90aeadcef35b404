"""Deblurring real f/2.8 photos of dfd-indoor against their f/8 shots (PSNR / SSIM change).

    python benchmarks/bench_deblur_real.py [--scenes N] [--lam L] [--alpha A] [--layers K]
                                           [--sigma-scale S] [--ceiling] [--estimated MODEL|FILE]

--estimated deblurs with maps estimated by the network (registry name or weights file)
instead of the ground-truth maps; alignment and exposure still use the ground-truth map.

Data: ../shared/data/rgbd/dfd-indoor (never copied into the repository). Per scene:

1. Ground-truth defocus map from the registered depth PNG (mm, 0 = no reading): invalid pixels
   take their nearest valid depth, a 5x5 median removes sensor speckle, then the thin lens
   (35 mm, f/2.8, focus 1.7 m, pixel pitch 36 um at 645x432) gives c = alpha |x - S1| / x and
   sigma = c / 4 (ops.thinlens).
2. The two shots are not pixel-identical: they were taken one after the other, so the f/8 shot
   is aligned to the f/2.8 one (checked: up to 3.5 px global shift, ~0.5 px local residual) and
   brought to its exposure (f/8 and f/2.8 differ in exposure and vignetting). Both are estimated
   between the f/2.8 photo and the f/8 shot re-blurred with the ground-truth map, so alignment
   and exposure are judged on equally blurred images and never on the deblurred output:
   ECC affine, then DIS optical flow smoothed over 3 px, then a smooth per-channel gain
   (ratio of 12 px low-passes).
3. PSNR and SSIM (Gaussian window 1.5, per channel, averaged) of input and of the deblurred
   image against the aligned f/8 shot, 16 px border excluded.

Also prints, per run, the gain of the best linear 9x9 filter fitted by least squares on the
left half of each scene and applied to its right half: a data-driven ceiling for any
linear restoration of this pair, which says how much pixel-level sharpening the f/8
reference can reward at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.io.depth import read_depth  # noqa: E402
from defocus_cli.io.images import read_image  # noqa: E402
from defocus_cli.ops.deconv import DeconvConfig  # noqa: E402
from defocus_cli.ops.thinlens import alpha_from_lens, coc_diameter, sigma_from_coc  # noqa: E402
from defocus_cli.pipelines.deblur import DeblurConfig, deblur  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "rgbd" / "dfd-indoor"
FOCAL_MM, F_NUMBER, FOCUS_MM, PITCH_MM = 35.0, 2.8, 1700.0, 0.036
BORDER = 16


def gt_sigma(depth_png: Path) -> np.ndarray:
    x = read_depth(depth_png).depth.astype(np.float32) * 1000.0  # m -> mm
    valid = np.isfinite(x) & (x > 0)
    if not valid.all():
        _, lab = cv2.distanceTransformWithLabels(
            (~valid).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )
        vals = np.zeros(lab.max() + 1, np.float32)
        ys, xs = np.nonzero(valid)
        vals[lab[ys, xs]] = x[ys, xs]
        x = vals[lab]
    x = cv2.medianBlur(x, 5)
    alpha_px = alpha_from_lens(FOCAL_MM, F_NUMBER, FOCUS_MM) / PITCH_MM
    return sigma_from_coc(coc_diameter(x, FOCUS_MM, alpha_px)).astype(np.float32)


def reblur(img: np.ndarray, sigma: np.ndarray, n: int = 24) -> np.ndarray:
    """Spatially varying Gaussian blur by interpolating between n uniformly blurred copies."""
    levels = np.linspace(0, max(float(sigma.max()), 1e-3), n)
    pos = np.clip(sigma / levels[1], 0, n - 1 - 1e-6)
    j = pos.astype(int)
    t = (pos - j)[..., None]
    out = np.zeros_like(img)
    prev = img
    for k in range(n - 1):
        nxt = cv2.GaussianBlur(img, (0, 0), levels[k + 1])
        m = (j == k)[..., None]
        out += np.where(m, (1 - t) * prev + t * nxt, 0)
        prev = nxt
    return out


def grey_u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), 0, 1) * 255).astype(np.uint8)


def warp_flow(img: np.ndarray, f: np.ndarray) -> np.ndarray:
    h, w = f.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xx + f[..., 0], yy + f[..., 1], cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT)


def aligned_reference(blurry: np.ndarray, sharp: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The f/8 shot aligned to and exposure-matched with the f/2.8 photo (see module doc)."""
    pred = reblur(sharp, sigma)
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    g = lambda a: cv2.GaussianBlur(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), (0, 0), 1.0)  # noqa: E731
    _, warp = cv2.findTransformECC(g(blurry), g(pred), warp, cv2.MOTION_AFFINE, crit, None, 5)
    h, w = blurry.shape[:2]
    aff = lambda a: cv2.warpAffine(a, warp, (w, h), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,  # noqa: E731
                                   borderMode=cv2.BORDER_REFLECT)
    sharp, pred = aff(sharp), aff(pred)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    flow = dis.calc(grey_u8(blurry), grey_u8(pred), None)
    flow = np.dstack([cv2.GaussianBlur(flow[..., i], (0, 0), 3) for i in range(2)])
    sharp, pred = warp_flow(sharp, flow), warp_flow(pred, flow)
    lp = lambda a: cv2.GaussianBlur(a, (0, 0), 12)  # noqa: E731
    gain = lp(blurry) / np.maximum(lp(pred), 1e-3)
    return sharp * gain


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[BORDER:-BORDER, BORDER:-BORDER], b[BORDER:-BORDER, BORDER:-BORDER]
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = 0.01**2, 0.03**2
    f = lambda x: cv2.GaussianBlur(x, (0, 0), 1.5)  # noqa: E731
    vals = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(m[BORDER:-BORDER, BORDER:-BORDER].mean())
    return float(np.mean(vals))


def linear_ceiling(blurry: np.ndarray, ref: np.ndarray, k: int = 9) -> float:
    """PSNR gain of the least-squares k x k filter fitted on the left half, tested on the right."""
    h, w = blurry.shape[:2]
    r = k // 2
    cols, ys = [], []
    for c in range(3):
        b = np.pad(blurry[..., c], r, mode="reflect")
        cols.append(np.stack([b[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], -1))
        ys.append(ref[..., c])
    x, y = np.stack(cols), np.stack(ys)
    tr = (slice(None), slice(BORDER, h - BORDER), slice(BORDER, w // 2))
    te = (slice(None), slice(BORDER, h - BORDER), slice(w // 2, w - BORDER))
    design = lambda s: np.concatenate([x[s].reshape(-1, k * k), np.ones((x[s][..., 0].size, 1))], 1)  # noqa: E731
    coef, *_ = np.linalg.lstsq(design(tr), y[tr].reshape(-1), rcond=None)
    fit = np.clip(design(te) @ coef, 0, 1).reshape(y[te].shape)
    mse = lambda p: np.mean((p - y[te]) ** 2)  # noqa: E731
    return float(10 * np.log10(mse(x[te][..., k * k // 2]) / mse(fit)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=0, help="use every n-th scene such that about N are used (0 = all)")
    ap.add_argument("--offset", type=int, default=0, help="first scene index when subsampling")
    ap.add_argument("--lam", type=float, default=DeconvConfig().lam)
    ap.add_argument("--alpha", type=float, default=DeconvConfig().alpha)
    ap.add_argument("--layers", type=int, default=DeblurConfig().layers)
    ap.add_argument("--sigma-scale", type=float, default=1.0, help="multiply the map by this")
    ap.add_argument("--ceiling", action="store_true", help="also fit the linear 9x9 ceiling")
    ap.add_argument("--device", default="cpu", help="torch device for the FFTs, or 'numpy'")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: see benchmarks/README)")
    ap.add_argument("--estimated", default=None,
                    help="deblur with maps estimated by this model name or weights file")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"dfd-indoor not found at {DATA}")
    scenes = sorted(p.stem for p in (DATA / "defocused").glob("*.jpg"))
    if args.scenes:
        step = max(1, len(scenes) // args.scenes)
        scenes = scenes[args.offset::step][: args.scenes]
    import torch

    torch.set_num_threads(args.threads)
    cfg = DeblurConfig(deconv=DeconvConfig(lam=args.lam, alpha=args.alpha), layers=args.layers)
    device = None if args.device == "numpy" else args.device
    estimator = None
    if args.estimated:
        from defocus_cli.estimator import load_estimator

        as_file = Path(args.estimated)
        estimator = load_estimator(weights=as_file) if as_file.suffix == ".pt" else \
            load_estimator(model=args.estimated)
    rows = []
    t0 = time.perf_counter()
    for name in scenes:
        blurry = read_image(DATA / "defocused" / f"{name}.jpg").pixels
        sharp = read_image(DATA / "allinfocus" / f"{name}.jpg").pixels
        sigma = gt_sigma(DATA / "depth" / f"{name}.png")
        ref = aligned_reference(blurry, sharp, sigma)
        used = sigma if estimator is None else estimator.estimate(blurry).sigma
        out = deblur(blurry, used * args.sigma_scale, cfg, device=device).image
        row = [psnr(blurry, ref), psnr(out, ref), ssim(blurry, ref), ssim(out, ref)]
        if args.ceiling:
            row.append(linear_ceiling(blurry, ref))
        rows.append(row)
        print(f"{name}: sigma median {np.median(sigma):.2f} max {sigma.max():.2f} px | PSNR "
              f"{row[0]:.2f} -> {row[1]:.2f} ({row[1] - row[0]:+.2f}) | SSIM {row[2]:.4f} -> "
              f"{row[3]:.4f} ({row[3] - row[2]:+.4f})"
              + (f" | linear 9x9 ceiling {row[4]:+.2f} dB" if args.ceiling else ""), flush=True)
    r = np.array(rows)
    d = r[:, 1] - r[:, 0]
    maps = f"maps estimated by {args.estimated}" if args.estimated else "ground-truth maps"
    print(f"\n{len(rows)} scenes, {maps}, lam={args.lam:g} alpha={args.alpha:.3g} "
          f"layers={args.layers} sigma-scale={args.sigma_scale:g}, {time.perf_counter() - t0:.0f} s")
    print(f"PSNR  input {r[:, 0].mean():.2f} dB -> deblurred {r[:, 1].mean():.2f} dB: "
          f"mean change {d.mean():+.2f} dB (median {np.median(d):+.2f}, worst {d.min():+.2f}, "
          f"best {d.max():+.2f}, {np.mean(d > 0) * 100:.0f}% of scenes improved)")
    print(f"SSIM  input {r[:, 2].mean():.4f} -> deblurred {r[:, 3].mean():.4f}: "
          f"mean change {np.mean(r[:, 3] - r[:, 2]):+.4f}")
    if args.ceiling:
        print(f"linear 9x9 least-squares ceiling (fit left half, test right half): "
              f"mean {r[:, 4].mean():+.2f} dB")


if __name__ == "__main__":
    main()
