"""The deblurring network's sharp threshold (`deblur --sharp`): mean PSNR gain on a synth
dataset's renders for several thresholds, with the true maps and with the estimated ones.

The network runs once per render and map, through ``photos.deblur_network_pixels`` (the map
less its margin, as `deblur --method network` runs it) with nothing kept; ``photos.keep_sharp``
then keeps the input up to each threshold. Renders whose input equals the sharp image are left out, as in
``bench_deblur_quality.py``; choose on ``--split val``.

    python benchmarks/bench_network_sharp.py --split val --network sft-deblur --maps-cache DIR \\
        --thresholds 0.2,0.25,0.3,0.4,0.5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_deblur_quality as bench  # noqa: E402

from defocus_cli.estimator import load_estimator  # noqa: E402
from defocus_cli.io.images import load_map, read_image  # noqa: E402
from defocus_cli.photos import deblur_network_pixels, keep_sharp  # noqa: E402
from defocus_cli.pipelines.deblur import DeblurConfig  # noqa: E402
from defocus_cli.pipelines.deblur_net import load_deblur_network  # noqa: E402
from defocus_cli.pipelines.eval import EvalConfig, deblur_figures, list_samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", type=Path, default=bench.REPO / "datasets" / "syndof")
    ap.add_argument("--split", default="val")
    ap.add_argument("--network", default="sft-deblur")
    ap.add_argument("--maps-cache", type=Path, help="as in bench_deblur_quality.py")
    ap.add_argument("--thresholds", default="0.2,0.25,0.3,0.4,0.5")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.MAPS_CACHE[0] = args.maps_cache
    thresholds = [float(t) for t in args.thresholds.split(",")]
    net = load_deblur_network(args.network, device="cpu", precision="fp32")
    est = load_estimator(device="cpu", precision="fp32")
    gains: dict[tuple[str, float], list[float]] = {(k, t): [] for k in ("true", "estimated") for t in thresholds}
    estimated_origin = {"source": "estimated", "model": {"name": est.describe()["name"]}}
    figures = EvalConfig(split=args.split)
    t0 = time.perf_counter()
    for sample in list_samples(args.synthetic, args.split):
        y, sharp = read_image(sample.image).pixels, read_image(sample.sharp).pixels
        maps = {"true": (np.nan_to_num(load_map(sample.sigma)), {"source": "true"}),
                "estimated": (bench._estimated(est, y, "synthetic", sample.name), estimated_origin)}
        for kind, (sigma, origin) in maps.items():
            out, used = deblur_network_pixels(y, sigma, origin, net, DeblurConfig(), sharp=0.0)  # nothing kept
            s = np.maximum(sigma - used["margin_px"], 0.0).astype(np.float32)
            for t in thresholds:
                f = deblur_figures(y, keep_sharp(y, out, s, t), sharp, sample.sharp_valid, figures)
                if math.isfinite(f["psnr_input"]):
                    gains[(kind, t)].append(f["psnr_gain"])
    print(f"{args.network} on {args.synthetic.name} {args.split}, {time.perf_counter() - t0:.0f} s")
    print("| threshold px | true maps: dB (worst) | estimated maps: dB (worst) |\n|---|---|---|")
    for t in thresholds:
        cells = [f"{np.mean(gains[(k, t)]):+.2f} ({min(gains[(k, t)]):+.2f})" for k in ("true", "estimated")]
        print(f"| {t:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
