"""Benchmark `defocus estimate`: end-to-end wall time and peak RSS on 1, 12 and 24 MP photos, where
the time goes, and network B's achieved FLOP/s against this machine's own GEMM peak.

    python benchmarks/bench_estimate.py [--weights FILE | --model NAME[,NAME...]] [--sizes 1,12,24]
                                        [--widths 1.0,0.25] [--repeats 3] [--json FILE]

End to end, each photo size runs ``--repeats`` times per model, the models interleaved (a,b,a,b,
...), so that the machine's drift (absolute times on a shared machine move by tens of percent
within minutes) reaches every model alike; best and median are reported, and with two models
their ratio per round.

The test photos are generated here (a layered scene with a sharp subject and a blurred
background, JPEG), so the benchmark needs nothing but the project. Figures go to stdout and to
a JSON file; benchmarks/README.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {1: (1152, 864), 12: (4000, 3000), 24: (6000, 4000)}


def make_photo(path: Path, w: int, h: int, seed: int = 0) -> None:
    """A photo-like test image: textured background blurred with sigma ~ 0.4% of the width,
    a sharp textured disc in front. Written as JPEG quality 92."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    base = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.random((h, w), dtype=np.float32)[..., None] * 0.3
    tex = np.clip(base * 0.7 + noise, 0, 1)
    bg = cv2.GaussianBlur(tex, (0, 0), 0.004 * w)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - w * 0.4) ** 2 + (yy - h * 0.5) ** 2) < (0.25 * h) ** 2
    img = np.where(disc[..., None], tex, bg)
    cv2.imwrite(str(path), (img[..., ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])


def gemm_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps square matmul FLOP/s: the machine's practical peak for this dtype."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if dtype_name == "bf16":
        n = 512  # without AMX bf16 GEMM is very slow on a CPU; keep the probe short
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def network_flops(model, h: int, w: int) -> float:
    """Multiply-adds x 2 of every convolution for one (1, 3, h, w) eval-mode forward."""
    import torch

    total = 0

    def hook(m, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += 2 * out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, h, w))
    for hd in handles:
        hd.remove()
    return float(total)


def network_rate(width: float, h: int, w: int, dtype_name: str, reps: int = 2) -> dict:
    import torch

    from defocus_cli.device import autocast
    from defocus_cli.models.b import BlurNet, BlurNetConfig

    model = BlurNet(BlurNetConfig(width=width)).eval()
    flops = network_flops(model, h, w)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
    dev = torch.device("cpu")
    with torch.inference_mode(), autocast(dev, dtype):
        model(x)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return {"width": width, "size": f"{w}x{h}", "precision": dtype_name, "gflop": flops / 1e9,
            "seconds": best, "gflops_per_s": flops / best / 1e9}


def run_cli(photo: Path, out: Path, weight_args: list[str], extra: list[str]) -> dict:
    """`defocus estimate` in a fresh process: wall time (process start included) and peak RSS."""
    cmd = [sys.executable, "-m", "defocus_cli", "estimate", str(photo), "-o", str(out),
           "--overwrite", *weight_args, *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.read().decode())
    peak_kb = usage.ru_maxrss
    meta = json.loads((out / f"{photo.stem}.defocus.json").read_text())
    return {"wall_s": wall, "peak_rss_gb": peak_kb / 1e6, "timings": meta["timings_s"],
            "working_size": meta["working_size"], "model": meta["model"]["name"]}


def stage_times(photo: Path, weight_args: list[str]) -> dict:
    """Where the time goes, in-process: import, read, network, up-sampling, writes."""
    code = f"""
import time, json, sys
t0 = time.perf_counter()
import torch, numpy as np
from defocus_cli.estimator import load_estimator
from defocus_cli.io.images import read_image, save_npy, save_png16, save_preview
t1 = time.perf_counter()
args = {weight_args!r}
est = load_estimator(weights=args[1]) if args and args[0] == '--weights' else (load_estimator(model=args[1]) if args else load_estimator())
t2 = time.perf_counter()
im = read_image({str(photo)!r})
t3 = time.perf_counter()
r = est.estimate(im.pixels)
t4 = time.perf_counter()
import tempfile, pathlib
d = pathlib.Path(tempfile.mkdtemp())
save_npy(d / 'a.npy', r.sigma); t5 = time.perf_counter()
save_png16(d / 'a.png', r.sigma); t6 = time.perf_counter()
save_preview(d / 'p.png', r.sigma); t7 = time.perf_counter()
print(json.dumps(dict(imports=t1-t0, load_weights=t2-t1, read=t3-t2, **r.timings,
                      write_npy=t5-t4, write_png16=t6-t5, write_preview=t7-t6)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--model", default=None, help="registry model, or several separated by commas")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="1,12,24")
    ap.add_argument("--widths", default="1.0,0.25", help="widths for the FLOP/s measurement")
    ap.add_argument("--work", type=Path, default=Path("/tmp/defocus-bench"))
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "estimate.json")
    args = ap.parse_args()
    import torch

    from defocus_cli.device import cpu_has_fast_bf16

    args.work.mkdir(parents=True, exist_ok=True)
    if args.weights:
        variants = {args.weights.stem: ["--weights", str(args.weights)]}
    elif args.model:
        variants = {m: ["--model", m] for m in args.model.split(",")}
    else:
        variants = {"default": []}
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "amx_bf16": cpu_has_fast_bf16(), "load_avg_at_start": os.getloadavg()}}
    peaks = {p: gemm_peak(p) for p in ("fp32", "bf16")}
    report["gemm_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}
    print(f"GEMM peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.2f} GFLOP/s")

    rates = []
    for width in [float(w) for w in args.widths.split(",")]:
        for prec in ("fp32", "bf16"):
            h, w = (576, 768) if prec == "fp32" else (64, 64)
            r = network_rate(width, h, w, prec)
            # without bf16 matrix units there is no bf16 GEMM peak worth the name (the emulated
            # matmul and the emulated convolutions take different slow paths): compare with fp32
            if prec == "fp32" or cpu_has_fast_bf16():
                r["fraction_of_gemm_peak"] = r["gflops_per_s"] * 1e9 / peaks[prec]
                versus = f"{100 * r['fraction_of_gemm_peak']:.0f}% of the {prec} GEMM peak"
            else:
                fp32 = next(x for x in rates if x["width"] == width and x["precision"] == "fp32")
                r["slowdown_vs_fp32"] = fp32["gflops_per_s"] / r["gflops_per_s"]
                versus = f"{r['slowdown_vs_fp32']:.0f}x slower than fp32 (no bf16 matrix units)"
            rates.append(r)
            print(f"network B width {width} {prec} {r['size']}: {r['gflop']:.1f} GFLOP in "
                  f"{r['seconds']:.2f} s = {r['gflops_per_s']:.1f} GFLOP/s = {versus}")
    report["network"] = rates

    report["end_to_end"] = []
    for mp in [int(s) for s in args.sizes.split(",")]:
        w, h = SIZES[mp]
        photo = args.work / f"photo_{mp}mp.jpg"
        if not photo.exists():
            make_photo(photo, w, h)
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, weight_args in variants.items():
                runs[name].append(run_cli(photo, args.work / "out", weight_args, []))
        for name, weight_args in variants.items():
            walls = [r["wall_s"] for r in runs[name]]
            res = {**runs[name][0], "megapixels": mp, "size": f"{w}x{h}", "variant": name,
                   "wall_s": min(walls), "wall_median_s": float(np.median(walls)), "walls_s": walls,
                   "peak_rss_gb": max(r["peak_rss_gb"] for r in runs[name])}
            res["stages"] = stage_times(photo, weight_args)
            report["end_to_end"].append(res)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in res["stages"].items())
            print(f"{mp:>2} MP {w}x{h} {name}: {min(walls):.2f} s end to end (best of {len(walls)}; median "
                  f"{np.median(walls):.2f}; runs " + " ".join(f"{x:.2f}" for x in walls) + "), peak RSS "
                  f"{res['peak_rss_gb']:.2f} GB; stages {stages}")
        if len(variants) == 2:
            a, b = list(variants)
            ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(runs[b], runs[a])]
            report.setdefault("ratios", []).append({"megapixels": mp, "of": f"{b} / {a}",
                                                    "per_round": ratios})
            print(f"{mp:>2} MP: {b} / {a} per round: " + " ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {np.median(ratios):.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
