"""`defocus eval` and `defocus eval prepare-dfd` end to end (tiny random network, tiny data)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from defocus_cli.cli import app

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def dataset(tmp_path):
    """Two 40x48 samples in the synth/dfd-real layout, one per split, with sharp/ partners."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for sub in ("image", "sigma", "mask", "sharp"):
        (root / sub).mkdir(parents=True)
    lines = []
    for name, split in (("a", "test"), ("b", "train")):
        sharp = cv2.GaussianBlur(rng.random((40, 48, 3)).astype(np.float32), (0, 0), 1.0)
        sigma = np.tile(np.linspace(0, 3, 48, dtype=np.float32), (40, 1))
        blurred = cv2.GaussianBlur(sharp, (0, 0), 1.5)
        cv2.imwrite(str(root / "image" / f"{name}.png"), np.round(blurred * 255).astype(np.uint8)[..., ::-1])
        cv2.imwrite(str(root / "sharp" / f"{name}.png"), np.round(sharp * 255).astype(np.uint8)[..., ::-1])
        np.save(root / "sigma" / f"{name}.npy", sigma)
        cv2.imwrite(str(root / "mask" / f"{name}.png"), np.where(sigma >= 1, 255, 0).astype(np.uint8))
        lines.append(json.dumps({"name": name, "split": split}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_help_lists_both_commands_without_torch():
    code = ("import sys; from typer.testing import CliRunner; from defocus_cli.cli import app; "
            "r = CliRunner().invoke(app, ['eval', '--help']); "
            "print('torch' in sys.modules, r.exit_code, 'prepare-dfd' in r.output, 'run' in r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "0", "True", "True"]


def test_eval_dataset_writes_report(dataset, tiny_weights, tmp_path):
    report = tmp_path / "report.json"
    r = _run("eval", dataset, "--weights", tiny_weights, "--device", "cpu", "--precision", "fp32",
             "-o", report, "--sigma-norm", "3.275")
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["split"] == "test" and data["n_images"] == 1 and data["images"][0]["name"] == "a"
    for key in ("mse", "mae", "mae_px", "spearman", "accuracy", "ap"):
        assert key in data["mean"]
    # oracle: the library estimator at the image's own size, errors computed here by hand and
    # Spearman by scipy (rel 1e-5: float32 maps, float64 sums)
    from scipy.stats import spearmanr

    from defocus_cli.estimator import load_estimator
    from defocus_cli.io.images import read_image

    rgb = read_image(dataset / "image" / "a.png").pixels
    pred = load_estimator(weights=tiny_weights, device="cpu", precision="fp32").estimate(rgb, 0).sigma
    d = pred.astype(np.float64) - np.load(dataset / "sigma" / "a.npy")
    mean = data["mean"]
    assert mean["mae_px"] == pytest.approx(np.abs(d).mean(), rel=1e-5)
    assert mean["mae"] == pytest.approx(np.abs(d).mean() / 3.275, rel=1e-5)
    assert mean["mse"] == pytest.approx(np.mean((d / 3.275) ** 2), rel=1e-5)
    rho = spearmanr(pred.ravel(), np.load(dataset / "sigma" / "a.npy").ravel()).statistic
    assert mean["spearman"] == pytest.approx(rho, abs=1e-6)
    assert data["estimate"]["working_size"] == "native"
    assert data["estimator"]["device"] == "cpu"
    assert "MAE px" in r.output and "mean" in r.output


def test_eval_run_alias_split_all_and_deblur(dataset, tiny_weights, tmp_path):
    report = tmp_path / "r.json"
    r = _run("eval", "run", dataset, "--weights", tiny_weights, "--device", "cpu", "--split", "all",
             "--deblur", "-o", report, "--no-per-image")
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["n_images"] == 2
    row = data["images"][0]
    assert {"psnr_input", "psnr_deblurred", "psnr_gain", "ssim_input", "ssim_deblurred"} <= set(row)
    assert row["psnr_gain"] == pytest.approx(row["psnr_deblurred"] - row["psnr_input"])
    # the input's PSNR against sharp/, by hand (the pair has no valid box: whole image)
    from defocus_cli.io.images import read_image

    name = row["name"]
    blurred = read_image(dataset / "image" / f"{name}.png").pixels.astype(np.float64)
    sharp = read_image(dataset / "sharp" / f"{name}.png").pixels.astype(np.float64)
    expected = 10 * np.log10(1 / np.mean((blurred - sharp) ** 2))
    assert row["psnr_input"] == pytest.approx(expected, abs=1e-4)
    assert {r["name"] for r in data["images"]} == {"a", "b"}


def test_eval_bad_inputs_are_one_line_errors(dataset, tiny_weights, tmp_path):
    r = _run("eval", tmp_path / "nope", "--weights", tiny_weights, "--device", "cpu")
    assert r.exit_code == 2 and "not a dataset folder" in r.output
    r = _run("eval", dataset, "--weights", tiny_weights, "--device", "cpu", "--split", "val")
    assert r.exit_code == 2 and "no sample in split 'val'" in r.output
    r = _run("eval", dataset, "--weights", tmp_path / "missing.pt", "--device", "cpu")
    assert r.exit_code == 2
    r = _run("eval", dataset, "--weights", tiny_weights, "--sigma-norm", "0")
    assert r.exit_code == 2 and "sigma_norm" in r.output


def test_prepare_dfd_on_two_real_scenes(shared_data, tmp_path):
    src = shared_data / "rgbd" / "dfd-indoor"
    if not (src / "depth").is_dir():
        pytest.skip(f"{src} not found")
    small = tmp_path / "src"
    for sub, ext in (("defocused", "jpg"), ("allinfocus", "jpg"), ("depth", "png")):
        (small / sub).mkdir(parents=True)
        for scene in ("indoor_001", "indoor_008"):
            shutil.copy(src / sub / f"{scene}.{ext}", small / sub / f"{scene}.{ext}")
    out = tmp_path / "dfd-real"
    r = _run("eval", "prepare-dfd", small, "-o", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "sigma").iterdir()) == ["indoor_001.npy", "indoor_008.npy"]
    splits = [json.loads(line)["split"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert splits == ["train", "test"]
    r = _run("eval", "prepare-dfd", tmp_path / "empty", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "not a DFD indoor folder" in r.output
