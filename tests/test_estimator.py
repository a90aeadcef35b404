"""The library's Estimator: shipped weights against a known map, and running out of memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defocus_cli.errors import ProcessingError
from defocus_cli.estimator import MIN_OOM_TILE, LazyEstimator, load_estimator
from defocus_cli.io.images import load_map, read_image, write_image
from defocus_cli.ops.metrics import spearman
from defocus_cli.pipelines import estimate as E

REPO = Path(__file__).resolve().parents[1]


def test_shipped_weights_on_the_example_photo():
    """Golden figures of the shipped dmenet-lite on examples/scene.jpg against its true map.

    Measured: MAE 1.18 px, Spearman 0.67; a constant map at the truth's median scores MAE 1.43.
    The bounds leave room for float differences between machines, not for a worse network.
    """
    est = load_estimator("dmenet-lite", device="cpu", precision="fp32")
    sigma = est.estimate(read_image(REPO / "examples" / "scene.jpg").pixels).sigma
    truth = load_map(REPO / "examples" / "scene.truth.png")
    assert sigma.shape == truth.shape == (800, 1200)
    mae = float(np.abs(sigma - truth).mean())
    constant = float(np.abs(np.median(truth) - truth).mean())
    assert mae < 1.25, f"MAE {mae:.3f} px"
    assert mae < constant - 0.15
    assert spearman(sigma, truth) > 0.62


def test_default_fused_estimator_on_the_example_photo():
    """Golden figures of the default estimator (network B blended with the edge map).

    Measured: MAE 1.16 px, Spearman 0.59 (network B alone: 1.185 / 0.667 on this procedural
    scene, whose background blur of 3-6 px is beyond the edge map's reach at its working size);
    the bounds leave room for float differences between machines."""
    est = load_estimator(device="cpu", precision="fp32")
    assert est.describe()["name"] == "fused"
    result = est.estimate(read_image(REPO / "examples" / "scene.jpg").pixels)
    truth = load_map(REPO / "examples" / "scene.truth.png")
    mae = float(np.abs(result.sigma - truth).mean())
    assert mae < 1.22, f"MAE {mae:.3f} px"
    assert spearman(result.sigma, truth) > 0.55
    assert result.info["pattern_points"] > 10_000 and "fallback" not in result.info


def _oom_above(side: int, calls: list[tuple[int, int]]):
    """A run_network that runs out of memory for tiles with a side over ``side``."""
    real = E.run_network

    def run_network(rgb, model, dtype=None, tile=1024, overlap=96):
        calls.append((tile, overlap))
        if min(tile, max(rgb.shape[:2])) > side:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(rgb, model, dtype, tile, overlap)

    return run_network


def test_out_of_memory_retries_in_smaller_tiles(tiny_weights, monkeypatch):
    est = load_estimator(weights=tiny_weights, device="cpu", precision="fp32")
    rgb = np.random.default_rng(0).random((400, 600, 3)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(E, "run_network", _oom_above(MIN_OOM_TILE, calls))
    got = est.estimate(rgb, working_size=0).sigma
    assert [t for t, _ in calls] == [1024, 512, 256]
    monkeypatch.undo()
    cfg = E.EstimateConfig(working_size=None, tile=256, tile_overlap=64)
    want = E.estimate_defocus(rgb, est.model, est.meta, cfg).sigma
    np.testing.assert_array_equal(got, want)


def test_out_of_memory_at_the_smallest_tile_fails_the_photo(tiny_weights, monkeypatch):
    est = load_estimator(weights=tiny_weights, device="cpu", precision="fp32")
    monkeypatch.setattr(E, "run_network", _oom_above(16, []))
    with pytest.raises(ProcessingError, match="out of CPU memory even in 256 px tiles"):
        est.estimate(np.zeros((300, 300, 3), np.float32), working_size=0)


def test_a_batch_goes_on_past_a_photo_that_runs_out_of_memory(tiny_weights, tmp_path, monkeypatch):
    from defocus_cli.cli import app

    rng = np.random.default_rng(1)
    write_image(tmp_path / "big.png", rng.random((300, 300, 3)).astype(np.float32))
    write_image(tmp_path / "small.png", rng.random((40, 60, 3)).astype(np.float32))
    monkeypatch.setattr(E, "run_network", _oom_above(100, []))
    result = CliRunner().invoke(app, ["estimate", str(tmp_path / "big.png"), str(tmp_path / "small.png"),
                                      "--weights", str(tiny_weights), "--device", "cpu",
                                      "--working-size", "0", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "big.png: out of CPU memory" in result.output
    assert "1 of 2 failed" in result.output
    assert (tmp_path / "out" / "small.defocus.npy").is_file()
    assert not (tmp_path / "out" / "big.defocus.npy").exists()


def test_an_out_of_memory_error_outside_the_estimator_fails_only_that_photo(tmp_path, monkeypatch):
    """An accelerator OOM anywhere in a photo's work (here: deblurring) is that photo's failure."""
    from defocus_cli import photos
    from defocus_cli.cli import app

    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.png", rng.random((30, 40, 3)).astype(np.float32))
        np.save(tmp_path / f"{name}.defocus.npy", np.full((30, 40), 1.5, np.float32))
    real = photos.deblur_pixels

    def deblur_pixels(pixels, *args, **kwargs):
        if pixels[0, 0, 0] == read_image(tmp_path / "a.png").pixels[0, 0, 0]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pixels, *args, **kwargs)

    monkeypatch.setattr(photos, "deblur_pixels", deblur_pixels)
    result = CliRunner().invoke(app, ["deblur", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                      "--map", str(tmp_path), "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "a.png: out of accelerator memory" in result.output
    assert (tmp_path / "out" / "b.deblurred.png").is_file()


def test_lazy_estimator_loads_once(tiny_weights):
    lazy = LazyEstimator(weights=tiny_weights, device="cpu")
    assert not lazy.loaded
    first = lazy.get()
    assert lazy.loaded and lazy.get() is first and first.get() is first


def test_edge_weights_make_the_fused_estimator(tiny_edge_weights):
    """--weights with edge networks: network B (the registry's base) fused with the edge map;
    the settings stored in the weights' metadata ("estimator") are used."""
    from defocus_cli.estimator import EdgeEstimator

    est = load_estimator(weights=tiny_edge_weights, device="cpu", precision="fp32")
    assert isinstance(est, EdgeEstimator)
    assert est.config.fusion == "blend" and est.config.depth_threshold == 1.01
    d = est.describe()
    assert d["architecture"] == "edge-nets" and d["base"]["name"] == "dmenet-lite" and d["sha256"]
    rgb = read_image(REPO / "examples" / "scene.jpg").pixels
    r = est.estimate(rgb, working_size=384)
    assert r.sigma.shape == rgb.shape[:2] and np.isfinite(r.sigma).all() and (r.sigma >= 0).all()
    assert r.info["pattern_points"] >= 10 and "fallback" not in r.info
    base = est.base.estimate(rgb, 384).sigma
    assert not np.array_equal(r.sigma, base)


def test_registry_names_edge_and_fused(tiny_edge_weights, tmp_path, monkeypatch):
    import shutil

    from defocus_cli.errors import WeightsError

    for f in ("dmenet-lite.pt", "dmenet-lite.json"):
        shutil.copy(REPO / "weights" / f, tmp_path / f)
    monkeypatch.setenv("DEFOCUS_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match=r"edge\.pt is missing"):
        load_estimator("fused", device="cpu")
    for f in (tiny_edge_weights, tiny_edge_weights.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    edge = load_estimator("edge", device="cpu", precision="fp32")
    fused = load_estimator("fused", device="cpu", precision="fp32")
    assert (edge.name, edge.config.fusion) == ("edge", "edge")
    assert (fused.name, fused.config.fusion) == ("fused", "blend")
    # a flat photo has no edges: both fall back to network B's map, and say so
    flat = np.full((120, 160, 3), 0.5, np.float32)
    r = edge.estimate(flat, working_size=0)
    assert "fallback" in r.info
    np.testing.assert_array_equal(r.sigma, edge.base.estimate(flat, 0).sigma)


def test_load_variant_changes_edge_settings_and_rejects_the_rest():
    from defocus_cli.estimator import load_variant

    est = load_variant("fused:fine_points=0,blend=0.3,fusion=edge", device="cpu")
    assert (est.config.fine_points, est.config.blend, est.config.fusion) == (0, 0.3, "edge")
    assert load_variant("fused", device="cpu").config.fine_points == 512
    with pytest.raises(ValueError, match="not an EdgeConfig field"):
        load_variant("fused:nope=1", device="cpu")
    with pytest.raises(ValueError, match="only the edge-based"):
        load_variant("dmenet-lite:blend=0.1", device="cpu")
    with pytest.raises(ValueError):
        load_variant("fused:fine_points=many", device="cpu")
    from_file = load_variant(str(REPO / "weights" / "dmenet-lite.pt"), device="cpu")
    assert from_file.describe()["sha256"] == load_variant("dmenet-lite", device="cpu").describe()["sha256"]
