"""Weights: fp16 save, sha256-checked strict loading, registry names, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from defocus_cli.errors import WeightsError
from defocus_cli.models import DEFAULT_MODEL, registry
from defocus_cli.models.b import BlurNet, BlurNetConfig
from defocus_cli.models.registry import load_model, save_weights


def test_roundtrip_fp16_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = BlurNet(BlurNetConfig(width=0.125, sigma_max=5.0)).eval()
    meta = save_weights(model, tmp_path / "m.pt", {"training": {"steps": 3}})
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert meta["sha256"] == registry.sha256_file(tmp_path / "m.pt")
    loaded, meta2 = load_model(tmp_path / "m.pt")
    assert meta2["config"] == {"width": 0.125, "sigma_max": 5.0} and meta2["training"] == {"steps": 3}
    assert not loaded.training
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=2e-3)  # fp16 rounding of the weights


def test_corrupt_or_missing_files_are_clear_errors(tmp_path, tiny_weights):
    pt = tmp_path / "w.pt"
    shutil.copy(tiny_weights, pt)
    shutil.copy(tiny_weights.with_suffix(".json"), pt.with_suffix(".json"))
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_model(pt)
    pt.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="metadata file w.json is missing"):
        load_model(pt)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="unknown model 'nope'.*dmenet-lite"):
        load_model("nope")


def test_metadata_must_fit_the_weights(tmp_path, tiny_weights):
    pt = tmp_path / "w.pt"
    shutil.copy(tiny_weights, pt)
    meta = json.loads(tiny_weights.with_suffix(".json").read_text())
    meta["config"]["width"] = 0.25
    pt.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(pt)


def test_registry_names_resolve_in_the_weights_dir(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv("DEFOCUS_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="dmenet-lite.*missing"):
        load_model("dmenet-lite")
    shutil.copy(tiny_weights, tmp_path / "dmenet-lite.pt")
    shutil.copy(tiny_weights.with_suffix(".json"), tmp_path / "dmenet-lite.json")
    _, meta = load_model("dmenet-lite")
    assert meta["name"] == "dmenet-lite"


def test_module_prefix_from_ddp_is_stripped(tmp_path, tiny_weights):
    state = torch.load(tiny_weights, weights_only=True)
    pt = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, pt)
    meta = json.loads(tiny_weights.with_suffix(".json").read_text())
    meta["sha256"] = registry.sha256_file(pt)
    pt.with_suffix(".json").write_text(json.dumps(meta))
    model, _ = load_model(pt)
    assert model.config.width == 0.125
    loaded = model.state_dict()
    for k, v in state.items():  # every tensor landed under its unprefixed name
        assert torch.equal(loaded[k].to(v.dtype), v), k


def test_shipped_default_weights_load_from_the_package(monkeypatch):
    monkeypatch.delenv("DEFOCUS_WEIGHTS_DIR", raising=False)
    folder = registry.weights_dir()
    assert type(folder).__name__ in ("PosixPath", "WindowsPath"), folder  # a real folder
    # the default estimator is composite: network B's weights and the edge networks' weights
    from defocus_cli.models import BASE_MODEL, COMPOSITE_ESTIMATORS

    edge_name, _ = COMPOSITE_ESTIMATORS[DEFAULT_MODEL]
    model, meta = load_model(BASE_MODEL)
    assert meta["name"] == BASE_MODEL and meta["sigma_max"] == 7.0
    assert "train_command" in meta and meta["sha256"] == registry.sha256_file(folder / "dmenet-lite.pt")
    nets, edge_meta = load_model(edge_name, architecture=registry.EDGE_ARCHITECTURE)
    assert edge_meta["sha256"] == registry.sha256_file(folder / "edge.pt")
    assert edge_meta["edge_stage"]["train_command"].startswith("defocus train edge")
    assert type(nets).__name__ == "EdgeNets"
