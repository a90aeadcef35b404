"""`defocus train`: train network B (DMENet) on a synth dataset; `defocus train export`.

`defocus train --data DATASET [...] -o RUN_DIR` trains (the group's default action);
`defocus train export RUN_DIR -o weights/NAME.pt` writes the shipped fp16 weights.
Multi-process runs follow torchrun's conventions (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; see pipelines.train.launcher): `torchrun ... -m defocus_cli train ...` runs on several
machines, and --gpus / --cpu-procs start local processes with the same variables.
torch and the pipeline are imported inside the command bodies so `--help` stays fast.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

HELP = """Train network B of DMENet (+ D, C, S of the paper) on a synthetic dataset.

\b
  train:     defocus train --data DATASET -o RUN_DIR OPTIONS...
  continue:  defocus train --resume RUN_DIR --steps N
  ship:      defocus train export RUN_DIR -o weights/NAME.pt
  deblurring network (map-conditioned SFT, paper 004; `defocus deblur --method network`):
             defocus train sft --data DATASET -o RUN_DIR [--steps N --crop PX --batch N --lr LR]
             defocus train sft --resume RUN_DIR [--steps N]
             defocus train sft-export RUN_DIR -o weights/sft-deblur.pt

--data is a `defocus synth` folder (image/, sigma/, manifest.jsonl with train/val splits). --real is a folder of real defocused photos without labels (the paper's D_R). --real-masks is a dataset folder with image/ + mask/ (255 = blurred, 0 = sharp, other values unknown), or a folder of masks named like the --real photos (D_B). Without them D and S are off, and the run says so.

Without --vgg-weights (torchvision's vgg19 state dict) the encoder starts random (Kaiming) and L_C is dropped; the exported weights' metadata records it.

--precision auto is bf16 on CUDA devices that have it (else fp32) and on CPUs with AMX; fp32 on other CPUs, where bf16 is emulated and slow.

Processes (DistributedDataParallel; NCCL on CUDA, gloo on the CPU): --gpus N starts N local processes, one per GPU; --gpus 0 trains on the CPU, in --cpu-procs N processes. Each process reads its place from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, the variables torchrun sets; --gpus and --cpu-procs set them for the processes they start. On several machines, run torchrun on each (the data at the same path everywhere):

\b
  torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
      -m defocus_cli train --data DATASET -o RUN_DIR OPTIONS...

Under torchrun, --gpus only chooses CUDA (device LOCAL_RANK; the default when CUDA is present) or the CPU (--gpus 0); rank 0 writes RUN_DIR.
"""

app = typer.Typer(help=HELP, add_completion=False, rich_markup_mode=None)
console = Console(stderr=True)


def _git_revision() -> str:
    """The checkout's commit (with -dirty), or "" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return rev.stdout.strip() if rev.returncode == 0 else ""


class ProgressReporter:
    """Rich progress for rank 0 (picklable: the console is made in the training process)."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __call__(self, event) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        out = Console(stderr=True)
        if event.kind == "start":
            for note in event.notes:
                out.print(f"[yellow]note:[/] {note}")
            m = event.metrics
            teacher = f" + L_T on {m['real_maps']} real photos' maps" if m.get("real_maps") else ""
            out.print(f"training {m['nets']}{teacher} on {m['world']} process(es) in "
                      f"{m['precision']}, {m['steps_per_epoch']} steps/epoch")
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                      console=out)
            self._progress.start()
            self._task = self._progress.add_task("train", total=event.total, completed=event.step, info="")
        elif self._progress is None:
            return
        elif event.kind == "step":
            m = event.metrics
            # the headline terms; every term is in metrics.jsonl
            losses = " ".join(f"{k}={m[k]:.4f}" for k in ("L_B", "L_g", "L_d") if k in m)
            info = f"{losses} lr={m['lr']:.2e} {m['steps_per_s']:.2f} it/s {m['samples_per_s']:.1f} img/s"
            self._progress.update(self._task, completed=event.step, info=info)
        elif event.kind == "val":
            m = event.metrics
            self._progress.console.print(
                f"step {event.step}: val MSE {m['val_mse']:.5f}  MAE {m['val_mae']:.4f} "
                f"(sigma/sigma_max)  MAE {m['val_mae_px']:.3f} px  on {m['val_images']} images")
        elif event.kind == "end":
            self._progress.update(self._task, completed=event.step)
            self._progress.stop()


def _provenance() -> dict:
    """The command line and the checkout's commit, recorded by every training run."""
    return {"command": shlex.join(["defocus", *sys.argv[1:]]), "git_revision": _git_revision()}


def _set_threads(threads: int) -> None:
    """torch's CPU threads for `train sft` and `train edge` (0: torch's default)."""
    from defocus_cli.errors import InputError

    if threads < 0:
        raise InputError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _resumed_config(resume: Path, steps: int | None, load_run_config):
    """The config a run folder was started with, with --steps when given."""
    from dataclasses import replace

    config = load_run_config(resume)
    return replace(config, steps=steps) if steps is not None else config


def _step_line(record: dict, steps: int, loss: str) -> str:
    return (f"step {record['step']}/{steps}: {loss} {record['loss']:.4f} "
            f"lr {record['lr']:.2e} {record['steps_per_s']:.2f} it/s")


def _fail(exc) -> None:
    console.print(f"[red]error:[/] {exc}")
    raise typer.Exit(exc.exit_code)


@app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="synth dataset folder (D_S)"),
    real: Optional[Path] = typer.Option(None, "--real", help="folder of real defocused photos (D_R)"),
    real_masks: Optional[Path] = typer.Option(None, "--real-masks", help="dataset folder (image/ + mask/) or masks named like the --real photos (D_B)"),
    real_exclude: Optional[Path] = typer.Option(None, "--real-exclude", help="names to hold out of D_R/D_B: a text list, or a manifest.jsonl (non-train entries held out)"),
    real_maps: Optional[Path] = typer.Option(None, "--real-maps", help="pseudo-labels for the --real photos: a folder of NAME.defocus.npy from another estimator (`defocus estimate REAL -o DIR --maps npy`); B then also learns L_T, the blur-map loss against them"),
    lambda_t: float = typer.Option(1.0, "--lambda-t", help="weight of L_T (with --real-maps; L_B's weight is 1)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run folder (checkpoints, metrics.jsonl)"),
    nets: str = typer.Option("BDCS", "--nets", help="sub-networks: B, BD, BDC, BDCS (the paper's ablations)"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="local CUDA processes (DDP, one per GPU); 0 = CPU; under torchrun: CUDA if > 0 [default: 1 if CUDA else 0]"),
    cpu_procs: int = typer.Option(1, "--cpu-procs", help="with --gpus 0: local gloo DDP processes (not under torchrun)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process [default: cores / processes]; 1 is far steadier on a busy machine"),
    epochs: int = typer.Option(60, "--epochs", help="passes over the synthetic train split"),
    steps: Optional[int] = typer.Option(None, "--steps", help="total optimiser steps (overrides --epochs)"),
    batch: int = typer.Option(4, "--batch", help="images per process and step"),
    crop: int = typer.Option(240, "--crop", help="training crop side, multiple of 16"),
    width: float = typer.Option(1.0, "--width", help="B's channel multiplier (lighter: 0.5, 0.25)"),
    precision: str = typer.Option("auto", "--precision", help="auto|fp32|bf16 (autocast of forward passes; auto: bf16 on CUDA with bf16 and on AMX CPUs, else fp32)"),
    channels_last: bool = typer.Option(False, "--channels-last/--no-channels-last", help="NHWC memory format"),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate (x0.8 every 20 epochs)"),
    pretrain_steps: int = typer.Option(0, "--pretrain-steps", help="first steps train B alone (B-only pre-training stage)"),
    ckpt_every: int = typer.Option(500, "--ckpt-every", help="steps between checkpoints"),
    log_every: int = typer.Option(10, "--log-every", help="steps between metrics.jsonl records (losses are read back from the device only then)"),
    val_max: int = typer.Option(16, "--val-max", help="images per validation (val split)"),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="steps between validations [default: each epoch]"),
    decay_every: int = typer.Option(20, "--decay-every", help="epochs between x0.8 learning-rate decays (the paper: 20 epochs of SYNDOF's ~8k images; scale it for a much smaller dataset)"),
    workers: int = typer.Option(0, "--workers", help="data-loading processes per training process"),
    seed: int = typer.Option(0, "--seed"),
    lambda_c: float = typer.Option(1e-4, "--lambda-c", help="weight of the content loss L_C (the paper's 1e-4, for relu4_4 of the original VGG19; with the normalised relu3_1 file L_C measured 0.9-5.6 against L_B 0.2-1.2)"),
    vgg_weights: Optional[Path] = typer.Option(None, "--vgg-weights", help="VGG19 weights: torchvision vgg19 state dict, or the conv1_1-conv3_1 normalised file of ../shared/models (encoder init + network C at relu4_4, or relu3_1 when the file ends there)"),
    init: Optional[Path] = typer.Option(None, "--init", help="start B from these weights (fresh optimiser)"),
    bn: str = typer.Option("batch", "--bn", help="BatchNorm statistics: batch (the paper's) or frozen (re-estimated on full images, then fixed: trains as inference runs)"),
    ema: float = typer.Option(0.0, "--ema", help="decay of an exponential moving average of B's weights, e.g. 0.999 (0 = none); validation and export then use the average, and validation also reports the last weights (raw_val_*)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from defocus_cli.errors import DefocusError, InputError

    try:
        import torch

        from defocus_cli.pipelines.train import TrainConfig, launch, load_run_config

        if resume is not None:
            if output is not None and output.resolve() != resume.resolve():
                raise InputError(f"--resume {resume} continues that folder; drop -o {output}")
            config = _resumed_config(resume, steps, load_run_config)
            run_dir = resume
        else:
            if data is None or output is None:
                raise InputError("defocus train needs --data DATASET and -o RUN_DIR (or --resume RUN_DIR)")
            def absolute(p: Optional[Path]) -> Optional[str]:
                # the checkpoint must still find its data when resumed from another directory
                return str(p.resolve()) if p is not None else None

            config = TrainConfig(
                data=absolute(data), real=absolute(real), real_masks=absolute(real_masks),
                real_exclude=absolute(real_exclude), real_maps=absolute(real_maps), lambda_t=lambda_t,
                nets=nets, width=width, crop=crop, batch=batch, epochs=epochs, steps=steps,
                pretrain_steps=pretrain_steps, lr=lr, precision=precision, channels_last=channels_last,
                seed=seed, ckpt_every=ckpt_every, log_every=log_every, val_max=val_max, val_every=val_every,
                decay_every_epochs=decay_every, workers=workers,
                vgg_weights=absolute(vgg_weights), init_weights=absolute(init), bn=bn, lambda_c=lambda_c,
                ema=ema)
            run_dir = output
        n_gpus = gpus if gpus is not None else (1 if torch.cuda.is_available() else 0)
        provenance = _provenance()
        result = launch(config, run_dir, gpus=n_gpus, cpu_procs=cpu_procs, threads=threads, resume=resume is not None,
                        provenance=provenance, on_event=ProgressReporter())
    except DefocusError as exc:
        _fail(exc)
        return
    console.print(f"[green]done:[/] {result.step} steps, last checkpoint in {Path(result.run_dir) / 'checkpoint.pt'}")
    if result.val:
        console.print(f"val MAE {result.val['val_mae_px']:.3f} px, MSE {result.val['val_mse']:.5f}")
    console.print(f"export with: defocus train export {result.run_dir} -o weights/NAME.pt")


def _export(exporter, run_dir: Path, output: Path, overwrite: bool) -> dict | None:
    """Run an exporter (run folder -> weights file) with the command line and git revision as
    provenance; None after printing the error."""
    from defocus_cli.errors import DefocusError, InputError

    try:
        if output.exists() and not overwrite:
            raise InputError(f"{output}: exists; pass --overwrite to replace it")
        return exporter(run_dir, output, command=shlex.join(["defocus", *sys.argv[1:]]),
                        git_revision=_git_revision())
    except DefocusError as exc:
        _fail(exc)
        return None


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="a training run folder"),
    output: Path = typer.Option(..., "-o", "--output", help="weights file to write, e.g. weights/NAME.pt"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing weights file"),
    last: bool = typer.Option(False, "--last", help="the last step's weights even when the run keeps a moving average (--ema)"),
) -> None:
    """Write the run's network B as fp16 weights + JSON metadata (for --weights / the registry)."""
    from functools import partial

    from defocus_cli.pipelines.train import export_run

    meta = _export(partial(export_run, average=not last), run_dir, output, overwrite)
    if meta is None:
        return
    val = meta["val_metrics"]
    summary = f"val MAE {val['val_mae_px']:.3f} px" if val else "no validation metrics"
    console.print(f"[green]wrote[/] {output} ({meta['architecture']} width {meta['width']}, "
                  f"{meta['steps']} steps, {summary})")


@app.command("sft")
def sft(
    data: Optional[Path] = typer.Option(None, "--data", help="synth dataset folder with image/, sharp/, sigma/ and train/val splits"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run folder (checkpoint.pt, metrics.jsonl, config.json)"),
    maps: Optional[Path] = typer.Option(None, "--maps", help="condition on estimated maps: a folder of NAME.defocus.npy (`defocus estimate DATASET/image -o FOLDER`) [default: the true maps]"),
    maps_prob: float = typer.Option(1.0, "--maps-prob", help="with --maps: share of crops conditioned on the estimated map (the rest on the true one)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="total optimiser steps [default: 2000; with --resume: the run's]"),
    batch: int = typer.Option(8, "--batch", help="crops per step"),
    crop: int = typer.Option(128, "--crop", help="crop side, px (a multiple of the network's size multiple, 8 by default)"),
    lr: float = typer.Option(5e-4, "--lr", help="Adam's initial rate (warm-up, then cosine to 2% of it)"),
    channels: int = typer.Option(32, "--channels", help="image features at full resolution"),
    blocks: int = typer.Option(6, "--blocks", help="SFT residual blocks"),
    levels: int = typer.Option(2, "--levels", help="stride-2 down-samplings (after the 2x space-to-depth)"),
    noise_max: float = typer.Option(0.01, "--noise-max", help="largest white-noise std added to the inputs (0-1)"),
    jpeg_prob: float = typer.Option(0.5, "--jpeg-prob", help="fraction of inputs JPEG-compressed (quality 70-95)"),
    map_over: float = typer.Option(0.0, "--map-over", help="px: raise the conditioning map of half the crops by a smooth random field of up to this (maps that over-state the blur)"),
    clean_prob: float = typer.Option(0.0, "--clean-prob", help="fraction of inputs left clean (8-bit rounding only: no noise, no JPEG)"),
    val_every: int = typer.Option(250, "--val-every", help="steps between validations (PSNR on the val split)"),
    val_max: int = typer.Option(16, "--val-max", help="val images per validation"),
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="steps between checkpoints"),
    log_every: int = typer.Option(20, "--log-every", help="steps between metrics.jsonl records"),
    seed: int = typer.Option(0, "--seed"),
    init: Optional[Path] = typer.Option(None, "--init", help="start from these sft-deblur weights (fresh optimiser), e.g. stage 2 on --maps"),
    loss: str = typer.Option("l1", "--loss", help="l1 (the paper's Eq. 4) or psnr (minus each crop's PSNR, averaged: what the deblur benchmark measures)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default); 1 is steadier on a shared machine"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
) -> None:
    """Train the map-conditioned deblurring network (SFT, paper 004) on a synth dataset."""
    from defocus_cli.errors import DefocusError, InputError

    try:
        from defocus_cli.models.sft import SFTNetConfig
        from defocus_cli.pipelines.train_sft import SFTTrainConfig, load_sft_run_config, train_sft

        _set_threads(threads)
        if resume is not None:
            if output is not None and output.resolve() != resume.resolve():
                raise InputError(f"--resume {resume} continues that folder; drop -o {output}")
            config = _resumed_config(resume, steps, load_sft_run_config)
            run_dir = resume
        else:
            if data is None or output is None:
                raise InputError("defocus train sft needs --data DATASET and -o RUN_DIR (or --resume RUN_DIR)")
            try:
                net = SFTNetConfig(channels=channels, blocks=blocks, levels=levels)
            except ValueError as e:
                raise InputError(str(e).replace("SFTNetConfig: ", "--")) from None
            # absolute paths: the checkpoint must still find its data when resumed elsewhere
            config = SFTTrainConfig(
                data=str(data.resolve()), maps=str(maps.resolve()) if maps else None,
                maps_prob=maps_prob, net=net,
                steps=steps or 2000, batch=batch, crop=crop, lr=lr, noise_max=noise_max,
                jpeg_prob=jpeg_prob, clean_prob=clean_prob, map_over=map_over, seed=seed,
                log_every=log_every, val_every=val_every, val_max=val_max, ckpt_every=ckpt_every,
                init=str(init.resolve()) if init else None, loss=loss)
            run_dir = output
        def report(record: dict) -> None:
            if record.get("kind") == "val":
                console.print(f"step {record['step']}: val PSNR {record['val_psnr']:.2f} dB "
                              f"({record['val_psnr_gain']:+.2f} dB over the input, {record['val_images']} images)")
            else:
                console.print(_step_line(record, config.steps, "L1" if config.loss == "l1" else "-PSNR"))

        result = train_sft(config, run_dir, resume=resume is not None, device=device,
                           provenance=_provenance(), on_log=report)
    except DefocusError as exc:
        _fail(exc)
        return
    console.print(f"[green]done:[/] {result.step} steps ({result.parameters} parameters), "
                  f"checkpoint in {Path(result.run_dir) / 'checkpoint.pt'}")
    console.print(f"export with: defocus train sft-export {result.run_dir} -o weights/sft-deblur.pt")


@app.command("sft-export")
def sft_export(
    run_dir: Path = typer.Argument(..., help="a `defocus train sft` run folder"),
    output: Path = typer.Option(..., "-o", "--output", help="weights file to write, e.g. weights/sft-deblur.pt"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing weights file"),
) -> None:
    """Write the run's deblurring network as fp16 weights + JSON metadata (architecture sft-deblur)."""
    from defocus_cli.pipelines.train_sft import export_sft_run

    meta = _export(export_sft_run, run_dir, output, overwrite)
    if meta is None:
        return
    val = meta["val_metrics"]
    summary = f"val PSNR {val['val_psnr']:.2f} dB ({val['val_psnr_gain']:+.2f} dB)" if val else "no validation metrics"
    console.print(f"[green]wrote[/] {output} ({meta['architecture']}, {meta['parameters']} parameters, "
                  f"{meta['steps']} steps, {summary})")


# the edge networks of paper 002 register their commands on this app
from defocus_cli.cli import train_edge as _train_edge  # noqa: E402,F401
