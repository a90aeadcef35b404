"""How closely estimators follow a reference estimator on photos without labels: per photo, the
Spearman rank correlation between each estimator's map and the reference's (every ``--stride``-th
pixel), then the mean over photos.

Used to ask whether a network trained on another estimator's maps (``defocus train --real-maps``)
learnt to reproduce them on photos it did not train on.

    python benchmarks/map_agreement.py --reference fused --estimator dmenet-lite \\
        --estimator runs/teacher/BD/weights.pt [--dataset datasets/dfd-real --split val]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from defocus_cli.estimator import load_estimator
from defocus_cli.io.datasets import read_manifest
from defocus_cli.io.images import read_image
from defocus_cli.ops.metrics import spearman


def _load(spec: str):
    """A registry name, or a weights file (.pt)."""
    if spec.endswith(".pt"):
        return load_estimator(weights=spec, device="cpu", precision="fp32")
    return load_estimator(spec, device="cpu", precision="fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("datasets/dfd-real"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--reference", default="fused")
    ap.add_argument("--estimator", action="append", required=True, help="registry name or .pt (repeat)")
    ap.add_argument("--stride", type=int, default=7, help="every N-th pixel enters the correlation")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [e["name"] for e in read_manifest(args.dataset) if e["split"] == args.split]
    if not names:
        raise SystemExit(f"{args.dataset}: no photos in split {args.split!r}")
    reference = _load(args.reference)
    estimators = {spec: _load(spec) for spec in args.estimator}
    scores: dict[str, list[float]] = {spec: [] for spec in estimators}
    for name in names:
        rgb = read_image(args.dataset / "image" / f"{name}.png").pixels
        ref = reference.estimate(rgb, 0).sigma.ravel()[::args.stride]
        for spec, est in estimators.items():
            scores[spec].append(spearman(est.estimate(rgb, 0).sigma.ravel()[::args.stride], ref))
    print(f"Spearman with {args.reference} on {args.dataset} {args.split} ({len(names)} photos), "
          "mean (per photo):")
    for spec, values in scores.items():
        print(f"  {spec}: {np.mean(values):.3f} ({' '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
