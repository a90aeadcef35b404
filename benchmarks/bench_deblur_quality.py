"""Deblurring quality in one table: the solver's fixed lam 300 against the noise-adaptive lam,
and (``--network NAME|FILE.pt``) the map-conditioned deblurring network (`deblur --method network`).

Three parts (each optional, ``--parts kodak,synthetic,real``):

- kodak: Kodak24 (``../shared/data/sharp/Kodak24``) x Gaussian sigma {1, 2, 3} x white noise
  {0.005, 0.01, 0.02}, stored as 8 bits, deblurred with the true (constant) map; whole-image
  PSNR and SSIM (luminance) gain over the blurred input, mean over the 24 photos, and kodim05;
- synthetic: the test split of a `defocus synth` dataset with sharp/ (``datasets/syndof``),
  layered renders deblurred with their true maps and with the shipped network's maps;
- real: the dfd-indoor test pairs (``datasets/dfd-real``, f/2.8 against the registered f/8
  shot, inside the valid box) with the network's maps, as `defocus eval --deblur` measures.

Every deblur goes through ``photos.deblur_pixels`` or ``photos.deblur_network_pixels`` (the
paths `defocus deblur` runs): maps a network made get the estimated-map margin, true maps none
(``--network-margin PX`` overrides the network's); the network keeps the input up to the CLI's
sharp threshold (``--network-sharp PX`` overrides it) and returns a photo its map calls in focus
as it is (``--network-in-focus PX`` overrides the CLI's rule; 0 turns it off). Prints a markdown
table; ``--json`` keeps every per-image figure. ``--methods`` runs some columns only
(``--network`` adds its own); ``--kodak-images kodim05`` some Kodak photos only.

    python benchmarks/bench_deblur_quality.py [--parts ...] [--network sft-deblur] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from defocus_cli.estimator import load_estimator
from defocus_cli.io.images import load_map, read_image
from defocus_cli.pipelines.deblur import DeblurConfig
from defocus_cli.pipelines.eval import EvalConfig, deblur_figures, list_samples
from defocus_cli.photos import deblur_network_pixels, deblur_pixels

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: column -> the solver's lam (None: noise-adaptive), or a loaded DeblurNetwork (--network)
METHODS: dict = {"lam 300 (fixed)": 300.0, "noise-adaptive (default)": None}
EVAL = EvalConfig(split="test")
NETWORK_MARGIN: list = [None]  # --network-margin
NETWORK_SHARP: list = [None]  # --network-sharp
NETWORK_IN_FOCUS: list = [None]  # --network-in-focus
MAPS_CACHE: list = [None]  # --maps-cache: a folder for the estimated maps, reused by later runs


def _estimated(est, y, part: str, name: str) -> np.ndarray:
    cache = MAPS_CACHE[0]
    path = cache / part / f"{name}.npy" if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    sigma = est.estimate(y, 0).sigma
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, sigma)
    return sigma


def _deblur(y, sigma, origin, method):
    how = METHODS[method]
    if how is not None and not isinstance(how, float):
        return deblur_network_pixels(y, sigma, origin, how, DeblurConfig(), margin=NETWORK_MARGIN[0],
                                     device=torch.device("cpu"), sharp=NETWORK_SHARP[0],
                                     in_focus=NETWORK_IN_FOCUS[0])[0]
    return deblur_pixels(y, sigma, origin, DeblurConfig(), device=torch.device("cpu"), lam=how)[0].image


def kodak(rows: list[dict], seed: int = 0, only: set[str] | None = None) -> None:
    rng = np.random.default_rng(seed)
    for path in sorted((SHARED / "sharp" / "Kodak24").iterdir()):
        x = read_image(path).pixels
        for s in (1.0, 2.0, 3.0):
            b = cv2.GaussianBlur(x, (0, 0), s, borderType=cv2.BORDER_REFLECT)
            for n in (0.005, 0.01, 0.02):
                y = (np.round(np.clip(b + rng.normal(0, n, b.shape), 0, 1) * 255) / 255).astype(np.float32)
                sigma = np.full(y.shape[:2], s, np.float32)
                if only and path.stem not in only:
                    continue  # after the noise draw: the same photo gets the same noise either way
                for method in METHODS:
                    f = deblur_figures(y, _deblur(y, sigma, {"source": "true"}, method), x, None, EVAL)
                    rows.append({"part": "kodak", "image": path.stem, "sigma": s, "noise": n, "method": method,
                                 "psnr_gain": f["psnr_gain"], "ssim_gain": f["ssim_gain"],
                                 "psnr_input": f["psnr_input"], "psnr_deblurred": f["psnr_deblurred"]})


def dataset(rows: list[dict], part: str, root: Path, est, true_maps: bool, split: str = "test") -> None:
    for sample in list_samples(root, split):
        if sample.sharp is None:
            raise SystemExit(f"{root}: no sharp/ photos (rebuild it with `defocus synth`, which writes them)")
        y = read_image(sample.image).pixels
        sharp = read_image(sample.sharp).pixels
        # the estimator's own margin applies, as in `defocus deblur` (maps.deblur_margin)
        kinds = [("estimated", _estimated(est, y, part, sample.name),
                  {"source": "estimated", "model": {"name": est.describe()["name"]}})]
        if true_maps:
            kinds.insert(0, ("true", np.nan_to_num(load_map(sample.sigma)), {"source": "true"}))
        for kind, sigma, origin in kinds:
            for method in METHODS:
                f = deblur_figures(y, _deblur(y, sigma, origin, method), sharp, sample.sharp_valid, EVAL)
                rows.append({"part": part, "image": sample.name, "map": kind, "method": method,
                             "psnr_gain": f["psnr_gain"], "ssim_gain": f["ssim_gain"],
                             "psnr_input": f["psnr_input"], "psnr_deblurred": f["psnr_deblurred"]})


def _table(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))  # the columns, in the order run
    out = ["| part | case | " + " | ".join(f"{m}: dB / SSIM (worst dB)" for m in methods) + " |",
           "|---|---|" + "---|" * len(methods)]

    def line(part, case, sel):
        # an input identical to its sharp reference (an in-focus render) has no PSNR gain to
        # average (inf - inf, or -inf if touched at all): such images are counted, left out
        undefined = {x["image"] for x in sel if not np.isfinite(x["psnr_gain"])}
        cells = []
        for m in methods:
            r = [x for x in sel if x["method"] == m and x["image"] not in undefined]
            if not r:
                cells.append("-")
                continue
            g = np.array([x["psnr_gain"] for x in r])
            cells.append(f"{g.mean():+.2f} / {np.mean([x['ssim_gain'] for x in r]):+.3f} ({g.min():+.2f})")
        if undefined:
            case += f", {len(undefined)} in focus left out"
        out.append(f"| {part} | {case} | " + " | ".join(cells) + " |")

    kod = [r for r in rows if r["part"] == "kodak"]
    for s in (1.0, 2.0, 3.0):
        for n in (0.005, 0.01, 0.02):
            sel = [r for r in kod if r["sigma"] == s and r["noise"] == n]
            if sel:
                line(f"Kodak24 ({len({r['image'] for r in sel})})", f"sigma {s:g}, noise {n:g}", sel)
    k5 = [r for r in kod if r["image"] == "kodim05" and r["sigma"] == 2.0 and r["noise"] == 0.01]
    if k5:
        line("kodim05", "sigma 2, noise 0.01", k5)
    for part in ("synthetic", "real"):
        for kind in ("true", "estimated"):
            sel = [r for r in rows if r["part"] == part and r.get("map") == kind]
            if sel:
                line(part, f"{kind} maps ({len({r['image'] for r in sel})})", sel)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="kodak,synthetic,real")
    ap.add_argument("--synthetic", type=Path, default=REPO / "datasets" / "syndof")
    ap.add_argument("--real", type=Path, default=REPO / "datasets" / "dfd-real")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--network", help="add a column: this deblurring network (registry name or .pt)")
    ap.add_argument("--network-ensemble", type=int, default=1, help="self-ensemble size of the "
                    "network (deblur --ensemble: 1, 2, 4 or 8)")
    ap.add_argument("--network-margin", type=float, help="px taken off the map for the network "
                    "(default: the CLI's policy, the estimator's margin for estimated maps, 0 for true ones)")
    ap.add_argument("--network-sharp", type=float, help="px up to which the network keeps the input "
                    "(default: the CLI's policy, 0.5 for estimated maps, 0.25 for true ones)")
    ap.add_argument("--network-in-focus", type=float, help="px: the network leaves a photo whose map "
                    "is at most this at its 99th percentile as it is (default: the CLI's policy, 1.0 "
                    "for estimated maps, off for true ones; 0: off)")
    ap.add_argument("--methods", help="comma list of the solver columns to run: lam300, adaptive "
                    "(default: both)")
    ap.add_argument("--split", default="test", help="split of the synthetic and real sets (val: to "
                    "choose settings without looking at the test scenes)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="--json files of earlier runs whose rows join this table (e.g. the solver "
                         "columns, run once, beside a network column)")
    ap.add_argument("--maps-cache", type=Path, help="folder keeping the shipped estimator's maps "
                    "between runs (the estimator is the same for every column)")
    ap.add_argument("--kodak-images", help="comma list of Kodak photos (e.g. kodim05; default: all 24)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.methods is not None:  # "" runs no solver column
        keep = {"lam300": "lam 300 (fixed)", "adaptive": "noise-adaptive (default)"}
        chosen = [keep[m] for m in args.methods.split(",") if m]
        for name in list(METHODS):
            if name not in chosen:
                del METHODS[name]
    if args.network:
        from defocus_cli.pipelines.deblur_net import load_deblur_network

        net = load_deblur_network(args.network, device="cpu", precision="fp32",
                                  ensemble=args.network_ensemble)
        ens = f" x{net.ensemble}" if net.ensemble > 1 else ""
        METHODS[f"network {net.meta['name']}{ens}"] = net
        NETWORK_MARGIN[0] = args.network_margin
        NETWORK_SHARP[0] = args.network_sharp
        NETWORK_IN_FOCUS[0] = args.network_in_focus
    MAPS_CACHE[0] = args.maps_cache
    parts = [p for p in args.parts.split(",") if p]
    rows: list[dict] = [r for path in args.merge for r in json.loads(path.read_text())]
    t0 = time.perf_counter()
    if "kodak" in parts:
        kodak(rows, only=set(args.kodak_images.split(",")) if args.kodak_images else None)
    est = load_estimator(device="cpu", precision="fp32") if {"synthetic", "real"} & set(parts) else None
    if "synthetic" in parts:
        dataset(rows, "synthetic", args.synthetic, est, true_maps=True, split=args.split)
    if "real" in parts:
        dataset(rows, "real", args.real, est, true_maps=False, split=args.split)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {torch.get_num_threads()} torch threads, {time.perf_counter() - t0:.0f} s")
    print(_table(rows))
    if args.json:
        ran = set(METHODS)  # the rows this run made, not the merged ones
        args.json.write_text(json.dumps([r for r in rows if r["method"] in ran], indent=1))


if __name__ == "__main__":
    sys.exit(main())
