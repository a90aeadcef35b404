"""Pseudo-labels for the real photos (--real-maps): another estimator's maps cropped with their
photos, and L_T, the blur-map loss against them, in B's objective."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defocus_cli.errors import InputError
from defocus_cli.io.images import read_image, save_npy
from defocus_cli.pipelines.train import Dist, TrainConfig, Trainer, prepare, train
from defocus_cli.pipelines.train_data import BatchPlan, StepBatches, write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy dataset whose photos double as D_R, and for each photo a map equal to 7 x its green
    channel, so a crop's target can be checked against the crop itself."""
    root = tmp_path_factory.mktemp("teacher")
    ds = write_toy_dataset(root / "toy", n_train=6, n_val=1, size=64, seed=3)
    maps = root / "maps"
    maps.mkdir()
    for photo in sorted((ds / "image").glob("*.png")):
        save_npy(maps / f"{photo.stem}.defocus.npy", 7.0 * read_image(photo).pixels[..., 1])
        (maps / f"{photo.stem}.defocus.json").write_text(json.dumps({"model": {"name": "fused"}}))
    return ds, maps


def config(toy, **kw) -> TrainConfig:
    ds, maps = toy
    base = dict(data=str(ds), real=str(ds / "image"), real_maps=str(maps), nets="B", width=0.25,
                crop=32, batch=3, steps=2, log_every=1, ckpt_every=2, val_max=1)
    base.update(kw)
    return TrainConfig(**base)


def batches_of(cfg, with_maps=True):
    prep = prepare(cfg)
    plan = BatchPlan(cfg.batch, cfg.crop, cfg.seed, 0, 1, cfg.sigma_max)
    return prep, StepBatches(prep.train, prep.real, prep.masked, plan, prep.real_maps if with_maps else None)


def test_each_real_crop_comes_with_its_own_map_crop(toy):
    prep, batches = batches_of(config(toy))
    assert len(prep.real_maps) == len(prep.real) == 7
    for step in range(4):  # several random crops, flips and rotations
        batch = batches[step]
        assert batch["real_target"].shape == (3, 1, 32, 32)
        # the map is 7 x green, and sigma_max is 7: each target is its crop's green channel
        assert torch.allclose(batch["real_target"], batch["real"][:, 1:2], atol=1e-6)


def test_real_crops_are_the_same_with_and_without_maps(toy):
    """Adding pseudo-labels keeps the crops a run without them draws (its batches are reproducible)."""
    _, with_maps = batches_of(config(toy))
    _, without = batches_of(config(toy), with_maps=False)
    for step in range(3):
        assert torch.equal(with_maps[step]["real"], without[step]["real"])
        assert "real_target" not in without[step]


def test_a_photo_without_a_map_is_named(toy, tmp_path):
    ds, maps = toy
    partial = tmp_path / "partial"
    partial.mkdir()
    for m in sorted(maps.glob("*.npy"))[1:]:
        (partial / m.name).write_bytes(m.read_bytes())
    first = sorted((ds / "image").glob("*.png"))[0].name
    with pytest.raises(InputError, match=f"no map for {first}"):
        prepare(config(toy, real_maps=str(partial)))
    with pytest.raises(InputError, match="not found"):
        prepare(config(toy, real_maps=str(tmp_path / "absent")))


def test_real_maps_need_real_photos_and_a_non_negative_weight(toy):
    with pytest.raises(InputError, match="--real-maps labels the --real photos"):
        config(toy, real=None)
    with pytest.raises(InputError, match="--lambda-t"):
        config(toy, lambda_t=-1.0)


def test_a_map_of_another_size_is_refused(toy, tmp_path):
    ds, maps = toy
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for m in maps.glob("*.npy"):
        save_npy(wrong / m.name, np.zeros((10, 12), np.float32))
    _, batches = batches_of(config(toy, real_maps=str(wrong)))
    with pytest.raises(InputError, match=r"map size \(10, 12\) differs"):
        batches[0]


def test_l_t_enters_l_g_with_its_weight(toy):
    for lam in (0.5, 2.0):
        cfg = config(toy, lambda_t=lam)
        prep, batches = batches_of(cfg)
        trainer = Trainer(cfg, prep.active, 10, CPU, Dist())
        terms = {k: float(v) for k, v in trainer.step(batches[0], 0).items()}
        assert terms["L_T"] > 0
        assert terms["L_g"] == pytest.approx(terms["L_B"] + lam * terms["L_T"], rel=1e-5)


def test_without_maps_l_t_is_absent(toy):
    cfg = config(toy, real_maps=None)
    prep, batches = batches_of(cfg)
    terms = Trainer(cfg, prep.active, 10, CPU, Dist()).step(batches[0], 0)
    assert "L_T" not in terms and float(terms["L_g"]) == pytest.approx(float(terms["L_B"]))


def test_steps_on_l_t_pull_b_toward_the_maps(toy):
    """With L_B switched off by an all-NaN synthetic target, only L_T trains B: it must fall."""
    cfg = config(toy, lr=1e-3)
    prep, batches = batches_of(cfg)
    trainer = Trainer(cfg, prep.active, 10, CPU, Dist())
    batch = trainer._to_device(batches[0])
    batch["target"] = torch.full_like(batch["target"], float("nan"))
    losses = [float(trainer.g_step(batch)[0]["L_T"]) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_run_records_the_maps_and_their_estimator(toy, tmp_path):
    ds, maps = toy
    result = train(config(toy), tmp_path / "run", device=CPU)
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_config["provenance"]["data"]["real_maps"] == {"folder": str(maps), "maps": 7,
                                                             "estimated_by": "fused"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["L_T"] > 0 for r in lines if "L_B" in r)
    assert result.step == 2
