"""Fit the noise-adaptive lam rule of `defocus deblur` (pipelines.deblur.noise_adaptive_lam).

Sharp photos that are not in the deblurring benchmark (BSDS500 val, the first ``--photos``),
Gaussian blur sigma {1, 2, 3} x white noise {0, 0.005, 0.01, 0.02}, stored as 8 bits; each is
deblurred (the layered deblur with its true, constant map) over a grid of lam, and the mean
PSNR gain per (sigma, noise) is recorded. The best lam of each case (a parabola through the
grid's best three points in log lam; cases whose best is at the grid's end are left out) is
regressed on the *estimated* noise (ops.noise.estimate_noise, what the tool sees at run time):
log lam = log K + a log sigma - b log noise. Prints the grid and the fit.

    python benchmarks/fit_deblur_lam.py [--photos 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from defocus_cli.io.images import read_image
from defocus_cli.ops.deconv import DeconvConfig
from defocus_cli.ops.metrics import psnr
from defocus_cli.ops.noise import estimate_noise
from defocus_cli.pipelines.deblur import DeblurConfig, deblur

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LAMS = (300, 1000, 2000, 3000, 5000, 8000, 12000, 20000, 40000)


def grid(photos: list[Path], seed: int = 0) -> dict[tuple[float, float], dict]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in (1.0, 2.0, 3.0):
        for n in (0.0, 0.005, 0.01, 0.02):
            gains, noise = np.zeros((len(photos), len(LAMS))), []
            for i, path in enumerate(photos):
                x = read_image(path).pixels
                b = cv2.GaussianBlur(x, (0, 0), s, borderType=cv2.BORDER_REFLECT)
                y = (np.round(np.clip(b + rng.normal(0, n, b.shape), 0, 1) * 255) / 255).astype(np.float32)
                noise.append(estimate_noise(y))
                sigma = np.full(y.shape[:2], s, np.float32)
                for j, lam in enumerate(LAMS):
                    out_img = deblur(y, sigma, DeblurConfig(deconv=DeconvConfig(lam=lam)),
                                     device=torch.device("cpu"), workers=1).image
                    gains[i, j] = psnr(out_img, x) - psnr(y, x)
            out[s, n] = {"noise_estimate": float(np.median(noise)), "gains": gains.mean(0).tolist()}
            g = out[s, n]["gains"]
            print(f"sigma {s:g} noise {n:g} (estimated {out[s, n]['noise_estimate']:.4f}): best lam "
                  f"{LAMS[int(np.argmax(g))]}; gains " + " ".join(f"{v:+.2f}" for v in g), flush=True)
    return out


def fit(results: dict[tuple[float, float], dict]) -> tuple[float, float, float]:
    logs = np.log(LAMS)
    rows = []
    for (s, n), r in results.items():
        g = np.array(r["gains"])
        j = int(g.argmax())
        if n == 0 or j in (0, len(g) - 1):
            continue
        a, b, _ = np.polyfit(logs[j - 1:j + 2], g[j - 1:j + 2], 2)
        rows.append((np.log(s), np.log(r["noise_estimate"]), -b / (2 * a)))
    A = np.array([[1.0, ls, ln] for ls, ln, _ in rows])
    coef, *_ = np.linalg.lstsq(A, np.array([r[2] for r in rows]), rcond=None)
    return float(np.exp(coef[0])), float(coef[1]), float(-coef[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    photos = sorted((SHARED / "sharp" / "BSDS500" / "val").iterdir())[:args.photos]
    t0 = time.perf_counter()
    results = grid(photos)
    k, a, b = fit(results)
    print(f"lam = {k:.3g} * sigma^{a:.2f} / noise^{b:.2f}  ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({f"{s},{n}": r for (s, n), r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
