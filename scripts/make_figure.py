"""The README figure: an example photo, its true and estimated defocus maps, and what the map
is good for (magnified blur, all-in-focus, pseudo-depth), from the shipped weights.

    python scripts/make_figure.py [--photo examples/scene.jpg] [--model dmenet-lite]

Runs the real commands (`defocus estimate`, `magnify`, `deblur`, `depth`) into examples/out/
and writes examples/figure.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.io.images import colorize, load_map, read_image, write_image  # noqa: E402


def defocus(*args: str) -> None:
    cmd = [sys.executable, "-m", "defocus_cli", *args]
    print("$ defocus " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def tile(rgb: np.ndarray, title: str, width: int) -> np.ndarray:
    h = round(rgb.shape[0] * width / rgb.shape[1])
    img = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)
    bar = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar.astype(np.float32) / 255, img], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=Path("examples/scene.jpg"))
    ap.add_argument("--model", default="dmenet-lite")
    ap.add_argument("--out", type=Path, default=Path("examples/out"))
    args = ap.parse_args()
    name = args.photo.stem
    out = args.out
    sigma_file = out / f"{name}.defocus.npy"
    defocus("estimate", str(args.photo), "-o", str(out), "--model", args.model, "--overwrite")
    defocus("magnify", str(args.photo), "--map", str(sigma_file), "--scale", "3", "-o", str(out), "--overwrite")
    defocus("deblur", str(args.photo), "--map", str(sigma_file), "-o", str(out), "--overwrite")
    defocus("depth", str(args.photo), "--map", str(sigma_file), "--focus", "near", "-o", str(out), "--overwrite")

    photo = read_image(args.photo).pixels
    est = load_map(sigma_file)
    truth_file = args.photo.with_suffix("").with_name(f"{name}.truth.png")
    vmax = float(np.percentile(est, 99.5))
    panels = [tile(photo, "photo", 400)]
    if truth_file.exists():
        truth = load_map(truth_file)
        vmax = max(vmax, float(truth.max()))
        panels.append(tile(colorize(truth, 0, vmax), f"true sigma (0-{vmax:.1f} px)", 400))
    panels.append(tile(colorize(est, 0, vmax), f"estimated sigma (0-{vmax:.1f} px)", 400))
    panels.append(tile(read_image(out / f"{name}.magnified{args.photo.suffix}").pixels, "magnified x3", 400))
    panels.append(tile(read_image(out / f"{name}.deblurred{args.photo.suffix}").pixels, "deblurred", 400))
    depth = np.load(out / f"{name}.depth.npy")
    panels.append(tile(colorize(depth, float(depth.min()), float(depth.max())), "pseudo-depth (near dark)", 400))
    while len(panels) % 3:
        panels.append(np.ones_like(panels[0]))
    rows = [np.concatenate(panels[i:i + 3], axis=1) for i in range(0, len(panels), 3)]
    write_image(REPO / "examples" / "figure.png", np.concatenate(rows, axis=0))
    print("wrote examples/figure.png")


if __name__ == "__main__":
    main()
