"""Edge-aware up-sampling of the working-resolution defocus map: the project's hand-written fast
colour guided up-sampling (`refine_upsample`) against OpenCV's ximgproc filters doing the same job.

    python benchmarks/bench_upsample.py [--repeats 5] [--sizes 2,12] [--no-memory]

Every variant maps (sigma_work, work_rgb, full_rgb, scale) to a full-resolution map in the photo's
px, post-processed like `refine_upsample` (clipped to the working map's range, divided by the scale).
Measured per variant:
  * wall time, median of --repeats, with cv2.setNumThreads(1) and OpenCV's default thread count;
  * peak extra RSS of one call on the 12 MP input, in a fresh process (VmHWM reset via clear_refs);
  * accuracy on synthetic 2 MP and 12 MP photos (left: fine texture blurred with sigma 0.5 px,
    right: another texture blurred with 4 px, wavy boundary; working map = the true map area-
    downsampled to the working size, in working px, plus noise): MAE against the true map, overall
    and within 8 px of the boundary;
  * accuracy on examples/scene.jpg and scene-wide.jpg against their *.truth.png (MAE overall and
    within 8 px of a truth discontinuity), with the shipped network's working map ("net") and with
    the true map area-downsampled to the working size ("true-in": the up-sampler's own error);
  * wall time on a real 10 MP photo from ../shared/data/real/dfd-outdoor/f2.8-full when present.

OpenCV's guidedFilter needs a 0-255 guide: with a [0, 1] float guide and 3 channels its
3x3 covariance determinant falls under the 1e-6 it treats as singular (eps < 1e-2 branch), and the
result no longer depends on eps. The guide is therefore passed as float32 x 255 with eps x 255^2,
which reproduces the project's filter to ~1e-7 at equal resolution. dtFilter (sigma_color 0.1)
and fastGlobalSmootherFilter (lambda (8 r / s)^2, sigma_color 4) use settings picked from a small
sweep on these same inputs, i.e. tuned in their favour. jointBilateralFilter is left out: its
cost grows with d^2 (d = 2 r / s + 1); at 2 MP it took 1.4-2.6 s, over 10x refine_upsample.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from defocus_cli.pipelines.estimate import DEFAULT_WORKING_SIZE, refine_upsample

SIZES = {2: (1632, 1224), 12: (4000, 3000)}
RADIUS, EPS = 4, 1e-3  # the project's guided up-sampling, at working resolution, [0, 1] guide
EPS255 = EPS * 255.0**2
BAND = 8  # px either side of a discontinuity for the edge-band MAE
REAL = REPO.parent / "shared/data/real/dfd-outdoor/f2.8-full"


def _post(up: np.ndarray, sigma_work: np.ndarray, scale: float) -> np.ndarray:
    up = np.clip(up, float(sigma_work.min()), float(sigma_work.max())) * np.float32(1 / scale)
    return np.maximum(up, 0).astype(np.float32)


def _bilinear(m: np.ndarray, full: np.ndarray) -> np.ndarray:
    return cv2.resize(m, (full.shape[1], full.shape[0]), interpolation=cv2.INTER_LINEAR)


def gf_full(sw, work, full, scale, fast=False):
    """Bilinear up, then the colour guided filter at full resolution (radius / scale)."""
    r = max(1, round(RADIUS / scale))
    extra = {"scale": scale} if fast else {}
    q = cv2.ximgproc.guidedFilter(full * np.float32(255), _bilinear(sw, full), r, EPS255, **extra)
    return _post(q, sw, scale)


def gf_work(sw, work, full, scale):
    """Colour guided filter at working resolution, then bilinear up (not edge-aware at full res)."""
    q = cv2.ximgproc.guidedFilter(work * np.float32(255), sw, RADIUS, EPS255)
    return _post(_bilinear(q, full), sw, scale)


def dt_full(sw, work, full, scale):
    """Bilinear up, then the domain-transform filter (recursive) guided by the full photo."""
    q = cv2.ximgproc.dtFilter(full, _bilinear(sw, full), RADIUS / scale, 0.1, mode=cv2.ximgproc.DTF_RF)
    return _post(q, sw, scale)


def fgs_full(sw, work, full, scale):
    """Bilinear up, then the fast global smoother (8-bit guide) on the full photo."""
    g = (full * 255 + 0.5).astype(np.uint8)
    q = cv2.ximgproc.fastGlobalSmootherFilter(g, _bilinear(sw, full), (8 * RADIUS / scale) ** 2, 4.0)
    return _post(q, sw, scale)


VARIANTS = {
    "project refine_upsample (fast colour GF)": lambda sw, w, f, s: refine_upsample(sw, w, f, s, True),
    "ximgproc.guidedFilter full res, r/s (b1)": gf_full,
    "ximgproc.guidedFilter full res, r/s, scale=s": lambda sw, w, f, s: gf_full(sw, w, f, s, fast=True),
    "ximgproc.guidedFilter working res + bilinear (b2)": gf_work,
    "ximgproc.dtFilter RF full res": dt_full,
    "ximgproc.fastGlobalSmootherFilter full res": fgs_full,
    "bilinear (refine=False)": lambda sw, w, f, s: refine_upsample(sw, w, f, s, False),
}


def working(full: np.ndarray, size: int = DEFAULT_WORKING_SIZE) -> tuple[np.ndarray, float]:
    """The photo at the working resolution and the scale, as estimate_defocus computes them."""
    H, W = full.shape[:2]
    s = size / max(H, W)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    return cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA), max(w, h) / max(H, W)


def synthetic(W: int, H: int, seed: int = 0):
    """(full_rgb, true sigma map, edge-band mask, working rgb, working map, scale)."""
    rng = np.random.default_rng(seed)

    def texture(cell: int, tint) -> np.ndarray:
        small = rng.random((H // cell + 2, W // cell + 2, 3), dtype=np.float32)
        t = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)[:H, :W]
        t = 0.6 * t + 0.4 * rng.random((H, W, 1), dtype=np.float32)
        return np.clip(t * np.float32(tint), 0, 1)

    yy = np.arange(H, dtype=np.float32)[:, None]
    xb = W * (0.5 + 0.04 * np.sin(2 * np.pi * yy / (H / 3)))
    left = np.arange(W, dtype=np.float32)[None, :] < xb
    sharp = cv2.GaussianBlur(texture(4, (1.0, 0.8, 0.5)), (0, 0), 0.5)
    blurred = cv2.GaussianBlur(texture(12, (0.4, 0.7, 1.0)), (0, 0), 4.0)
    full = np.where(left[..., None], sharp, blurred)
    truth = np.where(left, np.float32(0.5), np.float32(4.0))
    work, scale = working(full)
    sw = cv2.resize(truth * np.float32(scale), work.shape[1::-1], interpolation=cv2.INTER_AREA)
    sw += rng.normal(0, 0.1 * scale, sw.shape).astype(np.float32)
    return full, truth, band_mask(truth), work, sw, scale


def band_mask(truth: np.ndarray, jump: float = 0.1) -> np.ndarray:
    """Pixels within BAND px of a discontinuity (a 3x3 morphological gradient above ``jump``)."""
    edge = cv2.morphologyEx(truth, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > jump
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5) <= BAND


def network_case(photo: Path, model, meta):
    """A photo and the network's working map (CPU, fp32); its truth and band when it has one."""
    from defocus_cli.io.images import load_map, read_image
    from defocus_cli.pipelines.estimate import run_network

    full = read_image(photo).pixels
    work, scale = working(full)
    sw = run_network(work, model) * np.float32(meta.get("sigma_max", model.config.sigma_max))
    truth_file = photo.with_name(photo.stem + ".truth.png")
    if not truth_file.is_file():
        return full, None, None, work, sw, scale
    truth = load_map(truth_file).astype(np.float32)
    return full, truth, band_mask(truth), work, sw, scale


def oracle(case):
    """The same photo with the true map area-downsampled to the working size as the input map:
    the up-sampler's own error, without the network's."""
    full, truth, band, work, _, scale = case
    sw = cv2.resize(truth * np.float32(scale), work.shape[1::-1], interpolation=cv2.INTER_AREA)
    return full, truth, band, work, sw, scale


def median_time(fn, args, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def accuracy(fn, case) -> tuple[float, float]:
    full, truth, band, work, sw, scale = case
    err = np.abs(fn(sw, work, full, scale) - truth)
    return float(err.mean()), float(err[band].mean())


def peak_extra_mb(name: str, npz: Path) -> float:
    """Peak RSS above the loaded inputs during one call, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--_memory", name, str(npz)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _memory_child(name: str, npz: Path) -> None:
    d = np.load(npz)
    args = (d["sw"], d["work"], d["full"], float(d["scale"]))

    def status(key: str) -> float:
        lines = Path("/proc/self/status").read_text().splitlines()
        line = next(ln for ln in lines if ln.startswith(key))
        return int(line.split()[1]) / 1024

    base = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    VARIANTS[name](*args)
    print(status("VmHWM") - base)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="2,12", help="synthetic sizes, MP (2, 12)")
    ap.add_argument("--model", default=None, help="weights for the example scenes (default model)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant RSS subprocesses")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._memory:
        return _memory_child(a._memory[0], Path(a._memory[1]))

    from defocus_cli.models import DEFAULT_MODEL
    from defocus_cli.models.registry import load_model

    model, meta = load_model(a.model or DEFAULT_MODEL, "cpu")
    model.eval()
    default_threads = cv2.getNumThreads()
    sizes = [int(s) for s in a.sizes.split(",")]
    cases = {f"{mp} MP": synthetic(*SIZES[mp]) for mp in sizes}
    for name in ("scene", "scene-wide"):
        cases[f"{name} net"] = network_case(REPO / "examples" / f"{name}.jpg", model, meta)
        cases[f"{name} true-in"] = oracle(cases[f"{name} net"])
    timing_inputs = {f"{mp} MP": cases[f"{mp} MP"] for mp in sizes}
    real = sorted(REAL.glob("*.jpg"))[:1]
    if real:
        timing_inputs["10 MP real"] = network_case(real[0], model, meta)

    rows = {}
    for name, fn in VARIANTS.items():
        row = rows[name] = {}
        for label, (full, _, _, work, sw, scale) in timing_inputs.items():
            for threads in (1, default_threads):
                cv2.setNumThreads(threads)
                row[f"t {label} {threads}"] = median_time(fn, (sw, work, full, scale), a.repeats)
        cv2.setNumThreads(default_threads)
        for label, case in cases.items():
            row[f"mae {label}"], row[f"edge {label}"] = accuracy(fn, case)

    if not a.no_memory and 12 in sizes:
        full, _, _, work, sw, scale = cases["12 MP"]
        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "in.npz"
            np.savez(npz, full=full, work=work, sw=sw, scale=scale)
            for name in VARIANTS:
                rows[name]["rss 12 MP"] = peak_extra_mb(name, npz)

    print(f"CPU: {cpu_model()}, {default_threads} OpenCV threads; cv2 {cv2.__version__}; "
          f"numpy {np.__version__}; median of {a.repeats}; scale (working / full) "
          + ", ".join(f"{k} {c[5]:.3f}" for k, c in timing_inputs.items()))
    print("Times: seconds, 1 thread / default threads. MAE: px of the full-resolution photo, "
          f"all pixels / within {BAND} px of a discontinuity.\n")
    tcols = list(timing_inputs)
    head = ["variant"] + [f"time {t}" for t in tcols]
    if any("rss 12 MP" in r for r in rows.values()):
        head.append("peak extra RSS 12 MP (MB)")
    head += [f"MAE {c}" for c in cases]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in rows.items():
        cells = [name] + [f"{r[f't {t} 1']:.3f} / {r[f't {t} {default_threads}']:.3f}" for t in tcols]
        if "rss 12 MP" in r:
            cells.append(f"{r['rss 12 MP']:.0f}")
        cells += [f"{r[f'mae {c}']:.3f} / {r[f'edge {c}']:.3f}" for c in cases]
        print("| " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_model(), "cv2": cv2.__version__,
                                      "threads": default_threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
