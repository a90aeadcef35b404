"""The deblurring network's sharp threshold (`deblur --sharp`): mean PSNR gain on a synth
dataset's renders for several thresholds, with the true maps and with the estimated ones.

The network runs once per render and map, through ``photos.deblur_network_pixels`` (the map
less its margin, as `deblur --method network` runs it) with nothing kept; ``photos.keep_sharp``
then keeps the input up to each threshold. Renders whose input equals the sharp image are left
out, as in ``bench_deblur_quality.py``; choose on ``--split val``. ``--maps estimated`` (or
``true``) runs one kind of map only; ``--in-focus 0,1`` measures each threshold without and with
the rule that leaves a photo whose map is at most 1 px at its 99th percentile as it is (`deblur
--in-focus`; default: the CLI's rule for each kind of map); ``--synthetic datasets/syndof-large
--split val`` measures on the 754 val renders of the large set (its val scenes are the small
set's val scenes and more, none of the test ones).

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
from defocus_cli.photos import deblur_network_pixels, in_focus_check, keep_sharp, network_in_focus_sigma  # noqa: E402
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
    ap.add_argument("--in-focus", default=None, help="comma list of `deblur --in-focus` values (px; 0: "
                    "off) to measure with each threshold (default: the CLI's, per kind of map)")
    ap.add_argument("--maps", default="true,estimated", help="which maps: true, estimated or both")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.MAPS_CACHE[0] = args.maps_cache
    thresholds = [float(t) for t in args.thresholds.split(",")]
    kinds = [k for k in ("true", "estimated") if k in args.maps.split(",")]
    if not kinds:
        raise SystemExit(f"--maps {args.maps!r}: give true, estimated or true,estimated")
    net = load_deblur_network(args.network, device="cpu", precision="fp32")
    est = load_estimator(device="cpu", precision="fp32")
    in_focus = {k: ([float(v) for v in args.in_focus.split(",")] if args.in_focus is not None else
                    [network_in_focus_sigma({"source": k})])
                for k in kinds}
    gains: dict[tuple[str, float, float], list[float]] = {(k, t, T): [] for k in kinds for t in thresholds
                                                          for T in in_focus[k]}
    estimated_origin = {"source": "estimated", "model": {"name": est.describe()["name"]}}
    figures = EvalConfig(split=args.split)
    t0 = time.perf_counter()
    for sample in list_samples(args.synthetic, args.split):
        y, sharp = read_image(sample.image).pixels, read_image(sample.sharp).pixels
        for kind in kinds:
            if kind == "true":
                sigma, origin = np.nan_to_num(load_map(sample.sigma)), {"source": "true"}
            else:
                sigma, origin = bench._estimated(est, y, "synthetic", sample.name), estimated_origin
            # nothing kept, no photo called in focus: each rule is applied below
            out, used = deblur_network_pixels(y, sigma, origin, net, DeblurConfig(), sharp=0.0, in_focus=0.0)
            s = np.maximum(sigma - used["margin_px"], 0.0).astype(np.float32)
            kept_whole = {T: in_focus_check(s, T)[1] for T in in_focus[kind]}  # per render, not per threshold
            for t in thresholds:
                kept = keep_sharp(y, out, s, t)
                for T in in_focus[kind]:
                    f = deblur_figures(y, y if kept_whole[T] else kept, sharp, sample.sharp_valid, figures)
                    if math.isfinite(f["psnr_input"]):
                        gains[(kind, t, T)].append(f["psnr_gain"])
    print(f"{args.network} on {args.synthetic.name} {args.split}, {time.perf_counter() - t0:.0f} s")
    columns = [(k, T) for k in kinds for T in in_focus[k]]
    print("| threshold px | " + " | ".join(f"{k} maps, in focus <= {T:g} px: dB (worst)" for k, T in columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for t in thresholds:
        cells = [f"{np.mean(gains[(k, t, T)]):+.2f} ({min(gains[(k, t, T)]):+.2f})" for k, T in columns]
        print(f"| {t:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
