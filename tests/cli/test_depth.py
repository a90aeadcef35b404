"""`defocus depth` end to end with given maps."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from defocus_cli.cli import app
from defocus_cli.io.images import load_map, save_npy, write_image

runner = CliRunner()


def test_pseudo_and_metric_outputs(tmp_path):
    write_image(tmp_path / "p.png", np.full((20, 30, 3), 0.5, np.float32))
    sigma = np.tile(np.linspace(0, 1.5, 30, dtype=np.float32), (20, 1))
    save_npy(tmp_path / "p.defocus.npy", sigma)
    out = tmp_path / "out"
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "p.defocus.npy"),
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "p.depth.json").read_text())
    assert meta["kind"] == "pseudo" and meta["lens"] is None
    d = np.load(out / "p.depth.npy")
    assert d.shape == (20, 30) and np.all(np.diff(d[0]) > 0)
    # hand oracle: c = 4 sigma, alpha assumed 1.25 x the largest c (module docstring: the
    # blurriest pixel lies at 5 focus distances), x = alpha / (alpha - c) behind the focus plane
    c = 4.0 * sigma.astype(np.float64)
    alpha = 1.25 * c.max()
    np.testing.assert_allclose(d, alpha / (alpha - c), rtol=1e-6)
    assert np.isclose(d[0, -1], 5.0, rtol=1e-6)
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "p.defocus.npy"),
                            "-o", str(out), "--overwrite", "--focal-length", "35", "--f-number", "2.8",
                            "--focus-distance", "1.7", "--pixel-pitch", "36"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "p.depth.json").read_text())
    assert meta["kind"] == "metric" and meta["units"] == "metres"
    assert meta["lens"]["f_number"] == {"value": 2.8, "source": "flag"}
    d = np.load(out / "p.depth.npy")
    assert d[0, 0] == np.float32(1.7) and np.all(np.diff(d[0]) > 0)
    # hand oracle, thin lens in mm: alpha = F^2 / (N (S1 - F)) on the sensor, / pitch for px;
    # x = S1 alpha / (alpha - c) behind the focus plane (rtol 1e-6: float32 output)
    alpha_px = 35.0 ** 2 / (2.8 * (1700.0 - 35.0)) / 0.036
    np.testing.assert_allclose(d, 1.7 * alpha_px / (alpha_px - c), rtol=1e-6)
    png = load_map(out / "p.depth.png")  # in mm / 1000 = m: the load_map scale is 1000 too
    assert np.allclose(png, np.where(np.isfinite(d), d, png), atol=1e-3)


def test_partial_lens_flags_are_a_clear_error(tmp_path):
    write_image(tmp_path / "p.png", np.full((8, 8, 3), 0.5, np.float32))
    save_npy(tmp_path / "m.npy", np.zeros((8, 8), np.float32))
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "m.npy"),
                            "--f-number", "2.8"])
    assert r.exit_code == 2
    assert "missing focal_length_mm, focus_distance_m, pixel_pitch_um" in r.output
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "m.npy"),
                            "--focus", "middle"])
    assert r.exit_code == 2 and "--focus must be near or far" in r.output


def test_map_at_another_resolution_gives_the_same_metric_depth(tmp_path):
    """A map is in pixels of the image it was computed for: a half-size map has half the sigma,
    and once rescaled to the photo the depth must not change (pitch given at the photo's size)."""
    write_image(tmp_path / "p.png", np.full((20, 30, 3), 0.5, np.float32))
    full = np.full((20, 30), 0.4, np.float32)
    full[:, 16:] = 1.2
    save_npy(tmp_path / "full.npy", full)
    save_npy(tmp_path / "half.npy", full[::2, ::2] / 2)
    lens = ["--focal-length", "35", "--f-number", "2.8", "--focus-distance", "1.7", "--pixel-pitch", "36"]
    depths = []
    for name in ("full", "half"):
        out = tmp_path / name
        r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / f"{name}.npy"),
                                "-o", str(out), *lens])
        assert r.exit_code == 0, r.output
        depths.append(np.load(out / "p.depth.npy"))
    assert depths[1].shape == (20, 30)
    for region in (np.s_[:, :12], np.s_[:, 20:]):  # away from the resampled step
        assert np.allclose(depths[1][region], depths[0][region], rtol=1e-4)
    assert depths[0][0, 0] < depths[0][0, -1]


def test_blur_beyond_infinity_is_reported_in_the_summary(tmp_path):
    write_image(tmp_path / "p.png", np.full((8, 8, 3), 0.5, np.float32))
    save_npy(tmp_path / "m.npy", np.full((8, 8), 5.0, np.float32))  # c = 20 px > alpha = 7.3 px
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "m.npy"),
                            "--focal-length", "35", "--f-number", "2.8", "--focus-distance", "1.7",
                            "--pixel-pitch", "36"])
    assert r.exit_code == 0, r.output
    assert "beyond" in r.output and "100.0%" in r.output
    meta = json.loads((tmp_path / "p.depth.json").read_text())
    assert meta["pixels_beyond_invertible_range"] == 64
