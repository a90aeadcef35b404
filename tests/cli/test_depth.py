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
    r = runner.invoke(app, ["depth", str(tmp_path / "p.png"), "--map", str(tmp_path / "p.defocus.npy"),
                            "-o", str(out), "--overwrite", "--focal-length", "35", "--f-number", "2.8",
                            "--focus-distance", "1.7", "--pixel-pitch", "36"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "p.depth.json").read_text())
    assert meta["kind"] == "metric" and meta["units"] == "metres"
    assert meta["lens"]["f_number"] == {"value": 2.8, "source": "flag"}
    d = np.load(out / "p.depth.npy")
    assert d[0, 0] == np.float32(1.7) and np.all(np.diff(d[0]) > 0)
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
