"""Does full resolution tell sharp from blurred? The camera-resolution photos of dfd-outdoor.

    python benchmarks/bench_full_res.py [--models dmenet-lite fused] [--threads 2]

For each 10 MP photo of ../shared/data/real/dfd-outdoor/f2.8-full/ (real f/2.8 shots, no
labels) and each estimator at default settings: the map's minimum, 1st and 5th percentiles, the
share of pixels below 1 px sigma, and the same over the photo's edge pixels (Canny at full
resolution), with the time the estimate took in this process. Network B at its 768 px working
size cannot go below its floor divided by the scale (~0.3 px / 0.2); the edge map measures at
1024 px and the fused map inherits it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.estimator import load_estimator  # noqa: E402
from defocus_cli.io.images import read_image  # noqa: E402
from defocus_cli.ops.edges import detect_edges  # noqa: E402

SHARED = Path(os.environ.get("DEFOCUS_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dmenet-lite", "fused"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/full_res.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    photos = sorted((SHARED / "real" / "dfd-outdoor" / "f2.8-full").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED}/real/dfd-outdoor/f2.8-full")
    estimators = {m: load_estimator(m, device="cpu") for m in args.models}
    rows = []
    for path in photos:
        rgb = read_image(path).pixels
        edges = detect_edges(rgb)
        for name, est in estimators.items():
            t0 = time.perf_counter()
            sigma = est.estimate(rgb).sigma
            seconds = time.perf_counter() - t0
            row = {"photo": path.name, "model": name, "size": [rgb.shape[1], rgb.shape[0]], "seconds": seconds,
                   "min": float(sigma.min()), "p1": float(np.percentile(sigma, 1)),
                   "p5": float(np.percentile(sigma, 5)), "below_1px": float((sigma < 1).mean()),
                   "edge_pixels_below_1px": float((sigma[edges] < 1).mean())}
            rows.append(row)
            print(f"{path.name} {name:12s} min {row['min']:.2f} p1 {row['p1']:.2f} p5 {row['p5']:.2f} px; "
                  f"below 1 px: {100 * row['below_1px']:.1f} % of pixels, {100 * row['edge_pixels_below_1px']:.1f} % "
                  f"of edge pixels; {seconds:.1f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": platform.processor() or platform.machine(), "rows": rows}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
