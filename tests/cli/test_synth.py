"""`defocus synth` command line: a thin layer over the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner

from defocus_cli.cli import app

runner = CliRunner()


def _toy_rgbd(root):
    (root / "set" / "rgb").mkdir(parents=True)
    (root / "set" / "depth").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "set/rgb/a.png"), (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    depth = np.tile(np.linspace(1000, 3000, 48), (40, 1)).astype(np.uint16)
    cv2.imwrite(str(root / "set/depth/a.png"), depth)
    return root / "set" / "rgb", root / "set" / "depth"


def test_synth_writes_a_dataset_and_resumes(tmp_path):
    rgb, depth = _toy_rgbd(tmp_path)
    out = tmp_path / "ds"
    args = ["synth", "--rgb", str(rgb), "--depth", str(depth), "--procedural", "2",
            "--size", "40x32", "-k", "2", "--seed", "3", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 generated" in result.output
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records} == {"set", "procedural"}  # the folders' common parent
    assert (out / "image" / "set-a-01.png").is_file()
    assert json.loads((out / "dataset.json").read_text())["options"]["procedural_size"] == [40, 32]
    # the RGB-D sample's label is Eq. 1 on the given depth (mm in the PNG), sigma = c / 4, with
    # the sample's recorded alpha and S1 (rtol 1e-5: a float32 map)
    rec = next(r for r in records if r["name"] == "set-a-01")
    x = cv2.imread(str(depth / "a.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000
    sigma = np.load(out / rec["sigma"])
    np.testing.assert_allclose(sigma, rec["alpha"] * np.abs(x - rec["S1"]) / x / 4, rtol=1e-5, atol=1e-6)
    assert rec["sigma_max"] == np.float32(sigma.max())
    stamp = (out / "image" / "set-a-01.png").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "4 already there" in again.output
    assert (out / "image" / "set-a-01.png").stat().st_mtime_ns == stamp  # resumed, not redone


def test_synth_usage_errors(tmp_path):
    rgb, depth = _toy_rgbd(tmp_path)
    result = runner.invoke(app, ["synth", "--rgb", str(rgb), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "one --depth per --rgb" in result.output
    result = runner.invoke(app, ["synth", "--procedural", "1", "--size", "big", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--size" in result.output
    result = runner.invoke(app, ["synth", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nothing to generate" in result.output
    result = runner.invoke(app, ["synth", "--rgb", str(tmp_path), "--depth", str(tmp_path / "nope"),
                                 "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nope" in result.output


def test_bad_sample_gives_nonzero_exit_and_names_the_file(tmp_path):
    rgb, depth = _toy_rgbd(tmp_path)
    (depth / "a.png").write_bytes(b"broken")
    result = runner.invoke(app, ["synth", "--rgb", str(rgb), "--depth", str(depth), "-k", "1",
                                 "--procedural", "1", "--size", "32x32", "-o", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert "a.png" in result.output and "1 generated" in result.output


def test_help_does_not_import_torch():
    code = "import sys, defocus_cli.cli.synth; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
