"""Figures of real defocused photos and the map of each estimator, side by side.

    python scripts/make_estimators_figure.py [--photos DSC_0004.jpg DSC_0045.jpg ...]
        [--models dmenet-lite edge fused runs/X/weights.pt ...] [--folder f2.8-half] [--mark-below PX] [--width 320]
        [-o examples/estimators-outdoor.jpg]

The README's two figures:
    python scripts/make_estimators_figure.py
    python scripts/make_estimators_figure.py --folder f2.8-full --photos DSC_0001.jpg DSC_0004.jpg \
        --models dmenet-lite fused:fine_points=0 fused --mark-below 1 -o examples/full-res-outdoor.jpg

A model is a registry name, a variant (``estimator.load_variant``) or a weights file (.pt).

Photos: ../shared/data/real/dfd-outdoor/FOLDER/ (or $DEFOCUS_SHARED_DATA), real f/2.8 shots of
Carvalho et al. (3DRW ECCV Workshop 2018), shown downscaled. Every map is made by the library's
estimator (``estimator.load_variant``: a registry model, optionally with edge-map settings
changed) on the photo as stored, and all maps of one photo share one colour scale (0 to the 99th
percentile of the last model's map, px of that photo): dark = sharp, bright = blurred. The scale
is written into each row; ``--mark-below`` paints the pixels that read below that sigma cyan.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.estimator import load_variant  # noqa: E402
from defocus_cli.io.images import colorize, read_image, write_image  # noqa: E402

SHARED = Path(os.environ.get("DEFOCUS_SHARED_DATA", REPO.parent / "shared" / "data"))
PHOTOS = ("DSC_0004.jpg", "DSC_0045.jpg", "DSC_0064.jpg")
TITLES = {"dmenet-lite": "network B (dmenet-lite)", "edge": "edge-based (paper 002)", "fused": "fused",
          "fused:fine_points=0": "fused, no full-res pass"}


def label(img: np.ndarray, text: str) -> np.ndarray:
    """float RGB [0, 1] -> uint8 RGB with a caption bar."""
    out = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.48, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS))
    ap.add_argument("--models", nargs="+", default=["dmenet-lite", "edge", "fused"])
    ap.add_argument("--folder", default="f2.8-half", help="folder of dfd-outdoor")
    ap.add_argument("--mark-below", type=float, default=None, help="px: paint pixels below this cyan")
    ap.add_argument("--width", type=int, default=320, help="px per panel")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "examples" / "estimators-outdoor.jpg")
    args = ap.parse_args()
    estimators = {m: load_variant(m, device="cpu") for m in args.models}
    rows = []
    for name in args.photos:
        rgb = read_image(SHARED / "real" / "dfd-outdoor" / args.folder / name).pixels
        maps = {m: est.estimate(rgb).sigma for m, est in estimators.items()}
        vmax = float(np.percentile(maps[args.models[-1]], 99))
        size = (args.width, round(rgb.shape[0] * args.width / rgb.shape[1]))

        def small(a: np.ndarray, size: tuple[int, int] = size) -> np.ndarray:
            return cv2.resize(a, size, interpolation=cv2.INTER_AREA)

        panels = [label(small(rgb), f"{name} (f/2.8)")]
        for m, sigma in maps.items():
            shown = small(colorize(sigma, 0.0, vmax))
            if args.mark_below is not None:
                shown[small(sigma) < args.mark_below] = (0.0, 1.0, 1.0)
            caption = f"{TITLES.get(m, m)}  0-{vmax:.1f} px"
            if args.mark_below is not None:
                caption += f", cyan < {args.mark_below:g}"
            panels.append(label(shown, caption))
            print(f"{name} {m}: sigma p5 {np.percentile(sigma, 5):.2f} median {np.median(sigma):.2f} "
                  f"p95 {np.percentile(sigma, 95):.2f} px", flush=True)
        rows.append(np.concatenate(panels, axis=1))
    write_image(args.output, np.concatenate(rows, axis=0).astype(np.float32) / 255.0)
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
