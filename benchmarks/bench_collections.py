"""Benchmark `defocus estimate` on a collection: the local engine against Ray with 1 and 2 actors.

    python benchmarks/bench_collections.py [--n 120] [--engines local,ray1,ray2]
                                           [--data DIR] [--weights FILE | --model NAME]
                                           [--out benchmarks/results]

The photos are real ones, ``../shared/data/sharp/{Urban100,SunHays80}`` (or
$DEFOCUS_SHARED_DATA), resized to 1 MP and written as JPEG q95 to ``--data`` (outside the
repository; made once). Each engine runs as the command a user types, in a subprocess, with
``--table`` (the default maps: all four files), and is measured from outside:

- wall: the command from start to exit (interpreter, imports, Ray start-up and shut-down);
- steady images/s: photos finished per second between the first and the last photo (the
  table's ``finished_at``), i.e. without the start-up;
- memory of each process of the run (the command, Ray's actors, decoding workers, daemons):
  peak private memory (RssAnon, sampled every 0.2 s) and peak RSS (VmHWM, which also counts the
  pages of Ray's shared-memory object store a process has read);
- where the time goes: the table's per-photo decode, resize, network, up-sampling and write.

Figures go to stdout and to a JSON file; benchmarks/README.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("sharp/Urban100", "sharp/SunHays80")
STAGES = ("t_decode_s", "t_resize_s", "t_network_s", "t_upsample_s", "t_write_s")
ENGINES = {
    "local": ["--engine", "local"],
    "ray1": ["--engine", "ray", "--actors", "1"],
    "ray2": ["--engine", "ray", "--actors", "2"],
}


def make_photos(data: Path, n: int, megapixels: float = 1.0) -> list[Path]:
    """n photos of ``megapixels`` from the shared sharp sets (resized, aspect kept), JPEG q95."""
    shared = Path(os.environ.get("DEFOCUS_SHARED_DATA", REPO.parent / "shared" / "data"))
    sources = sorted(p for s in SOURCES for p in (shared / s).glob("*.jpg"))
    if len(sources) < n:
        sys.exit(f"need {n} photos, found {len(sources)} under {shared}/{{{','.join(SOURCES)}}}")
    data.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources[:n]:
        dst = data / f"{src.parent.name}-{src.stem}.jpg"
        if not dst.exists():
            img = cv2.imread(str(src), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            s = (megapixels * 1e6 / (w * h)) ** 0.5
            size = (round(w * s), round(h * s))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
            cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append(dst)
    return out


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of root and all its descendants."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            procs[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd.strip())
    keep, grew = {root}, True
    while grew:
        new = {p for p, (ppid, _) in procs.items() if ppid in keep} - keep
        keep |= new
        grew = bool(new)
    return {p: procs[p][1] for p in keep if p in procs}


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(peak RSS so far, private RSS now) in MB: VmHWM counts the pages of Ray's shared object
    store a process has touched, RssAnon only its own memory."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        return None
    return (fields["VmHWM"], fields["RssAnon"]) if len(fields) == 2 else None


#: process roles, most specific first (a worker process's title changes as it takes work)
ROLES = ("estimator actor", "decoding worker", "command (driver)",
         "other ray workers (idle, Ray Data internals)", "ray daemons (gcs, raylet, monitors, agents)")


def _role(cmd: str) -> str:
    if "MapBatches(_EstimateActor)" in cmd:
        return ROLES[0]
    if "_decode_task" in cmd:
        return ROLES[1]
    if "defocus estimate" in cmd:
        return ROLES[2]
    if cmd.startswith("ray::") or "default_worker.py" in cmd:
        return ROLES[3]
    return ROLES[4]


class PeakSampler(threading.Thread):
    """Peak RSS (VmHWM) and peak private RSS (RssAnon, sampled) of every process under a root
    pid, until stopped."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peaks: dict[int, list] = {}  # pid -> [role, VmHWM, max RssAnon]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid, cmd in _tree(self.root).items():
                mem = _memory_mb(pid)
                if mem is None:
                    continue
                role = _role(cmd)
                entry = self.peaks.setdefault(pid, [role, 0.0, 0.0])
                if ROLES.index(role) < ROLES.index(entry[0]):
                    entry[0] = role  # a worker seen starting or idle first, busy later
                entry[1], entry[2] = max(entry[1], mem[0]), max(entry[2], mem[1])
            time.sleep(self.every)

    def stop(self) -> dict[str, dict]:
        self._stop_event.set()
        self.join()
        roles: dict[str, dict] = {}
        for role, hwm, anon in self.peaks.values():
            r = roles.setdefault(role, {"processes": 0, "max_rss_mb": 0.0, "max_private_mb": 0.0,
                                        "sum_private_mb": 0.0})
            r["processes"] += 1
            r["max_rss_mb"] = round(max(r["max_rss_mb"], hwm), 1)
            r["max_private_mb"] = round(max(r["max_private_mb"], anon), 1)
            r["sum_private_mb"] = round(r["sum_private_mb"] + anon, 1)
        return roles


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_engine(name: str, photos_dir: Path, work: Path, model_args: list[str]) -> dict:
    import pyarrow.parquet as pq

    run = len(list(work.glob(f"{name}-*.parquet")))
    out, table = work / f"out-{name}-{run}", work / f"{name}-{run}.parquet"
    defocus = str(Path(sys.executable).with_name("defocus"))
    cmd = [defocus, "estimate", str(photos_dir), "-o", str(out), "--table", str(table), "--device", "cpu",
           *model_args, *ENGINES[name]]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    load0 = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{output}")
    rows = [r for r in pq.read_table(table).to_pylist() if r["status"] == "done"]
    finished = sorted(r["finished_at"].timestamp() for r in rows)
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else float("nan")
    stages = {k[2:-2]: float(np.mean([r[k] for r in rows])) for k in STAGES}
    return {"engine": name, "photos": len(rows), "wall_s": round(wall, 1),
            "images_per_s_wall": round(len(rows) / wall, 3), "images_per_s_steady": round(steady, 3),
            "stage_mean_s": {k: round(v, 4) for k, v in stages.items()},
            "memory": memory, "load_average_before": load0, "load_average_after": load_average(),
            "command": " ".join(cmd[1:])}


def write_costs(sigma_path: Path, folder: Path, reps: int = 3) -> dict[str, float]:
    """Best-of-reps seconds of each file a photo gets (and of its row's numbers) on one map."""
    from defocus_cli.collections import sigma_summary
    from defocus_cli.io.images import PNG16_SCALE, robust_max, save_npy, save_png16, save_preview
    from defocus_cli.photos import map_statistics

    sigma = np.load(sigma_path)
    steps = {
        "npy": lambda: save_npy(folder / "m.npy", sigma),
        "png16": lambda: save_png16(folder / "m.png", sigma, PNG16_SCALE),
        "preview": lambda: save_preview(folder / "m.preview.png", sigma, 0.0, max(robust_max(sigma), 1e-3)),
        "sidecar stats": lambda: map_statistics(sigma),
        "row stats": lambda: sigma_summary(sigma, 2.0, 1.0),
    }
    out = {}
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = round(best, 4)
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=120, help="photos (1 MP each)")
    ap.add_argument("--engines", default="local,ray1,ray2", help=f"comma-separated: {', '.join(ENGINES)}")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "defocus-bench-1mp")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    photos = make_photos(args.data / "photos", args.n)
    photos_dir = args.data / f"set-{args.n}"
    photos_dir.mkdir(parents=True, exist_ok=True)
    for p in photos:  # exactly n photos in the folder the command maps
        link = photos_dir / p.name
        if not link.exists():
            link.symlink_to(p)
    model_args = (["--weights", str(args.weights)] if args.weights else []) + (
        ["--model", args.model] if args.model else [])
    h, w = cv2.imread(str(photos[0])).shape[:2]
    print(f"{args.n} photos, e.g. {w}x{h}; CPU: {cpu_model()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-collections-") as tmp:
        for name in args.engines.split(","):
            r = run_engine(name, photos_dir, Path(tmp), model_args)
            results.append(r)
            st = r["stage_mean_s"]
            print(f"{name:6s} wall {r['wall_s']:7.1f} s  {r['images_per_s_wall']:.3f} img/s (wall)  "
                  f"{r['images_per_s_steady']:.3f} img/s (steady)  per photo: "
                  + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in st.items())
                  + f"  load {r['load_average_before']:.1f}->{r['load_average_after']:.1f}")
            for role, m in sorted(r["memory"].items()):
                print(f"         {role}: {m['processes']} process(es), peak private {m['max_private_mb']:.0f} MB "
                      f"(sum {m['sum_private_mb']:.0f} MB), peak RSS incl. shared {m['max_rss_mb']:.0f} MB")
        costs = None
        if "local" in args.engines.split(","):
            costs = write_costs(next((Path(tmp) / "out-local-0").glob("*.defocus.npy")), Path(tmp))
            print("writing one map (best of 3): " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in costs.items()))
    # an engine listed twice (local,ray2,ray1,local: drift on a shared machine averages out)
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["engine"], []).append(r)
    if "local" in by and "ray2" in by:
        for kind in ("wall", "steady"):
            rate = {e: float(np.mean([r[f"images_per_s_{kind}"] for r in by[e]])) for e in ("local", "ray2")}
            print(f"ray2 / local images/s ({kind}): {rate['ray2'] / rate['local']:.2f} (target >= 0.85)")
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / "collections.json"
    dest.write_text(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "n": args.n,
                                "photo_size": [w, h], "results": results,
                                "write_costs_s": costs}, indent=2) + "\n")
    print(f"written: {dest}")


if __name__ == "__main__":
    main()
