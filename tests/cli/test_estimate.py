"""`defocus estimate` end to end, and the CLI's behaviour on bad input (no tracebacks)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import load_map, write_image

runner = CliRunner()


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "a.jpg", rng.random((40, 60, 3)).astype(np.float32))
    write_image(folder / "b.png", rng.random((33, 21, 3)).astype(np.float32), bit_depth=16)
    return folder


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from defocus_cli.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); r2 = CliRunner().invoke(app, ['--version']); "
            "print('torch' in sys.modules, r.exit_code, r2.output.strip())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "0", "defocus", "0.1.0"]


def test_writes_the_four_outputs_with_units(photos, tmp_path, tiny_weights):
    from defocus_cli.estimator import load_estimator
    from defocus_cli.io.images import read_image

    out = tmp_path / "out"
    result = _run("estimate", photos, "-o", out, "--weights", tiny_weights, "--device", "cpu",
                  "--precision", "fp32")
    assert result.exit_code == 0, result.output
    oracle = load_estimator(weights=tiny_weights, device="cpu", precision="fp32")
    for stem, (h, w) in {"a": (40, 60), "b": (33, 21)}.items():
        path = photos / f"{stem}.{'jpg' if stem == 'a' else 'png'}"
        sigma = np.load(out / f"{stem}.defocus.npy")
        assert sigma.shape == (h, w) and sigma.dtype == np.float32
        # the map is the library estimator's on the same photo (same device and precision):
        # 1e-6 px allows only float rounding
        expected = oracle.estimate(read_image(path).pixels, 768).sigma
        np.testing.assert_allclose(sigma, expected, atol=1e-6)
        # 16-bit PNG in 1/1000 px: round-off at most half a unit (+ float slack)
        assert np.abs(load_map(out / f"{stem}.defocus.png") - sigma).max() <= 0.0006
        assert (out / f"{stem}.defocus.preview.png").is_file()
        meta = json.loads((out / f"{stem}.defocus.json").read_text())
        assert "sigma in pixels" in meta["units"] and meta["png16_scale"] == 1000
        assert meta["model"]["sha256"] and meta["scale"] == 1.0
        assert meta["input"]["width"] == w and meta["input"]["height"] == h
        assert meta["model"]["device"] == "cpu" and meta["model"]["precision"] == "fp32"
        assert meta["stats_px"]["max"] == pytest.approx(float(sigma.max()), rel=1e-6)
        assert meta["stats_px"]["mean"] == pytest.approx(float(sigma.mean()), rel=1e-5)
    assert "2 done" in result.output


def test_existing_outputs_are_skipped_unless_overwrite(photos, tmp_path, tiny_weights):
    out = tmp_path / "out"
    _run("estimate", photos / "a.jpg", "-o", out, "--weights", tiny_weights)
    before = (out / "a.defocus.npy").stat().st_mtime_ns
    r = _run("estimate", photos / "a.jpg", "-o", out, "--weights", tiny_weights)
    assert r.exit_code == 0 and "1 skipped" in r.output
    assert (out / "a.defocus.npy").stat().st_mtime_ns == before
    r = _run("estimate", photos / "a.jpg", "-o", out, "--weights", tiny_weights, "--overwrite")
    assert "1 done" in r.output


def test_second_run_over_a_folder_ignores_its_own_outputs(photos, tiny_weights):
    _run("estimate", photos, "--weights", tiny_weights)  # outputs beside the photos
    r = _run("estimate", photos, "--weights", tiny_weights)
    assert "0 done, 2 skipped, 0 failed" in r.output


def test_batch_goes_on_past_bad_files(photos, tmp_path, tiny_weights):
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "junk.png").write_bytes(b"\x00not an image at all")
    data = (photos / "a.jpg").read_bytes()
    (photos / "trunc.jpg").write_bytes(data[: len(data) // 2])
    from PIL import Image

    Image.new("RGB", (1, 1)).save(photos / "one.png")
    r = _run("estimate", photos, tmp_path / "missing.jpg", "-o", tmp_path / "out", "--weights", tiny_weights)
    assert r.exit_code == 2
    assert "3 done" in r.output  # a, b and the 1x1 photo
    for name, words in [("empty.jpg", "empty"), ("junk.png", "not an image"),
                        ("trunc.jpg", "cannot decode"), ("missing.jpg", "no such file")]:
        assert any(name in line and words in line for line in r.output.splitlines()), (name, r.output)
    assert "4 of 7 failed" in r.output
    assert np.load(tmp_path / "out" / "one.defocus.npy").shape == (1, 1)
    assert not (tmp_path / "out" / "trunc.defocus.npy").exists()  # nothing half-written


@pytest.mark.parametrize("args,code,words", [
    (["--device", "cuda"], 2, "CUDA is not available"),
    (["--device", "tpu"], 2, "unknown device"),
    (["--model", "nope"], 2, "unknown model 'nope'"),
    (["--weights", "/nonexistent/w.pt"], 2, "weights file not found"),
])
def test_bad_options_are_one_line_errors(photos, tiny_weights, args, code, words, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the no-GPU error, on any machine
    if "--weights" not in args:
        args = args + ["--weights", str(tiny_weights)] if "--model" not in args else args
    r = _run("estimate", photos / "a.jpg", *args)
    assert r.exit_code == code and words in r.output


def test_corrupt_weights_and_bad_folders(photos, tmp_path, tiny_weights):
    import shutil

    bad = tmp_path / "bad.pt"
    shutil.copy(tiny_weights.with_suffix(".json"), bad.with_suffix(".json"))
    bad.write_bytes(tiny_weights.read_bytes()[:1000])
    r = _run("estimate", photos / "a.jpg", "--weights", bad)
    assert r.exit_code == 2 and "sha256" in r.output
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    r = _run("estimate", empty, "--weights", tiny_weights)
    assert r.exit_code == 2 and "no images found" in r.output
    r = _run("estimate", photos / "a.jpg", "-o", photos / "a.jpg", "--weights", tiny_weights)
    assert r.exit_code == 2 and "not a folder" in r.output
    r = _run("estimate", photos / "a.jpg", "-o", "/proc/defocus-out", "--weights", tiny_weights)
    assert r.exit_code == 2 and "cannot create output folder" in r.output


def test_globs(photos, tmp_path, tiny_weights):
    r = _run("estimate", str(photos / "*.jpg"), "-o", tmp_path / "o", "--weights", tiny_weights)
    assert r.exit_code == 0 and (tmp_path / "o" / "a.defocus.npy").exists()
    assert not (tmp_path / "o" / "b.defocus.npy").exists()
    r = _run("estimate", str(photos / "*.gif"), "--weights", tiny_weights)
    assert r.exit_code == 2 and "no file matches" in r.output


def test_error_messages_keep_square_brackets(tmp_path):
    # rich markup would eat "[1]" from the file name
    result = _run("estimate", tmp_path / "a[1].jpg", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "a[1].jpg" in result.output
