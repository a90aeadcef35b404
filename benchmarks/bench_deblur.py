"""Layered deblur of a 12 MP photo: time and peak memory, against a naive per-layer version.

    python benchmarks/bench_deblur.py [--mode layered|naive|both] [--layers 16] [--threads N]
                                      [--device cpu|cuda|numpy] [--map scene|ramp]

Each measured run happens in its own subprocess, so its peak RSS (ru_maxrss) is its own.

The photo: dfd-indoor scene indoor_030's f/8 shot upscaled to 4240x2832 (12.0 MP) with its
thin-lens defocus map at that resolution (35 mm f/2.8 focused at 1.7 m; the dataset's 36 um
effective pitch at 645 px wide becomes 5.5 um, close to the camera's real 6 um pixels), so
sigma reaches ~10-30 px in the foreground as in a real full-resolution photo. ``--map ramp``
uses a worst case instead: sigma rising linearly from 0 to 8 px across the whole frame, so
every pixel needs two layers. Without the shared data, a procedural scene is used.

naive: every layer deconvolved over the whole image (one frame per layer, same solver,
same margins and per-pixel weights), composed as it goes: what a straightforward
implementation of "deconvolve each layer, then compose" does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "rgbd" / "dfd-indoor"
SIZE = (2832, 4240)  # (H, W): 12.0 MP


def make_input(kind: str) -> tuple[np.ndarray, np.ndarray, str]:
    import cv2

    from defocus_cli.ops.thinlens import alpha_from_lens, coc_diameter, sigma_from_coc

    h, w = SIZE
    if kind == "scene" and DATA.is_dir():
        from defocus_cli.io.depth import read_depth
        from defocus_cli.io.images import read_image

        small = read_image(DATA / "allinfocus" / "indoor_030.jpg").pixels
        rgb = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        depth = read_depth(DATA / "depth" / "indoor_030.png").depth * 1000.0
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nanmedian(depth))
        depth = cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        pitch_mm = 0.036 * small.shape[1] / w
        alpha_px = alpha_from_lens(35.0, 2.8, 1700.0) / pitch_mm
        sigma = sigma_from_coc(coc_diameter(depth, 1700.0, alpha_px)).astype(np.float32)
        return rgb.astype(np.float32), sigma, "dfd-indoor indoor_030 upscaled, thin-lens map"
    rng = np.random.default_rng(0)
    rgb = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_NEAREST)
    if kind == "ramp":
        sigma = np.broadcast_to(np.linspace(0, 8, w, dtype=np.float32), (h, w)).copy()
        return rgb, sigma, "procedural blocks, sigma ramp 0..8 px across the width"
    yy, xx = np.mgrid[0:h, 0:w]
    sigma = np.where((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2, 0.0, 12.0)
    sigma = cv2.GaussianBlur(sigma.astype(np.float32), (0, 0), 40)
    return rgb, sigma, "procedural blocks, sharp disc on a 12 px background"


def naive(rgb, sigma, config, device):
    """Every level deconvolved over the whole frame, then composed with the same weights."""
    from defocus_cli.ops.deconv import deconvolve_frame, gaussian_kernel, good_fft_size, reflect_frame
    from defocus_cli.pipelines.deblur import LUMA, clipped_mask, level_weights, saturation_keep, sigma_levels

    h, w = sigma.shape
    clipped = None if config.saturation is None else clipped_mask(rgb, config.saturation)
    keep = None if clipped is None else saturation_keep(clipped, sigma)  # as the layered version
    levels = sigma_levels(float(sigma.max()), config)
    j, t = level_weights(sigma, levels, config.blend)
    src = rgb if config.channels == "rgb" else (rgb @ LUMA)[..., None]
    out = src * np.where(j == 0, 1.0 - t, 0.0)[..., None]
    for k in range(1, len(levels)):
        wk = (np.where(j == k, 1.0 - t, 0.0) + np.where(j + 1 == k, t, 0.0)).astype(np.float32)
        if not wk.any():
            continue
        kernel = gaussian_kernel(float(levels[k]))
        m = max(int(math.ceil(config.margin_sigmas * levels[k])) + 8, kernel.shape[0] // 2 + 1)
        fh, fw = good_fft_size(h + 2 * m), good_fft_size(w + 2 * m)
        top, left = (fh - h) // 2, (fw - w) // 2
        frame = np.moveaxis(reflect_frame(src, -top, fh - top, -left, fw - left), -1, 0)
        unknown = None
        if keep is not None:  # the clipped zone is unknown data, as in the layered version
            unknown = np.clip(1.0 - reflect_frame(keep, -top, fh - top, -left, fw - left), 0.0, 1.0)
        restored = deconvolve_frame(np.ascontiguousarray(frame), kernel,
                                    (top, top + h, left, left + w), config.deconv, device, unknown)
        out += np.moveaxis(restored, 0, -1) * wk[..., None]
    if keep is not None:
        out = src + keep[..., None] * (out - src)
    if config.channels == "luma":
        out = rgb + (out - src)
    return np.clip(out, 0, 1)


def child(args) -> None:
    import torch

    from defocus_cli.pipelines.deblur import DeblurConfig, deblur

    if args.threads:
        torch.set_num_threads(args.threads)
    rgb, sigma, what = make_input(args.map)
    config = DeblurConfig(layers=args.layers, channels=args.channels)
    device = None if args.device == "numpy" else args.device
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = u0.ru_utime + u0.ru_stime
    t0 = time.perf_counter()
    if args.mode == "layered":
        res = deblur(rgb, sigma, config, device=device)
        extra = {"frames": res.frames, "frame_area_x_image": round(res.frame_pixels / sigma.size, 2)}
    else:
        naive(rgb, sigma, config, device)
        extra = {}
    if device not in (None, "cpu"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    peak_gb = usage.ru_maxrss / 1024**2
    print(json.dumps({"mode": args.mode, "seconds": round(secs, 1), "cpu_seconds": round(cpu, 1),
                      "load_avg_1min": round(os.getloadavg()[0], 2), "peak_rss_gb": round(peak_gb, 2),
                      "input": what, "megapixels": round(sigma.size / 1e6, 1),
                      "sigma_max": round(float(sigma.max()), 1), "layers": args.layers,
                      "threads": torch.get_num_threads(), "device": args.device, **extra}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="both", choices=["layered", "naive", "both"])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (torch.fft) or numpy")
    ap.add_argument("--map", default="scene", choices=["scene", "ramp", "disc"])
    ap.add_argument("--channels", default="luma", choices=["luma", "rgb"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    modes = ["layered", "naive"] if args.mode == "both" else [args.mode]
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    for mode in modes:
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--layers", str(args.layers),
               "--threads", str(args.threads), "--device", args.device, "--map", args.map,
               "--channels", args.channels]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
