"""`defocus magnify` x8 on a 12 MP photo with a given map, and its error against the naive
per-layer full-resolution reference.

    python benchmarks/bench_magnify.py                 # 12 MP timing + error at 3 MP
    python benchmarks/bench_magnify.py --error-size 4000x3000   # error at 12 MP (very slow)

Photo and map: DFD indoor scene 1 (../shared/data) brought to 4000x3000 (cubic), its defocus
map the thin-lens sigma of its depth with the focus at the near end, 0 .. --sigma-max px at
12 MP (bilinear, smooth). Magnification x8 adds sqrt(63) sigma, i.e. up to ~48 px.

The naive reference (ops.layered.render_layers_reference: one full-frame cv2.GaussianBlur per
layer) costs about an hour at 12 MP with 350 layers of sigma up to 48 px, so the error is
measured on the same scene at --error-size (default 2000x1500, sigma halved: the same blur
relative to the frame), where the reference takes minutes; the 12 MP reference time is
estimated from timing full-frame blurs of a sample of its layers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defocus_cli.io.depth import read_depth  # noqa: E402
from defocus_cli.io.images import read_image  # noqa: E402
from defocus_cli.ops.layered import layers_from_sigma, render_layers_reference  # noqa: E402
from defocus_cli.pipelines.magnify import MagnifyConfig, magnify_defocus  # noqa: E402

DATA = Path(os.environ.get("DEFOCUS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def photo_and_map(width: int, height: int, sigma_max: float, smooth: bool = True):
    base = DATA / "rgbd" / "dfd-indoor"
    rgb = read_image(base / "allinfocus/indoor_001.jpg").pixels
    depth = read_depth(base / "depth/indoor_001.png").depth
    depth = np.where(np.isfinite(depth), depth, np.nanmedian(depth))
    if smooth:  # like an estimated map: free of the depth sensor's pixel noise, edges kept
        depth = cv2.medianBlur(depth.astype(np.float32), 5)
    lo, hi = np.percentile(depth, [0.5, 99.5])
    depth = np.clip(depth, lo, hi)
    sigma = (depth - lo) / depth  # thin lens, focus at the near end: c ~ (x - S1) / x
    sigma = (sigma / sigma.max() * sigma_max).astype(np.float32)
    rgb = np.clip(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    sigma = cv2.resize(sigma, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb, dtype=np.float32), np.maximum(sigma, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--error-size", default="2000x1500")
    ap.add_argument("--scale", type=float, default=8.0)
    ap.add_argument("--sigma-max", type=float, default=6.0, help="largest map sigma at --size, px")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sample-layers", type=int, default=8, help="layers timed for the 12 MP reference estimate")
    args = ap.parse_args()
    config = MagnifyConfig(scale=args.scale, in_focus=0.0)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores); cv2 threads {cv2.getNumThreads()}")

    w, h = (int(v) for v in args.size.split("x"))
    rgb, sigma = photo_and_map(w, h, args.sigma_max)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = magnify_defocus(rgb, sigma, config)
        times.append(time.perf_counter() - t0)
    added = result.added_sigma
    print(f"magnify x{args.scale:g} {w}x{h} ({w * h / 1e6:.1f} MP): {result.layers} layers, added sigma "
          f"up to {added.max():.1f} px; fast {statistics.median(times):.2f} s (median of {len(times)}: "
          + ", ".join(f"{t:.2f}" for t in times) + ")")

    # the naive reference at full size: time a sample of its layers' full-frame blurs
    layers = layers_from_sigma(added, config.focus, max_layers=config.max_layers)
    rgba = np.dstack([rgb, np.ones(rgb.shape[:2], np.float32)])
    picks = np.linspace(0, layers.count - 1, min(args.sample_layers, layers.count)).round().astype(int)
    per_layer = []
    for i in picks:
        t0 = time.perf_counter()
        pre = rgba * (layers.labels == i)[..., None]
        if layers.sigmas[i] > 0:
            cv2.GaussianBlur(pre, (0, 0), float(layers.sigmas[i]))
        per_layer.append(time.perf_counter() - t0)
    est = statistics.mean(per_layer) * layers.count
    print(f"naive reference at {w}x{h}: ~{est:.0f} s estimated ({len(picks)} of {layers.count} layers "
          f"timed, mean {statistics.mean(per_layer):.2f} s/layer, compositing not counted) -> "
          f"speed-up ~{est / statistics.median(times):.0f}x")

    ew, eh = (int(v) for v in args.error_size.split("x"))
    f = ew / w
    rgb_e, sigma_e = photo_and_map(ew, eh, args.sigma_max * f)
    t0 = time.perf_counter()
    fast = magnify_defocus(rgb_e, sigma_e, config)
    t_fast = time.perf_counter() - t0
    layers_e = layers_from_sigma(fast.added_sigma, config.focus, max_layers=config.max_layers)
    t0 = time.perf_counter()
    ref = render_layers_reference(rgb_e, layers_e)
    t_ref = time.perf_counter() - t0
    err = np.abs(fast.image - ref) * 255
    print(f"error at {ew}x{eh} (sigma scaled by {f:g}, {layers_e.count} layers): fast {t_fast:.2f} s, "
          f"reference {t_ref:.0f} s ({t_ref / t_fast:.0f}x); |fast - reference| max {err.max():.2f}/255, "
          f"mean {err.mean():.3f}/255, 99.9th pct {np.percentile(err, 99.9):.2f}/255")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
