"""Deblurring real photos with estimated maps: PSNR change against the map margin.

    python benchmarks/bench_deblur_margin.py [--split val] [--weights FILE | --model NAME]
                                             [--margins 0,0.25,0.5,0.75,1] [--ground-truth]

The `defocus eval DATASET --deblur` protocol on a `defocus eval prepare-dfd` folder (default
datasets/dfd-real): each f/2.8 photo is deblurred with the network's map minus the margin
(floored at 0; DeblurConfig.map_margin) and compared with its registered f/8 shot (sharp/,
inside the valid box). The map is estimated once per photo and reused for every margin.
--ground-truth also deblurs with the labels (thin-lens sigma from depth) at the same margins.
Prints one row per photo and the mean / worst change per margin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.io.images import load_map, read_image  # noqa: E402
from defocus_cli.pipelines.deblur import DeblurConfig, deblur  # noqa: E402
from defocus_cli.pipelines.eval import EvalConfig, deblur_figures, list_samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "datasets" / "dfd-real"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--model", default=None, help="registry name (default: the shipped default)")
    ap.add_argument("--weights", default=None, help="a weights file instead of --model")
    ap.add_argument("--margins", default="0,0.25,0.5,0.75,1", help="comma-separated px")
    ap.add_argument("--ground-truth", action="store_true", help="also deblur with the label maps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from defocus_cli.estimator import load_estimator

    torch.set_num_threads(args.threads)
    margins = [float(m) for m in args.margins.split(",")]
    est = load_estimator(weights=Path(args.weights)) if args.weights else \
        load_estimator(**({"model": args.model} if args.model else {}))
    samples = [s for s in list_samples(args.data, args.split) if s.sharp is not None]
    if not samples:
        sys.exit(f"{args.data}: no deblurring pairs (sharp/) in split {args.split}")
    kinds = ["estimated"] + (["ground truth"] if args.ground_truth else [])
    gains = {(k, m): [] for k in kinds for m in margins}
    cfg, t0 = EvalConfig(), time.perf_counter()
    for s in samples:
        rgb, sharp = read_image(s.image).pixels, read_image(s.sharp).pixels
        maps = {"estimated": est.estimate(rgb).sigma}
        if args.ground_truth:
            maps["ground truth"] = np.nan_to_num(load_map(s.sigma), nan=0.0)
        cells = []
        for k in kinds:
            for m in margins:
                out = deblur(rgb, maps[k], DeblurConfig(map_margin=m)).image
                g = deblur_figures(rgb, out, sharp, s.sharp_valid, cfg)["psnr_gain"]
                gains[(k, m)].append(g)
                cells.append(f"{g:+.2f}")
        print(f"{s.name}: " + " ".join(cells), flush=True)
    print(f"\n{len(samples)} photos of {args.data} ({args.split}), {est.describe().get('name') or args.weights}, "
          f"{time.perf_counter() - t0:.0f} s; PSNR change, dB")
    for (k, m), g in gains.items():
        g = np.array(g)
        print(f"{k:>12} margin {m:4.2f}: mean {g.mean():+.3f}  worst {g.min():+.2f}  "
              f"improved {np.mean(g > 0) * 100:.0f}%")


if __name__ == "__main__":
    main()
