"""Patch data (pipelines.edge_data) and training (pipelines.train_edge) of the edge networks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defocus_cli.errors import InputError
from defocus_cli.models.edge import DEPTH, PATTERN, EdgeNetConfig
from defocus_cli.pipelines import edge_data as ed
from defocus_cli.pipelines.train_edge import (
    EdgeTrainConfig,
    _indices,
    export_edge_run,
    load_edge_checkpoint,
    make_batch,
    train_edge,
)

TINY = EdgeNetConfig(channels=4, hidden=16, features=8, classifier=(16, 8))


def _texture(rng, h, w):
    base = rng.uniform(0, 1, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)


def _render(rng, size=160):
    """A sharp textured square in front of a background blurred by 3 px, with its sigma map."""
    bg = cv2.GaussianBlur(_texture(rng, size, size), (0, 0), 3.0)
    fg = _texture(rng, size, size)
    inside = np.zeros((size, size), bool)
    inside[40:120, 40:120] = True
    img = np.where(inside[..., None], fg, bg)
    sigma = np.where(inside, 0.0, 3.0).astype(np.float32)
    return img, sigma


def test_render_labels_follow_the_true_map():
    rng = np.random.default_rng(0)
    img, sigma = _render(rng)
    parts = ed._empty()
    ed._label_render((img * 255).round().astype(np.uint8), sigma, rng, 10_000, 3, parts)
    kind = np.concatenate(parts["kind"])
    s = np.concatenate(parts["sigma"])
    patches = np.concatenate(parts["patches"])
    assert (kind == DEPTH).sum() > 20 and (kind == PATTERN).sum() > 20
    assert patches.shape[1:] == (41, 41, 3) and patches.dtype == np.uint8
    assert np.isnan(s[kind == DEPTH]).all()
    assert set(np.unique(s[kind == PATTERN]).tolist()) <= {0.0, 3.0}
    # a depth-edge patch straddles the square's boundary: part sharp texture, part smooth
    # background, so its share of strong steps lies between the two kinds of pattern patches
    luma = patches.astype(np.float32).mean(axis=-1)
    strong = (np.abs(np.diff(luma, axis=2)) > 20).mean(axis=(1, 2))
    sharp, smooth = np.median(strong[(kind == PATTERN) & (s == 0)]), np.median(strong[(kind == PATTERN) & (s == 3)])
    assert smooth < np.median(strong[kind == DEPTH]) < sharp


def test_varying_blur_is_exact_on_levels_and_between_neighbours():
    rng = np.random.default_rng(1)
    img = _texture(rng, 64, 64)
    field = np.full((64, 64), 1.5, np.float32)
    np.testing.assert_allclose(ed.blur_varying(img, field), ed.gaussian(img, 1.5), atol=1e-5)
    field[:] = 1.6  # 60 % of 1.5, 40 % of 1.75
    want = 0.6 * ed.gaussian(img, 1.5) + 0.4 * ed.gaussian(img, 1.75)
    np.testing.assert_allclose(ed.blur_varying(img, field), want, atol=1e-5)


def _tiny_dataset(root: Path, n: int = 300) -> Path:
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        kind = (np.arange(n) % 3 == 0).astype(np.uint8)  # a third depth edges
        sigma = np.where(kind == DEPTH, np.nan, rng.uniform(0, 6, n)).astype(np.float32)
        np.save(root / split / "patches.npy", rng.integers(0, 255, (n, 41, 41, 3), dtype=np.uint8))
        np.save(root / split / "sigma.npy", sigma)
        np.save(root / split / "kind.npy", kind)
        np.save(root / split / "source.npy", np.zeros(n, np.uint8))
    return root


def test_batches_are_a_function_of_the_step(tmp_path):
    data = _tiny_dataset(tmp_path / "d")
    cfg = EdgeTrainConfig(data=str(data), stage="edge", net=TINY, batch=16, init="x")
    patches = ed.PatchSet.open(data, "train")
    pools = _indices(patches, "edge")
    a, b = make_batch(patches, pools, cfg, 7), make_batch(patches, pools, cfg, 7)
    assert torch.equal(a["x"], b["x"]) and a["x"].shape == (16, 3, 41, 41)
    assert int(a["label"].sum()) == 8  # half depth edges
    assert not torch.equal(a["x"], make_batch(patches, pools, cfg, 8)["x"])


def test_two_stages_resume_and_export(tmp_path):
    data = _tiny_dataset(tmp_path / "d")
    torch.set_num_threads(1)
    blur = EdgeTrainConfig(data=str(data), stage="blur", net=TINY, steps=6, batch=8, ckpt_every=3,
                           val_every=6, log_every=3, val_max=50)
    r = train_edge(blur, tmp_path / "blur", device="cpu")
    assert r.step == 6 and "val_mae_px" in r.val and r.val["val_mae_px"] >= 0
    # stop at 3, resume to 6: the same weights as the straight run
    half = EdgeTrainConfig(**{**blur.__dict__, "steps": 3})
    train_edge(half, tmp_path / "blur2", device="cpu")
    train_edge(blur, tmp_path / "blur2", resume=True, device="cpu")
    s1 = load_edge_checkpoint(tmp_path / "blur")["model"]
    s2 = load_edge_checkpoint(tmp_path / "blur2")["model"]
    assert all(torch.allclose(s1[k], s2[k]) for k in s1)

    edge = EdgeTrainConfig(data=str(data), stage="edge", net=TINY, steps=4, batch=8, val_every=4, log_every=2,
                           val_max=50, init=str(tmp_path / "blur"))
    r2 = train_edge(edge, tmp_path / "edge", device="cpu")
    assert 0 <= r2.val["val_accuracy"] <= 1
    s3 = load_edge_checkpoint(tmp_path / "edge")["model"]
    # f1-NET and B-NET stay frozen in the edge stage
    assert all(torch.equal(s1[k], s3[k]) for k in s1 if k.startswith(("f1.", "b_net", "b_classifier")))
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if k.startswith("e_net"))
    meta = export_edge_run(tmp_path / "edge", tmp_path / "w.pt")
    assert meta["architecture"] == "edge-nets" and meta["blur_stage"]["val_metrics"]["val_mae_px"] >= 0
    with pytest.raises(InputError, match="holds no trained E-NET"):
        export_edge_run(tmp_path / "blur", tmp_path / "w2.pt")
    assert json.loads((tmp_path / "w.json").read_text())["config"]["channels"] == 4


def test_edge_stage_needs_initial_weights(tmp_path):
    with pytest.raises(InputError, match="--init"):
        EdgeTrainConfig(data=str(tmp_path), stage="edge")
    with pytest.raises(InputError, match="not an edge patch dataset"):
        ed.PatchSet.open(tmp_path, "train")
