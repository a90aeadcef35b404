"""`defocus deblur` command line: formats, bit depth, --map forms, estimation, errors."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import read_image, write_image

runner = CliRunner()


def _sharp(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.uniform(0.1, 0.9, (h // 8, w // 8, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _blurred_photo(path, bit_depth=8, sigma=2.0):
    sharp = _sharp()
    write_image(path, cv2.GaussianBlur(sharp, (0, 0), sigma, borderType=cv2.BORDER_REFLECT),
                bit_depth=bit_depth)
    return sharp


def _map(path, value=2.0, h=48, w=64):
    np.save(path, np.full((h, w), value, np.float32))
    return path


def _psnr(a, b):
    return 10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))


def test_png16_in_png16_out_and_sharper(tmp_path):
    sharp = _blurred_photo(tmp_path / "p.png", bit_depth=16)
    _map(tmp_path / "p.defocus.npy")
    out = tmp_path / "out"
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map",
                                 str(tmp_path / "p.defocus.npy"), "-o", str(out), "--lam", "2000",
                                 "--channels", "rgb", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = cv2.imread(str(out / "p.deblurred.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == (48, 64, 3)
    restored = read_image(out / "p.deblurred.png").pixels
    blurred = read_image(tmp_path / "p.png").pixels
    assert _psnr(restored, sharp) > _psnr(blurred, sharp) + 3.0


def test_jpeg_and_map_folder_for_several_photos_then_skip(tmp_path):
    (tmp_path / "maps").mkdir()
    for name, sigma in (("a", 2.0), ("b", 0.0)):  # the same photo, a different map each
        _blurred_photo(tmp_path / f"{name}.jpg")
        _map(tmp_path / "maps" / f"{name}.defocus.npy", value=sigma)
    args = ["deblur", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"),
            "--map", str(tmp_path / "maps"), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # each photo got its own map: a (sigma 2) deblurred everywhere, b (sigma 0) nowhere
    rows = {line.split()[0]: line for line in result.output.splitlines() if ".jpg" in line}
    assert "2.00" in rows["a.jpg"] and "100%" in rows["a.jpg"], result.output
    assert "0.00" in rows["b.jpg"] and " 0%" in rows["b.jpg"], result.output
    stamps, outs = {}, {}
    for name in ("a", "b"):
        out = read_image(tmp_path / f"{name}.deblurred.jpg")
        assert out.format == "JPEG" and out.bit_depth == 8 and out.pixels.shape == (48, 64, 3)
        outs[name] = out.pixels
        stamps[name] = (tmp_path / f"{name}.deblurred.jpg").stat().st_mtime_ns

    def edges(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    assert edges(outs["a"]) > 1.03 * edges(outs["b"])  # measured 1.08: a was sharpened, b kept
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skipped" in again.output
    for name in ("a", "b"):  # skipped means not rewritten
        assert (tmp_path / f"{name}.deblurred.jpg").stat().st_mtime_ns == stamps[name]


def test_map_of_another_resolution_is_rescaled(tmp_path):
    sharp = _blurred_photo(tmp_path / "p.png", bit_depth=16)
    _map(tmp_path / "half.npy", value=1.0, h=24, w=32)  # sigma 1 px at half size = 2 px here
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(tmp_path / "half.npy"),
                                 "--lam", "2000", "--channels", "rgb", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "2.00" in result.output  # max sigma at the photo's resolution
    restored = read_image(tmp_path / "p.deblurred.png").pixels
    assert _psnr(restored, sharp) > _psnr(read_image(tmp_path / "p.png").pixels, sharp) + 3.0


def test_usage_errors(tmp_path):
    _blurred_photo(tmp_path / "p.png")
    _blurred_photo(tmp_path / "q.png")
    m = _map(tmp_path / "m.npy")
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), str(tmp_path / "q.png"), "--map", str(m)])
    assert result.exit_code == 2 and "one map file fits one photo" in result.output
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(m), "--alpha", "1.5"])
    assert result.exit_code == 2 and "--alpha must be in (0, 1]" in result.output
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(m), "--lam", "0"])
    assert result.exit_code == 2 and "--lam must be > 0" in result.output
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(m), "--margin", "-1"])
    assert result.exit_code == 2 and "--margin must be >= 0" in result.output
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(m), "--channels", "lab"])
    assert result.exit_code == 2 and "channels" in result.output
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 40), np.float32))
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(wrong)])
    assert result.exit_code == 2 and "wrong.npy" in result.output
    assert not (tmp_path / "p.deblurred.png").exists()


def test_bad_photo_fails_alone(tmp_path):
    _blurred_photo(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "maps").mkdir()
    _map(tmp_path / "maps" / "good.defocus.npy")
    _map(tmp_path / "maps" / "bad.defocus.npy")
    result = runner.invoke(app, ["deblur", str(tmp_path / "bad.png"), str(tmp_path / "good.png"),
                                 "--map", str(tmp_path / "maps"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "bad.png" in result.output and (tmp_path / "good.deblurred.png").is_file()
    assert not (tmp_path / "bad.deblurred.png").exists()


def test_estimates_the_map_without_map(tmp_path, tiny_weights):
    _blurred_photo(tmp_path / "p.png")
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--weights", str(tiny_weights),
                                 "--device", "cpu", "--working-size", "0"])
    assert result.exit_code == 0, result.output
    assert "estimated" in result.output
    # oracle: the map `defocus estimate` writes with the same network, deblurred with the
    # estimated-map margin (0.625 px, the --margin default for estimated maps in --help)
    result = runner.invoke(app, ["estimate", str(tmp_path / "p.png"), "--weights", str(tiny_weights),
                                 "--device", "cpu", "--working-size", "0", "-o", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(tmp_path / "maps"),
                                 "--margin", "0.625", "--device", "cpu", "-o", str(tmp_path / "oracle")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_image(tmp_path / "p.deblurred.png").pixels,
                                  read_image(tmp_path / "oracle" / "p.deblurred.png").pixels)


def test_help_does_not_import_torch():
    code = "import sys, defocus_cli.cli.deblur; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_margin_defaults_to_the_estimators_error_and_zero_for_a_given_map(tmp_path, tiny_weights):
    # 0.625 px: the default margin for estimated maps that `deblur --help` documents
    estimated_map_margin = "0.625"
    _blurred_photo(tmp_path / "p.png", bit_depth=16)
    _map(tmp_path / "p.defocus.npy", value=2.0)

    def run(name, *extra):
        out = tmp_path / name
        result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "-o", str(out), "--device", "cpu",
                                     "--working-size", "0", *extra])
        assert result.exit_code == 0, result.output
        return read_image(out / "p.deblurred.png").pixels

    given = ("--map", str(tmp_path / "p.defocus.npy"))
    given_no_margin = run("g0", *given, "--margin", "0")
    np.testing.assert_array_equal(run("g", *given), given_no_margin)
    assert np.abs(run("g", *given) - run("g1", *given, "--margin", "1")).max() > 0.01
    est = ("--weights", str(tiny_weights))
    np.testing.assert_array_equal(run("e", *est), run("em", *est, "--margin", estimated_map_margin))
    # a map file from `defocus estimate` (its JSON sidecar names the model) counts as estimated
    np.save(tmp_path / "est.defocus.npy", np.full((48, 64), 2.0, np.float32))
    (tmp_path / "est.defocus.json").write_text('{"model": {"name": "dmenet-lite"}}')
    from_file = ("--map", str(tmp_path / "est.defocus.npy"))
    np.testing.assert_array_equal(run("f", *from_file), run("f1", *given, "--margin", estimated_map_margin))
    (tmp_path / "est.defocus.json").write_text("not json")
    np.testing.assert_array_equal(run("f2", *from_file), given_no_margin)


def test_threads_set_the_frame_workers_without_changing_the_image(tmp_path):
    """--threads N deconvolves N frames at once; the image is the same bit for bit (the results
    are added in a fixed order), and a negative count is a usage error."""
    import torch

    _blurred_photo(tmp_path / "p.png", bit_depth=16)
    ramp = np.broadcast_to(np.linspace(0.2, 4.0, 64, dtype=np.float32), (48, 64))
    np.save(tmp_path / "ramp.npy", np.ascontiguousarray(ramp))
    threads = torch.get_num_threads()
    images = []
    try:
        for n in (1, 3):
            out = tmp_path / f"t{n}"
            result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(tmp_path / "ramp.npy"),
                                         "--device", "cpu", "--threads", str(n), "-o", str(out)])
            assert result.exit_code == 0, result.output
            images.append(read_image(out / "p.deblurred.png").pixels)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - read_image(tmp_path / "p.png").pixels).max() > 0.01
    result = runner.invoke(app, ["deblur", str(tmp_path / "p.png"), "--map", str(tmp_path / "ramp.npy"),
                                 "--threads", "-1"])
    assert result.exit_code == 2 and "--threads must be >= 0" in result.output
