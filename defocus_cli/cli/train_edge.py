"""`defocus train edge-data | edge | edge-export`: the edge networks of paper 002.

    defocus train edge-data --sharp ../shared/data/sharp --renders datasets/syndof \\
        --middlebury ../shared/data/rgbd/middlebury -o datasets/edge-patches
    defocus train edge --data datasets/edge-patches --stage blur -o runs/edge-blur
    defocus train edge --data datasets/edge-patches --stage edge --init runs/edge-blur -o runs/edge-e
    defocus train edge-export runs/edge-e -o weights/edge.pt

Registered on `defocus train`'s app by cli/train.py; torch is imported inside the bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from defocus_cli.cli.train import (
    _export,
    _fail,
    _provenance,
    _resumed_config,
    _set_threads,
    _step_line,
    app,
    console,
)


@app.command("edge-data")
def edge_data(
    output: Path = typer.Option(..., "-o", "--output", help="patch dataset folder to write (train/, val/, dataset.json)"),
    sharp: list[Path] = typer.Option([], "--sharp", help="folder of sharp photos (searched recursively); repeatable"),
    renders: Optional[Path] = typer.Option(None, "--renders", help="a `defocus synth` dataset (its train and val splits)"),
    middlebury: Optional[Path] = typer.Option(None, "--middlebury", help="folder of Middlebury scenes (view1.png + disp1.png)"),
    crops_per_photo: int = typer.Option(6, "--crops-per-photo", help="blurred crops per sharp photo"),
    points_per_crop: int = typer.Option(48, "--points-per-crop", help="edge points per crop"),
    points_per_render: int = typer.Option(120, "--points-per-render", help="edge points of each kind per render"),
    middlebury_renders: int = typer.Option(6, "--middlebury-renders", help="random cameras per Middlebury scene"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(1, "--workers", help="processes"),
) -> None:
    """Cut 41 px training patches at edge points: pattern edges with their blur, depth edges."""
    from defocus_cli.errors import DefocusError

    try:
        from defocus_cli.pipelines.edge_data import EdgeDataConfig, make_edge_data

        config = EdgeDataConfig(output=output, sharp=tuple(sharp), renders=renders, middlebury=middlebury,
                                crops_per_photo=crops_per_photo, points_per_crop=points_per_crop,
                                points_per_render=points_per_render, middlebury_renders=middlebury_renders,
                                seed=seed, workers=workers)

        def progress(done: int, total: int) -> None:
            if done % 200 == 0 or done == total:
                console.print(f"{done}/{total} sources")

        record = make_edge_data(config, on_progress=progress)
    except DefocusError as exc:
        _fail(exc)
        return
    for split, c in record["counts"].items():
        console.print(f"{split}: {c['patches']} patches ({c['pattern']} pattern, {c['depth']} depth edges)")
    console.print(f"[green]wrote[/] {output} in {record['seconds']:.0f} s, {record['bytes'] / 1e9:.2f} GB")


@app.command("edge")
def edge(
    data: Optional[Path] = typer.Option(None, "--data", help="patch dataset folder (`defocus train edge-data`)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run folder"),
    stage: str = typer.Option("blur", "--stage", help="blur (B-NET) or edge (E-NET on B-NET's frozen f1-NET)"),
    init: Optional[Path] = typer.Option(None, "--init", help="start from a run folder or edge weights (the edge stage needs the blur stage's)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="total optimiser steps [default: 6000; with --resume: the run's]"),
    batch: int = typer.Option(256, "--batch", help="patches per step (the paper: 256)"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam's initial rate (the paper: 1e-3; warm-up, then cosine to 1% of it)"),
    channels: int = typer.Option(16, "--channels", help="channels of the trunk convolutions"),
    val_every: int = typer.Option(1000, "--val-every"),
    ckpt_every: int = typer.Option(250, "--ckpt-every"),
    log_every: int = typer.Option(50, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
) -> None:
    """Train B-NET (--stage blur) or E-NET (--stage edge) of the edge-based estimator."""
    from defocus_cli.errors import DefocusError, InputError

    try:
        from defocus_cli.models.edge import EdgeNetConfig
        from defocus_cli.pipelines.train_edge import EdgeTrainConfig, load_edge_run_config, train_edge

        _set_threads(threads)
        if resume is not None:
            config = _resumed_config(resume, steps, load_edge_run_config)
            run_dir = resume
        else:
            if data is None or output is None:
                raise InputError("defocus train edge needs --data PATCHES and -o RUN_DIR (or --resume RUN_DIR)")
            try:
                net = EdgeNetConfig(channels=channels)
            except ValueError as e:
                raise InputError(str(e)) from None
            config = EdgeTrainConfig(data=str(data.resolve()), stage=stage, net=net, steps=steps or 6000,
                                     batch=batch, lr=lr, seed=seed, log_every=log_every, val_every=val_every,
                                     ckpt_every=ckpt_every, init=str(init.resolve()) if init else None)
            run_dir = output
        def report(record: dict) -> None:
            if record.get("kind") == "val":
                figures = {k: v for k, v in record.items() if k.startswith("val_") and isinstance(v, float)}
                console.print(f"step {record['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
            else:
                console.print(_step_line(record, config.steps, "loss"))

        result = train_edge(config, run_dir, resume=resume is not None, device=device,
                            provenance=_provenance(), on_log=report)
    except DefocusError as exc:
        _fail(exc)
        return
    console.print(f"[green]done:[/] {result.step} steps, checkpoint in {Path(result.run_dir) / 'checkpoint.pt'}")


@app.command("edge-export")
def edge_export(
    run_dir: Path = typer.Argument(..., help="an edge-stage run folder of `defocus train edge`"),
    output: Path = typer.Option(..., "-o", "--output", help="weights file to write, e.g. weights/edge.pt"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing weights file"),
) -> None:
    """Write B-NET and E-NET as fp16 weights + JSON metadata (architecture edge-nets)."""
    from defocus_cli.pipelines.train_edge import export_edge_run

    meta = _export(export_edge_run, run_dir, output, overwrite)
    if meta is None:
        return
    console.print(f"[green]wrote[/] {output} ({meta['architecture']}, {meta['parameters']} parameters)")
