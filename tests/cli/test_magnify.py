"""`defocus magnify` command line: formats, bit depth, --map forms, estimation fallback."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import read_image, write_image

runner = CliRunner()


def _photo(path, bit_depth=8, h=48, w=64):
    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.random((h // 4, w // 4, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_NEAREST)
    write_image(path, rgb, bit_depth=bit_depth)
    return path


def _map(path, h=48, w=64):
    sigma = np.zeros((h, w), np.float32)
    sigma[:, w // 2:] = 1.0
    np.save(path, sigma)
    return path


def test_png16_in_png16_out_and_scale_one_is_identity(tmp_path):
    photo = _photo(tmp_path / "p.png", bit_depth=16)
    sigma = _map(tmp_path / "p.defocus.npy")
    out = tmp_path / "out"
    result = runner.invoke(app, ["magnify", str(photo), "--scale", "1", "--map", str(sigma), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = cv2.imread(str(out / "p.magnified.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    original = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED)
    mse = np.mean(((written.astype(np.float64) - original) / 65535) ** 2)
    assert mse == 0 or 10 * np.log10(1 / mse) > 50


def test_jpeg_and_map_folder_for_several_photos(tmp_path):
    (tmp_path / "maps").mkdir()
    for name in ("a", "b"):
        _photo(tmp_path / f"{name}.jpg")
        _map(tmp_path / "maps" / f"{name}.defocus.npy")
    result = runner.invoke(app, ["magnify", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"),
                                 "--scale", "8", "--map", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        out = read_image(tmp_path / f"{name}.magnified.jpg")
        assert out.format == "JPEG" and out.bit_depth == 8
        src = read_image(tmp_path / f"{name}.jpg").pixels
        # the in-focus left quarter only changes by JPEG re-encoding; the right half is blurred
        kept = np.abs(out.pixels[:, :8] - src[:, :8]).mean()
        assert kept < 0.05 and np.abs(out.pixels[:, 40:] - src[:, 40:]).mean() > 2 * kept
    before = (tmp_path / "a.magnified.jpg").stat().st_mtime_ns
    again = runner.invoke(app, ["magnify", str(tmp_path / "a.jpg"), "--scale", "8",
                                "--map", str(tmp_path / "maps")])
    assert again.exit_code == 0 and "skipped" in again.output
    assert (tmp_path / "a.magnified.jpg").stat().st_mtime_ns == before  # not rewritten


def test_usage_errors(tmp_path):
    photo = _photo(tmp_path / "p.png")
    other = _photo(tmp_path / "q.png")
    sigma = _map(tmp_path / "m.npy")
    result = runner.invoke(app, ["magnify", str(photo), str(other), "--scale", "4", "--map", str(sigma)])
    assert result.exit_code == 2 and "one map file fits one photo" in result.output
    result = runner.invoke(app, ["magnify", str(photo), "--scale", "0.5", "--map", str(sigma)])
    assert result.exit_code == 2 and "scale" in result.output
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 40), np.float32))
    result = runner.invoke(app, ["magnify", str(photo), "--scale", "4", "--map", str(wrong)])
    assert result.exit_code == 2 and "wrong.npy" in result.output


def test_estimates_the_map_without_map(tmp_path, tiny_weights):
    photo = _photo(tmp_path / "p.png")
    result = runner.invoke(app, ["magnify", str(photo), "--scale", "4", "--weights", str(tiny_weights),
                                 "--device", "cpu", "--working-size", "0"])
    assert result.exit_code == 0, result.output
    assert "estimated" in result.output
    # oracle: the map `defocus estimate` writes with the same network, given with --map
    result = runner.invoke(app, ["estimate", str(photo), "--weights", str(tiny_weights), "--device", "cpu",
                                 "--working-size", "0", "-o", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["magnify", str(photo), "--scale", "4", "--map", str(tmp_path / "maps"),
                                 "-o", str(tmp_path / "oracle")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_image(tmp_path / "p.magnified.png").pixels,
                                  read_image(tmp_path / "oracle" / "p.magnified.png").pixels)


def test_help_does_not_import_torch():
    code = "import sys, defocus_cli.cli.magnify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
