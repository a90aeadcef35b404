"""`defocus deblur --method network` and `defocus train sft` / `sft-export` on the command line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import read_image, write_image
from defocus_cli.models.registry import sha256_file
from tests.pipelines.test_deblur_net import write_pairs

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A tiny network trained for 2 steps and exported through the CLI: (weights .pt, run dir)."""
    root = tmp_path_factory.mktemp("sft")
    data = write_pairs(root / "data")
    run = root / "run"
    threads = torch.get_num_threads()
    result = runner.invoke(app, ["train", "sft", "--data", str(data), "-o", str(run), "--steps", "2",
                                 "--batch", "2", "--crop", "32", "--channels", "8", "--blocks", "5",
                                 "--levels", "2", "--val-max", "1", "--device", "cpu", "--threads", "1"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "export with: defocus train sft-export" in result.output
    pt = root / "w" / "sft-deblur.pt"
    result = runner.invoke(app, ["train", "sft-export", str(run), "-o", str(pt)])
    assert result.exit_code == 0, result.output
    assert "sft-deblur" in result.output and "2 steps" in result.output
    return pt, run


def _photo(tmp_path, suffix=".png", bit_depth=16):
    rng = np.random.default_rng(0)
    sharp = cv2.resize(rng.uniform(0.1, 0.9, (6, 8, 3)).astype(np.float32), (64, 48),
                       interpolation=cv2.INTER_NEAREST)
    path = tmp_path / f"p{suffix}"
    write_image(path, cv2.GaussianBlur(sharp, (0, 0), 2.0), bit_depth=bit_depth)
    np.save(tmp_path / "p.defocus.npy", np.full((48, 64), 2.0, np.float32))
    return path


def test_method_network_writes_the_image_and_a_sidecar_naming_the_network(tmp_path, network):
    pt, _ = network
    photo = _photo(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"),
                                 "--method", "network", "--model-deblur", str(pt), "-o", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = read_image(out / "p.deblurred.png")
    assert written.bit_depth == 16 and written.pixels.shape == (48, 64, 3)
    sidecar = json.loads((out / "p.deblurred.json").read_text())
    assert sidecar["method"] == "network"
    assert sidecar["network"]["name"] == "sft-deblur" and sidecar["network"]["sha256"] == sha256_file(pt)
    assert sidecar["network"]["architecture"] == "sft-deblur" and sidecar["network"]["margin_px"] == 0.0
    # a map no estimator made: the exact-map threshold
    assert sidecar["network"]["sharp_sigma_px"] == 0.25
    assert sidecar["map"]["source"] == str(tmp_path / "p.defocus.npy")
    # the network's own output, not the solver's
    from defocus_cli.pipelines.deblur_net import load_deblur_network

    expected = load_deblur_network(pt, "cpu").run(read_image(photo).pixels, np.full((48, 64), 2.0, np.float32))
    assert np.abs(written.pixels - expected).max() < 2 / 65535


def test_ensemble_averages_the_network_and_is_recorded(tmp_path, network):
    from defocus_cli.pipelines.deblur_net import load_deblur_network

    pt, _ = network
    photo = _photo(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"),
                                 "--method", "network", "--model-deblur", str(pt), "--ensemble", "4",
                                 "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "p.deblurred.json").read_text())["network"]["ensemble"] == 4
    rgb, sigma = read_image(photo).pixels, np.full((48, 64), 2.0, np.float32)
    plain = load_deblur_network(pt, "cpu").run(rgb, sigma)
    ensemble = load_deblur_network(pt, "cpu", ensemble=4).run(rgb, sigma)
    assert np.abs(read_image(out / "p.deblurred.png").pixels - ensemble).max() < 2 / 65535
    assert np.abs(ensemble - plain).max() > 1e-4  # the network is not flip-invariant: it changes
    for args, message in ((["--ensemble", "3", "--method", "network", "--model-deblur", str(pt)],
                           "--ensemble must be one of 1, 2, 4, 8"),
                          (["--ensemble", "2"], "use it with --method network")):
        result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"),
                                     "-o", str(tmp_path / "bad"), "--device", "cpu", *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_in_focus_pixels_keep_the_input_as_with_the_solver(tmp_path, network):
    pt, _ = network
    photo = _photo(tmp_path)
    original = read_image(photo).pixels

    def deblur(left_sigma, *extra):
        sigma = np.full((48, 64), 2.0, np.float32)
        sigma[:, :32] = left_sigma  # in focus on the left; 2 px: the network's
        np.save(tmp_path / "half.npy", sigma)
        result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "half.npy"), "--method",
                                     "network", "--model-deblur", str(pt), "-o", str(tmp_path / "out"),
                                     "--device", "cpu", "--overwrite", *extra])
        assert result.exit_code == 0, result.output
        written = read_image(tmp_path / "out" / "p.deblurred.png").pixels
        assert np.abs(written[:, 40:] - original[:, 40:]).max() > 0  # (a 2-step network changes little)
        return np.abs(written[:, :32] - original[:, :32]).max()

    # a hand-made map: kept up to 0.25 px; 0.4 px is blended in (60 % of the network's change)
    assert deblur(0.2) == 0
    assert deblur(0.4) > 0
    assert deblur(0.4, "--sharp", "0.5") == 0


def test_in_focus_rule_writes_the_photo_as_it_is_and_says_so(tmp_path, network):
    pt, _ = network
    photo = _photo(tmp_path)
    original = read_image(photo).pixels
    np.save(tmp_path / "flat.npy", np.full((48, 64), 0.8, np.float32))

    def deblur(*extra):
        result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "flat.npy"), "--method",
                                     "network", "--model-deblur", str(pt), "-o", str(tmp_path / "out"),
                                     "--device", "cpu", "--overwrite", *extra])
        assert result.exit_code == 0, result.output
        used = json.loads((tmp_path / "out" / "p.deblurred.json").read_text())["network"]
        assert used["map_p99_px"] == pytest.approx(0.8)
        written = read_image(tmp_path / "out" / "p.deblurred.png").pixels
        return np.abs(written - original).max(), used, result.output

    # a hand-made map says what it says: the rule is off, 0.8 px is deblurred
    changed, used, _ = deblur()
    assert changed > 0 and used["in_focus"] is False and used["in_focus_sigma_px"] == 0
    changed, used, out = deblur("--in-focus", "1")
    assert changed == 0 and used["in_focus"] is True and used["in_focus_sigma_px"] == 1.0
    assert "in focus" in out
    changed, used, _ = deblur("--in-focus", "0.7")
    assert changed > 0 and used["in_focus"] is False


def test_in_focus_needs_the_network_and_a_sigma(tmp_path):
    photo = _photo(tmp_path)
    base = ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"), "--device", "cpu"]
    result = runner.invoke(app, base + ["--in-focus", "1"])
    assert result.exit_code == 2 and "--in-focus is the deblurring network's rule" in result.output
    result = runner.invoke(app, base + ["--method", "network", "--in-focus", "-1"])
    assert result.exit_code == 2 and "--in-focus must be >= 0, got -1" in result.output


def test_solver_stays_the_default_and_says_so(tmp_path):
    photo = _photo(tmp_path, ".jpg", 8)
    result = runner.invoke(app, ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "p.deblurred.json").read_text())
    assert sidecar["method"] == "solver" and "deconvolution" in sidecar and "network" not in sidecar


def test_bad_method_or_weights_are_input_errors(tmp_path, tiny_weights):
    photo = _photo(tmp_path)
    base = ["deblur", str(photo), "--map", str(tmp_path / "p.defocus.npy"), "--device", "cpu"]
    result = runner.invoke(app, base + ["--method", "wiener"])
    assert result.exit_code == 2 and "--method must be solver or network" in result.output
    result = runner.invoke(app, base + ["--method", "network", "--model-deblur", str(tiny_weights)])
    assert result.exit_code == 2 and "a defocus map estimator" in result.output
    result = runner.invoke(app, base + ["--method", "network", "--model-deblur", str(tmp_path / "none.pt")])
    assert result.exit_code == 2 and "not found" in result.output


def test_export_refuses_to_overwrite_and_resume_continues(tmp_path, network):
    pt, run = network
    result = runner.invoke(app, ["train", "sft-export", str(run), "-o", str(pt)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["train", "sft", "--resume", str(run), "-o", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and "drop -o" in result.output


def test_train_sft_loss_psnr_is_recorded_and_reported(tmp_path):
    data = write_pairs(tmp_path / "data", n_train=2, n_val=1)
    base = ["train", "sft", "--data", str(data), "--steps", "2", "--batch", "2", "--crop", "32",
            "--channels", "8", "--blocks", "3", "--levels", "1", "--val-max", "1", "--log-every", "1",
            "--device", "cpu", "--threads", "1"]
    threads = torch.get_num_threads()
    result = runner.invoke(app, base + ["-o", str(tmp_path / "run"), "--loss", "psnr"])
    bad = runner.invoke(app, base + ["-o", str(tmp_path / "bad"), "--loss", "l2"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "step 1/2: -PSNR -" in result.output and " L1 " not in result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["loss"] == "psnr"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and all(-60 < v < -10 for v in losses)  # minus a PSNR in dB, not an L1
    assert bad.exit_code == 2 and "--loss must be one of l1, psnr, got 'l2'" in bad.output
    assert not (tmp_path / "bad").exists()
