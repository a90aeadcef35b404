"""Training throughput of DMENet's network B (and the full B+D+C+S step) on this machine.

Measures optimiser steps/s and samples/s of ``Trainer.step`` on in-memory random batches (the
network cost alone), the data pipeline's cost per batch, and DDP scaling (1 vs 2 gloo processes,
full ``launch`` runs on a toy dataset on disk).

    python benchmarks/bench_train.py                      # the README table (several minutes)
    python benchmarks/bench_train.py --widths 0.25 --crops 128 --steps 3
    python benchmarks/bench_train.py --ddp-only

Figures depend on the machine's load: the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from defocus_cli.device import autocast, cpu_has_fast_bf16
from defocus_cli.io.datasets import read_jsonl
from defocus_cli.pipelines.train import Dist, TrainConfig, Trainer, launch
from defocus_cli.pipelines.train_data import BatchPlan, StepBatches, SynthSet, write_toy_dataset


def fake_vgg19_state_dict() -> dict:
    """Random weights in torchvision vgg19's layout (only the cost of C matters here)."""
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M")
    sd, idx, cin = {}, 0, 3
    for item in cfg:
        if item == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(item, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(item)
        idx += 2
        cin = item
    return sd


def random_batch(batch: int, crop: int, full: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {"synth": torch.rand(batch, 3, crop, crop, generator=g),
           "target": torch.rand(batch, 1, crop, crop, generator=g)}
    if full:
        out["real"] = torch.rand(batch, 3, crop, crop, generator=g)
        out["masked"] = torch.rand(batch, 3, crop, crop, generator=g)
        out["mask"] = (torch.rand(batch, 1, crop, crop, generator=g) > 0.5).float()
    return out


def bench_step(width: float, crop: int, precision: str, nets: str, batch: int, steps: int,
               channels_last: bool, max_seconds: float) -> dict:
    cfg = TrainConfig(data="-", nets=nets, width=width, crop=crop, batch=batch,
                      precision=precision, channels_last=channels_last)
    content = None
    if "C" in nets:
        from defocus_cli.models.vgg import ContentNet

        content = ContentNet(fake_vgg19_state_dict())
    trainer = Trainer(cfg, nets, 1000, torch.device("cpu"), Dist(), c=content)
    data = random_batch(batch, crop, nets != "B")
    t = time.perf_counter()
    # on the CPU a step has finished when step() returns (no queued device work to wait for)
    trainer.step(data, 0)  # warm-up: oneDNN primitive creation, allocator
    warm = time.perf_counter() - t
    times = []
    if warm < max_seconds:
        for i in range(steps):
            t = time.perf_counter()
            trainer.step(data, i + 1)
            times.append(time.perf_counter() - t)
            if sum(times) > max_seconds:
                break
    per_step = sorted(times)[len(times) // 2] if times else warm  # median: robust to load spikes
    return {"width": width, "crop": crop, "precision": precision, "nets": nets, "batch": batch,
            "channels_last": channels_last, "threads": torch.get_num_threads(),
            "steps_timed": len(times), "s_per_step": per_step, "steps_per_s": 1 / per_step,
            "samples_per_s": batch / per_step, "warmup_s": warm}


def bench_conv_probe() -> list[dict]:
    """One 3x3 conv 64->64 on (4, 64, 128, 128), fp32 vs bf16 autocast: how much faster (AMX) or
    slower (emulated) bf16 is on this CPU."""
    x = torch.randn(4, 64, 128, 128)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    flops = 2 * 4 * 64 * 64 * 9 * 128 * 128
    rows = []
    for prec in ("fp32", "bf16"):
        dtype = torch.bfloat16 if prec == "bf16" else None
        with torch.no_grad(), autocast(torch.device("cpu"), dtype):
            conv(x)
            t = time.perf_counter()
            conv(x)
            dt = time.perf_counter() - t
        rows.append({"what": "conv3x3 64->64 (4,64,128,128) forward", "precision": prec,
                     "s": dt, "gflops": flops / dt / 1e9})
    return rows


def bench_data(crop: int, batch: int, root: Path) -> dict:
    ds = write_toy_dataset(root / "data_bench", n_train=8, n_val=1, size=512, seed=0)
    batches = StepBatches(SynthSet.open(ds, "train"), [], [], BatchPlan(batch, crop, 0, 0, 1, 7.0))
    batches[0]
    t = time.perf_counter()
    for s in range(1, 11):
        batches[s]
    per = (time.perf_counter() - t) / 10
    return {"what": f"load+augment one batch of {batch} crops {crop} from 512x512 PNG + npy", "s_per_batch": per}


def bench_ddp(width: float, crop: int, batch: int, steps: int, root: Path) -> list[dict]:
    ds = write_toy_dataset(root / "ddp_data", n_train=64, n_val=1, size=max(crop, 256), seed=0)
    rows = []
    cores = os.cpu_count() or 1
    for procs, threads in ((1, 1), (1, cores), (2, max(1, cores // 2))):
        run = root / f"ddp{procs}_{threads}"
        cfg = TrainConfig(data=str(ds), nets="B", width=width, crop=crop, batch=batch, steps=steps,
                          log_every=1, ckpt_every=10**6, val_max=0, precision="fp32")
        t = time.perf_counter()
        launch(cfg, run, cpu_procs=procs, threads=threads)
        wall = time.perf_counter() - t
        recs = read_jsonl(run / "metrics.jsonl")
        rates = sorted(r["steps_per_s"] for r in recs if "steps_per_s" in r)[1:]  # drop warm-up step
        sps = rates[len(rates) // 2]
        rows.append({"procs": procs, "threads_per_proc": threads,
                     "width": width, "crop": crop, "batch_per_proc": batch, "steps_per_s": sps,
                     "samples_per_s": sps * batch * procs, "wall_s": wall})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1.0,0.5,0.25")
    ap.add_argument("--crops", default="256,128")
    ap.add_argument("--precisions", default="fp32",
                    help="fp32,bf16: bf16 steps are only worth timing on CPUs with native bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per configuration")
    ap.add_argument("--ddp-only", action="store_true")
    ap.add_argument("--no-ddp", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    print(f"# torch {torch.__version__}, {os.cpu_count()} cores, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.ddp_only:
            probe = bench_conv_probe()
            for row in probe:
                rows.append(row)
                print(json.dumps(row), flush=True)
            native_bf16 = cpu_has_fast_bf16()
            for crop in map(int, args.crops.split(",")):
                for width in map(float, args.widths.split(",")):
                    fp32_step = None
                    for prec in args.precisions.split(","):
                        if prec == "bf16" and not native_bf16 and fp32_step and fp32_step * 15 > args.max_seconds:
                            # emulated bf16 runs ~15x slower than fp32 here: one step would blow the cap
                            print(f"# skip bf16 width {width} crop {crop}: emulated bf16, est. "
                                  f"{fp32_step * 15:.0f} s/step", flush=True)
                            continue
                        row = bench_step(width, crop, prec, "B", args.batch, args.steps, False, args.max_seconds)
                        if prec == "fp32":
                            fp32_step = row["s_per_step"]
                        rows.append(row)
                        print(json.dumps(row), f"load {os.getloadavg()[0]:.1f}", flush=True)
            smallest = min(map(float, args.widths.split(",")))
            crop0 = int(args.crops.split(",")[-1])
            for extra in ({"channels_last": True, "nets": "B"}, {"channels_last": False, "nets": "BDCS"}):
                row = bench_step(smallest, crop0, "fp32", extra["nets"], args.batch, args.steps,
                                 extra["channels_last"], args.max_seconds)
                rows.append(row)
                print(json.dumps(row), f"load {os.getloadavg()[0]:.1f}", flush=True)
            row = bench_data(256, args.batch, root)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.no_ddp:
            for row in bench_ddp(min(map(float, args.widths.split(","))), int(args.crops.split(",")[-1]),
                                 args.batch, 8, root):
                rows.append(row)
                print(json.dumps(row), f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
