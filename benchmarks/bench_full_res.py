"""Does full resolution tell sharp from blurred? Camera-resolution photos, real and rendered.

    python benchmarks/bench_full_res.py [--variant NAME[:key=value,...] ...] [--threads 2]
    python benchmarks/bench_full_res.py --synthetic DIR [--part tune|report|all] [--variant ...]

Real (default): each 10 MP photo of ../shared/data/real/dfd-outdoor/f2.8-full/ (real f/2.8
shots, no labels): the map's minimum, 1st and 5th percentiles, the share of pixels below 1 px
sigma, and the same over the photo's edge pixels (Canny at full resolution), with the time the
estimate took in this process.

Synthetic (``--synthetic DIR``, a ``defocus synth`` dataset rendered at camera resolution, e.g.
``defocus synth --procedural 24 --textures ../shared/data/sharp --size 3872x2592 --c-max 40
--seed 7 -o datasets/hires-procedural``; procedural scenes are textured with sharp photos
mirror-tiled at their own scale, never enlarged, so in-focus regions are sharp): labels are
exact, so per image: MAE (px) over the labelled pixels; over in-focus *edge* pixels (Canny at
full resolution where the true sigma is below 1 px) the share that reads below 1 px and their
MAE; over blurred pixels (true sigma >= 2 px) the share that reads below 1 px (false
sharpness). ``--part tune`` takes the even-numbered samples (settings are chosen there),
``report`` the odd ones.

A variant is a registry model with EdgeConfig fields overridden, e.g. ``fused:fine_points=0``
(the fused estimator without its full-resolution pass); the defaults are ``dmenet-lite``,
``fused:fine_points=0`` and ``fused``.
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

from defocus_cli.estimator import load_variant  # noqa: E402
from defocus_cli.io.images import read_image  # noqa: E402
from defocus_cli.ops.edges import detect_edges  # noqa: E402

SHARED = Path(os.environ.get("DEFOCUS_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_VARIANTS = ["dmenet-lite", "fused:fine_points=0", "fused"]


def real_rows(estimators: dict) -> list[dict]:
    photos = sorted((SHARED / "real" / "dfd-outdoor" / "f2.8-full").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED}/real/dfd-outdoor/f2.8-full")
    rows = []
    for path in photos:
        rgb = read_image(path).pixels
        edges = detect_edges(rgb)
        for name, est in estimators.items():
            t0 = time.perf_counter()
            sigma = est.estimate(rgb).sigma
            seconds = time.perf_counter() - t0
            row = {"photo": path.name, "variant": name, "size": [rgb.shape[1], rgb.shape[0]],
                   "seconds": seconds, "min": float(sigma.min()), "p1": float(np.percentile(sigma, 1)),
                   "p5": float(np.percentile(sigma, 5)), "below_1px": float((sigma < 1).mean()),
                   "edge_pixels_below_1px": float((sigma[edges] < 1).mean())}
            rows.append(row)
            print(f"{path.name} {name:22s} min {row['min']:.2f} p1 {row['p1']:.2f} p5 {row['p5']:.2f} px; "
                  f"below 1 px: {100 * row['below_1px']:.1f} % of pixels, "
                  f"{100 * row['edge_pixels_below_1px']:.1f} % of edge pixels; {seconds:.1f} s", flush=True)
    return rows


def synthetic_rows(estimators: dict, folder: Path, part: str) -> list[dict]:
    names = sorted(p.stem for p in (folder / "image").glob("*.png"))
    if part != "all":
        names = names[0::2] if part == "tune" else names[1::2]
    rows = []
    for name in names:
        rgb = read_image(folder / "image" / f"{name}.png").pixels
        truth = np.load(folder / "sigma" / f"{name}.npy")
        known = np.isfinite(truth)
        sharp_edges = detect_edges(rgb) & known & (truth < 1)
        blurred = known & (truth >= 2)
        for vname, est in estimators.items():
            t0 = time.perf_counter()
            sigma = est.estimate(rgb).sigma
            seconds = time.perf_counter() - t0
            error = np.abs(sigma - truth)
            some = bool(sharp_edges.any())
            row = {"image": name, "variant": vname, "seconds": seconds,
                   "mae": float(error[known].mean()),
                   "sharp_edge_pixels": int(sharp_edges.sum()),
                   "sharp_edges_below_1px": float((sigma[sharp_edges] < 1).mean()) if some else None,
                   "sharp_edges_mae": float(error[sharp_edges].mean()) if some else None,
                   "blurred_below_1px": float((sigma[blurred] < 1).mean()) if blurred.any() else None}
            rows.append(row)
            print(f"{name} {vname:22s} MAE {row['mae']:.3f} px; "
                  f"in-focus edges: {row['sharp_edge_pixels']} px, "
                  f"{_pct(row['sharp_edges_below_1px'])} read < 1 px, MAE {_num(row['sharp_edges_mae'])}; "
                  f"blurred read < 1 px: {_pct(row['blurred_below_1px'])}; {seconds:.1f} s", flush=True)
    print("means over images:")
    for vname in estimators:
        mine = [r for r in rows if r["variant"] == vname]

        def mean(key: str) -> float:
            vals = [r[key] for r in mine if r[key] is not None]
            return float(np.mean(vals)) if vals else float("nan")

        print(f"  {vname:22s} MAE {mean('mae'):.3f} px; "
              f"in-focus edges read < 1 px {100 * mean('sharp_edges_below_1px'):.1f} %, "
              f"their MAE {mean('sharp_edges_mae'):.3f} px; "
              f"blurred read < 1 px {100 * mean('blurred_below_1px'):.2f} %; "
              f"{mean('seconds'):.2f} s per image")
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", help="model[:key=value,...] (repeatable)")
    ap.add_argument("--synthetic", type=Path, help="a defocus synth dataset at camera resolution")
    ap.add_argument("--part", choices=("tune", "report", "all"), default="report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    estimators = {v: load_variant(v, device="cpu") for v in (args.variant or DEFAULT_VARIANTS)}
    if args.synthetic:
        rows = synthetic_rows(estimators, args.synthetic, args.part)
        out = args.out or f"benchmarks/results/full_res_synthetic_{args.part}.json"
    else:
        rows = real_rows(estimators)
        out = args.out or "benchmarks/results/full_res.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    Path(out).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
