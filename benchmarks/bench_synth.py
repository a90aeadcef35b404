"""Layered renderer for `defocus synth`: time per ~1 MP sample at up to 350 layers, and error
against the straightforward reference (one full-resolution cv2.GaussianBlur per layer).

    python benchmarks/bench_synth.py                  # all scenes, 3 focus positions each
    python benchmarks/bench_synth.py --scenes synthia --repeats 5
    python benchmarks/bench_synth.py --no-reference   # timings only (the reference is slow)

Scenes (shared data, ../shared/data): SYNTHIA 1280x760 at its native size (real 16-bit depth,
0.97 MP); a DFD indoor scene brought to 1224x816 (Kinect depth, noisy, nearest-neighbour
resized); a procedural 1024x1024 scene textured with the sharp photos (exact depth). Cameras:
the paper's thin lens with alpha = alpha_up (the largest blur Eq. 2 allows, CoC up to c_max =
28 px, i.e. the most layers) and the focus near, in the middle and far in the depth range.
Times are medians of wall-clock and of process CPU time (all threads: on an idle 2-core machine
the wall time is at most this); the machine may be shared, so the load average is printed too.
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
from defocus_cli.ops.layered import (layers_from_depth, render_layers,  # noqa: E402
                                     render_layers_reference)
from defocus_cli.ops.thinlens import alpha_upper_bound  # noqa: E402
from defocus_cli.pipelines.synth import _texture_files, make_procedural_scene  # noqa: E402

DATA = Path(os.environ.get("DEFOCUS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def scene_synthia():
    base = DATA / "rgbd" / "syndof-samples"
    rgb = read_image(base / "image/SYNTHIA/SYNTHIA-SEQS-01-NIGHT/Stereo_Right/Omni_F/000000.png").pixels
    depth = read_depth(base / "depth/SYNTHIA/SYNTHIA-SEQS-01-NIGHT/Stereo_Right/Omni_F/000000.png").depth
    return rgb, depth


def scene_dfd():
    base = DATA / "rgbd" / "dfd-indoor"
    rgb = read_image(base / "allinfocus/indoor_001.jpg").pixels
    depth = read_depth(base / "depth/indoor_001.png").depth
    size = (1224, 816)
    rgb = np.clip(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC), 0, 1)
    return np.ascontiguousarray(rgb), cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)


def scene_procedural():
    textures = _texture_files(DATA / "sharp") if (DATA / "sharp").is_dir() else None
    rgb, depth, _ = make_procedural_scene(np.random.default_rng(0), 1024, 1024, textures)
    return rgb, depth


SCENES = {"synthia": scene_synthia, "dfd": scene_dfd, "procedural": scene_procedural}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="synthia,dfd,procedural")
    ap.add_argument("--focus", default="0.05,0.5,0.95", help="focus positions in the depth range")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores); cv2 threads {cv2.getNumThreads()}")
    print("| scene | size | focus | layers | fast s (wall) | fast s (CPU) | reference s | speed-up | max err /255 | mean err /255 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst_max = worst_mean = 0.0
    fast_times, cpu_times = [], []
    for name in args.scenes.split(","):
        rgb, depth = SCENES[name]()
        valid = np.isfinite(depth)
        fill = float(np.nanmedian(depth))
        lo, hi = (float(v) for v in np.percentile(depth[valid], [0.5, 99.5]))
        depth = np.clip(np.where(valid, depth, fill), lo, hi).astype(np.float32)
        h, w = depth.shape
        for q in (float(v) for v in args.focus.split(",")):
            s1 = lo + (hi - lo) * q
            alpha = float(alpha_upper_bound(lo, hi, s1))
            times, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                layers = layers_from_depth(depth, s1, alpha)
                fast = render_layers(rgb, layers)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            t_fast, t_cpu = statistics.median(times), statistics.median(cpu)
            fast_times.append(t_fast / (h * w / 1e6))
            cpu_times.append(t_cpu / (h * w / 1e6))
            if args.no_reference:
                print(f"| {name} | {w}x{h} | {q:.2f} | {layers.count} | {t_fast:.2f} | {t_cpu:.2f} | - | - | - | - |")
                continue
            t0 = time.perf_counter()
            ref = render_layers_reference(rgb, layers)
            t_ref = time.perf_counter() - t0
            err = np.abs(fast - ref) * 255
            worst_max, worst_mean = max(worst_max, err.max()), max(worst_mean, err.mean())
            print(f"| {name} | {w}x{h} | {q:.2f} | {layers.count} | {t_fast:.2f} | {t_cpu:.2f} | {t_ref:.1f} | "
                  f"{t_ref / t_fast:.0f}x | {err.max():.2f} | {err.mean():.3f} |", flush=True)
    print(f"\nfast render per MP: wall median {statistics.median(fast_times):.2f} s, worst "
          f"{max(fast_times):.2f} s; CPU (all threads) median {statistics.median(cpu_times):.2f} s, "
          f"worst {max(cpu_times):.2f} s")
    if not args.no_reference:
        print(f"worst error vs reference: max {worst_max:.2f}/255, mean {worst_mean:.3f}/255")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
