"""Choose the edge estimator's settings and the fusion by measurement on validation splits.

    python benchmarks/select_edge_fusion.py [--edge weights/edge.pt] [--split val]
        [--data datasets/dfd-real datasets/syndof] [--limit N] [--out benchmarks/results/edge_fusion.json]

For each image of each dataset's split: network B's map (the registry's base, dmenet-lite, at the
image's own size, as `defocus eval` runs it) and the edge points with E-NET's depth probability
and B-NET's sigma are computed once; then every variant of the dense step (fusion, depth
threshold, psi, fuse_k, spatial divisor, sigma_r, grid, blend weight) is evaluated from them:
per image MAE (px) and Spearman against the labels, mean over images, per dataset. Variants are
ranked by score = S - 0.5 x R, S the mean over the datasets of Spearman and R of MAE / mean
label sigma (so neither dataset's scale dominates). The test splits are never read here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from defocus_cli.estimator import load_estimator
from defocus_cli.io.images import load_map, read_image
from defocus_cli.pipelines.edge_estimate import EdgePoints, estimate_edges, measure_points
from defocus_cli.pipelines.estimate import working_image
from defocus_cli.pipelines.eval import EvalConfig, list_samples, sigma_figures


def load_split(root: Path, split: str, limit: int | None):
    samples = [s for s in list_samples(root, split) if s.sigma is not None]
    if limit:
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", default="edge", help="edge weights: registry name or .pt file")
    ap.add_argument("--data", nargs="+", default=["datasets/dfd-real", "datasets/syndof"])
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=None, help="at most N images per dataset (evenly spread)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", default=None, help="JSON {setting: [values]} replacing the default grid")
    ap.add_argument("--out", default="benchmarks/results/edge_fusion.json")
    args = ap.parse_args()
    if args.split == "test":
        raise SystemExit("settings are chosen on validation data; the test split is for the final report")
    torch.set_num_threads(args.threads)
    weights = args.edge if args.edge.endswith(".pt") else None
    est = load_estimator("fused" if weights is None else "dmenet-lite", weights, device="cpu", precision="fp32")
    base_config = est.config
    cfg_eval = EvalConfig(split=args.split)
    cache = {}
    t0 = time.perf_counter()
    for root in args.data:
        rows = []
        for s in load_split(Path(root), args.split, args.limit):
            rgb = read_image(s.image).pixels
            gt = load_map(s.sigma).astype(np.float32)
            base = est.base.estimate(rgb, 0)
            work, scale = working_image(rgb, 0)
            ys, xs, sig, p = measure_points(work, est.nets, replace(base_config, working_size=0, depth_threshold=1.0))
            rows.append((s.name, rgb, gt, base, EdgePoints(ys, xs, sig, p, work.shape[:2], scale)))
        cache[root] = rows
        print(f"{root}: {len(rows)} {args.split} images measured ({time.perf_counter() - t0:.0f} s)", flush=True)

    grid = {
        "fusion": ["edge", "residual"],
        "depth_threshold": [0.3, 0.5, 0.7],
        "psi": [0.0, 100.0, 1000.0],
        "fuse_k": [0.3, 1.0, 3.0],
        "spatial_divisor": [8.0, 32.0],
    }
    if args.grid:
        grid = json.loads(args.grid)
    results = []
    variants = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    # settings that do not act on a fusion are tried at one value only
    idle = {"edge": ("fuse_k", "blend"), "residual": ("blend",), "blend": ("fuse_k",)}
    variants = [v for v in variants
                if all(v.get(k, grid[k][0]) == grid[k][0] for k in idle[v.get("fusion", "edge")] if k in grid)]
    # network B alone, for reference
    ref = {}
    for root, rows in cache.items():
        figs = [sigma_figures(base.sigma, gt, cfg_eval) for _, _, gt, base, _ in rows]
        ref[root] = {k: float(np.nanmean([f[k] for f in figs])) for k in ("mae_px", "spearman")}
    print("network B alone:", json.dumps(ref))
    for v in variants:
        cfg = replace(base_config, working_size=0, **v)
        per = {}
        for root, rows in cache.items():
            figs = []
            for _, rgb, gt, base, pts in rows:
                r = estimate_edges(rgb, est.nets, cfg, base=base, points=pts)
                figs.append(sigma_figures(r.sigma, gt, cfg_eval))
            per[root] = {k: float(np.nanmean([f[k] for f in figs])) for k in ("mae_px", "spearman")}
            per[root]["label_mean"] = float(np.mean([np.nanmean(gt) for _, _, gt, _, _ in rows]))
        score_s = float(np.mean([d["spearman"] for d in per.values()]))
        score_m = float(np.mean([d["mae_px"] / d["label_mean"] for d in per.values()]))
        results.append({"variant": v, "per_dataset": per, "spearman": score_s, "relative_mae": score_m,
                        "score": score_s - 0.5 * score_m})
    results.sort(key=lambda r: -r["score"])
    for r in results[:15]:
        per = "  ".join(f"{Path(k).name}: MAE {d['mae_px']:.3f} S {d['spearman']:.3f}" for k, d in r["per_dataset"].items())
        print(f"score {r['score']:.4f} S {r['spearman']:.3f} relMAE {r['relative_mae']:.3f}  {r['variant']}  {per}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"split": args.split, "data": args.data, "network_b": ref,
                                          "results": results}, indent=1))
    print(f"written: {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
