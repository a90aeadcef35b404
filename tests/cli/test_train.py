"""`defocus train` and `defocus train export` (the train sub-app, invoked directly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from defocus_cli.cli.train import app
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
    res = runner.invoke(app, ["--data", str(toy), "-o", str(run), "--steps", "2", "--ckpt-every", "1", *TINY])
    assert res.exit_code == 0, res.output
    assert "randomly" in res.output and "done: 2 steps" in res.output
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
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoint.pt").exists()
    res = runner.invoke(app, ["--resume", str(run), "--steps", "60", "--gpus", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if "kind" not in json.loads(l)]
    assert steps == sorted(set(steps)) and steps[-1] == 60
