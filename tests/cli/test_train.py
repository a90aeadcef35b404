"""`defocus train` and `defocus train export` (the train sub-app, invoked directly)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defocus_cli.cli.train import app
from defocus_cli.io.datasets import read_jsonl
from defocus_cli.pipelines.train_data import write_toy_dataset

runner = CliRunner()
TINY = ["--nets", "B", "--width", "0.25", "--crop", "32", "--batch", "2", "--val-max", "1",
        "--gpus", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=4, n_val=1, size=48, seed=3)


def test_module_import_does_not_import_torch():
    code = "import sys, defocus_cli.cli.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_then_export(toy, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["--data", str(toy), "-o", str(run), "--steps", "2", "--ckpt-every", "1",
                              "--lambda-c", "0.25", *TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["config"]["lambda_c"] == 0.25
    assert "randomly" in res.output and "done: 2 steps" in res.output
    assert re.search(r"on 1 process\(es\) in (fp32|bf16)", res.output)
    assert (run / "checkpoint.pt").is_file() and (run / "metrics.jsonl").is_file()
    out = tmp_path / "weights" / "toy.pt"
    res = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["width"] == 0.25 and meta["steps"] == 2
    res = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    # continuing: --resume keeps the checkpoint's config and may extend --steps
    res = runner.invoke(app, ["--resume", str(run), "--steps", "3", "--gpus", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "done: 3 steps" in res.output


def test_ema_run_exports_the_average_or_with_last_the_last_weights(toy, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["--data", str(toy), "-o", str(run), "--steps", "2", "--ema", "0.9", *TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["config"]["ema"] == 0.9
    val = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "val"][-1]
    assert {"val_mae_px", "raw_val_mae_px"} <= set(val)
    for flags, expected in (([], "moving average"), (["--last"], "last step")):
        out = tmp_path / f"w{len(flags)}.pt"
        res = runner.invoke(app, ["export", str(run), "-o", str(out), *flags])
        assert res.exit_code == 0, res.output
        assert expected in json.loads(out.with_suffix(".json").read_text())["weights"]
    res = runner.invoke(app, ["--data", str(toy), "-o", str(tmp_path / "bad"), "--ema", "1.5", *TINY])
    assert res.exit_code == 2 and "--ema" in res.output


def test_real_maps_train_l_t_and_are_recorded(toy, tmp_path):
    import numpy as np

    from defocus_cli.io.images import save_npy

    maps = tmp_path / "maps"
    maps.mkdir()
    for photo in (toy / "image").glob("*.png"):
        save_npy(maps / f"{photo.stem}.defocus.npy", np.full((48, 48), 1.5, np.float32))
    run = tmp_path / "run"
    res = runner.invoke(app, ["--data", str(toy), "-o", str(run), "--steps", "2", "--real", str(toy / "image"),
                              "--real-maps", str(maps), "--lambda-t", "3", *TINY])
    assert res.exit_code == 0, res.output
    assert "training B + L_T on 5 real photos' maps" in " ".join(res.output.split())
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["real_maps"] == str(maps.resolve()) and config["lambda_t"] == 3.0
    assert all("L_T" in r for r in read_jsonl(run / "metrics.jsonl") if "L_B" in r)
    res = runner.invoke(app, ["--data", str(toy), "-o", str(tmp_path / "bad"), "--real-maps", str(maps), *TINY])
    assert res.exit_code == 2 and "--real-maps labels the --real photos" in " ".join(res.output.split())


def test_clear_errors(toy, tmp_path):
    res = runner.invoke(app, ["-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--data" in res.output
    res = runner.invoke(app, ["--data", str(tmp_path / "nope"), "-o", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["--data", str(toy), "-o", str(tmp_path / "r"), *TINY, "--crop", "33"])
    assert res.exit_code == 2 and "multiple of 16" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "-o", str(tmp_path / "w.pt")])
    assert res.exit_code == 2 and "checkpoint" in res.output


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_checkpoint(toy, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "from defocus_cli.cli.train import app; app()",
           "--data", str(toy), "-o", str(run), "--steps", "200", "--ckpt-every", "2", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def trained_past_a_checkpoint() -> bool:  # a metrics record (every 10 steps) and a checkpoint
        metrics = run / "metrics.jsonl"
        return (run / "checkpoint.pt").exists() and metrics.exists() and bool(read_jsonl(metrics, log=True))

    try:
        deadline = time.monotonic() + 120
        while not trained_past_a_checkpoint():
            assert proc.poll() is None, "the training process ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint and metrics record within 120 s"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    res = runner.invoke(app, ["--resume", str(run), "--steps", "60", "--gpus", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl", log=True) if "kind" not in r]
    assert steps == [10, 20, 30, 40, 50, 60]


@pytest.mark.slow
def test_torchrun_runs_the_command_as_two_ranks(toy, tmp_path):
    """`torchrun -m defocus_cli train`: each process joins from torchrun's environment."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).is_file():
        pytest.skip("torchrun not found")
    run = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "-m", "defocus_cli", "train",
           "--data", str(toy), "-o", str(run), "--steps", "2", "--log-every", "1", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    replicas = json.loads((run / "replicas.json").read_text())
    assert replicas["world"] == 2 and replicas["identical"]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl", log=True) if "kind" not in r] == [1, 2]
