"""`defocus synth` pipeline: labels, camera sampling, splits, reproducibility, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defocus_cli.errors import InputError
from defocus_cli.pipelines.synth import (
    RGBDSource,
    SynthConfig,
    make_procedural_scene,
    plan_samples,
    run_synth,
    split_of,
)


def _rgbd_folder(root: Path, n: int = 2, size: tuple[int, int] = (64, 48)) -> RGBDSource:
    """n RGB-D pairs: a textured image and a 16-bit depth in mm (a near box on a slanted wall),
    with a hole of invalid (0) depth."""
    rng = np.random.default_rng(0)
    w, h = size
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir(parents=True)
    for i in range(n):
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(root / "rgb" / f"scene{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        depth = np.tile(np.linspace(2000, 4000, w), (h, 1)).astype(np.uint16)
        depth[10:30, 10:30] = 800 + 100 * i
        depth[40:44, 50:60] = 0
        cv2.imwrite(str(root / "depth" / f"scene{i}.png"), depth)
    return RGBDSource(root / "rgb", root / "depth", "toy")


def _config(tmp_path: Path, out: str = "ds", **kw) -> SynthConfig:
    source = tmp_path / "src"
    src = _rgbd_folder(source) if not source.exists() else RGBDSource(source / "rgb", source / "depth", "toy")
    base = dict(output=tmp_path / out, sources=(src,), procedural=3, samples_per_source=2,
                procedural_size=(48, 40), seed=7)
    base.update(kw)
    return SynthConfig(**base)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and ".progress" not in p.parts}


def test_layout_labels_and_camera(tmp_path):
    config = _config(tmp_path)
    report = run_synth(config)
    assert report.planned == 2 * 2 + 3 and report.generated == 7 and not report.failures
    out = config.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == sorted(r["name"] for r in records)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["generator"] == "defocus synth" and meta["mask_threshold_px"] == 1.0
    assert meta["counts"]["samples"] == 7

    for r in records:
        image = cv2.imread(str(out / r["image"]), cv2.IMREAD_UNCHANGED)
        sigma = np.load(out / r["sigma"])
        mask = cv2.imread(str(out / r["mask"]), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (r["height"], r["width"], 3)
        assert sigma.dtype == np.float32 and sigma.shape == image.shape[:2]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 128, 255}
        np.testing.assert_array_equal(mask == 128, np.isnan(sigma))  # no label: unknown, not sharp
        sharp = cv2.imread(str(out / "sharp" / f"{r['name']}.png"), cv2.IMREAD_UNCHANGED)
        assert sharp.dtype == np.uint8 and sharp.shape == image.shape
        # the image is the sharp scene blurred by sigma: equal where sigma is ~0, smoother elsewhere
        diff = np.abs(image.astype(np.float32) - sharp).mean(axis=2)
        in_focus = np.nan_to_num(sigma, nan=99) < 0.1
        if in_focus.sum() > 100:
            assert np.median(diff[in_focus]) <= 3
        if np.nanmean(sigma) > 1.5:
            lap = lambda a: np.abs(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F)).mean()
            assert lap(image) < lap(sharp)
        # the paper's camera: S1 in [x_near, x_far], 0 <= alpha <= alpha_up, CoC <= c_max
        assert r["x_near"] <= r["S1"] <= r["x_far"]
        assert 0 <= r["alpha"] <= r["alpha_up"]
        # Eq. 2 by hand: the largest alpha keeping both ends of the depth range within c_max
        bound = min(r["x_far"] / abs(r["x_far"] - r["S1"]) if r["x_far"] != r["S1"] else np.inf,
                    r["x_near"] / abs(r["x_near"] - r["S1"]) if r["x_near"] != r["S1"] else np.inf)
        assert r["alpha_up"] == pytest.approx(r["c_max"] * bound, rel=1e-9)
        assert np.nanmax(sigma) <= r["c_max"] / 4 + 1e-4
        assert r["split"] in ("train", "val", "test")
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(mask == 255, sigma >= 1.0)

    rgbd = [r for r in records if r["kind"] == "rgbd"]
    for r in rgbd:
        sigma = np.load(out / r["sigma"])
        raw = cv2.imread(r["depth_path"], cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000
        invalid = raw == 0
        assert np.isnan(sigma[invalid]).all() and np.isfinite(sigma[~invalid]).all()
        x = np.clip(raw, r["x_near"], r["x_far"])
        expected = r["alpha"] * np.abs(x - r["S1"]) / x / 4  # Eq. 1, sigma = c / 4
        np.testing.assert_allclose(sigma[~invalid], expected[~invalid], rtol=1e-4, atol=1e-5)
        assert r["invalid_fraction"] == pytest.approx(invalid.mean())
    # all samples of one scene share its split
    by_scene: dict[str, set[str]] = {}
    for r in records:
        by_scene.setdefault(r["scene"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_scene.values())


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = _config(tmp_path, "a")
    run_synth(a)
    b = dataclasses.replace(a, output=tmp_path / "b", workers=2)
    run_synth(b)
    fa, fb = _files(a.output), _files(b.output)
    assert fa.keys() == fb.keys() and len(fa) == 7 * 4 + 2  # image, sigma, mask, sharp per sample
    assert all(fa[k] == fb[k] for k in fa)
    c = dataclasses.replace(a, output=tmp_path / "c", seed=8)
    run_synth(c)
    fc = _files(c.output)
    assert fa["sigma/procedural-000000.npy"] != fc["sigma/procedural-000000.npy"]


def test_adding_samples_keeps_existing_ones(tmp_path):
    small = _config(tmp_path, "small", procedural=2, samples_per_source=1)
    run_synth(small)
    big = _config(tmp_path, "big", procedural=3, samples_per_source=2)
    run_synth(big)
    fs, fb = _files(small.output), _files(big.output)
    for k in fs:
        if k.startswith(("image/", "sigma/", "mask/")):
            assert fs[k] == fb[k], k


def test_resume_skips_finished_samples(tmp_path):
    config = _config(tmp_path)
    run_synth(config)
    before = _files(config.output)
    (config.output / "image" / "procedural-000001.png").unlink()  # as if interrupted mid-sample
    report = run_synth(config)
    assert report.generated == 1 and report.skipped == 6
    assert _files(config.output) == before


def test_refuses_a_folder_made_with_other_options(tmp_path):
    run_synth(_config(tmp_path))
    with pytest.raises(InputError, match="seed"):
        run_synth(_config(tmp_path, seed=8))
    # counts may change: samples are independent
    run_synth(_config(tmp_path, procedural=4))


def test_split_is_by_scene_and_independent_of_seed():
    splits = [split_of(f"procedural/{i:06d}", 0.1, 0.1) for i in range(4000)]
    assert splits == [split_of(f"procedural/{i:06d}", 0.1, 0.1) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    assert split_of("x", 0.0, 0.0) == "train"


def test_bad_sources_fail_their_samples_only(tmp_path):
    config = _config(tmp_path)
    depth = cv2.imread(str(tmp_path / "src/depth/scene1.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp_path / "src/depth/scene1.png"), depth[:, :20])  # wrong aspect ratio
    report = run_synth(config)
    assert report.generated == 5 and len(report.failures) == 2 and report.exit_code == 2
    assert "scene1.png" in report.failures[0][1] and "20x48" in report.failures[0][1]


def test_plan_errors(tmp_path):
    with pytest.raises(InputError, match="nothing to generate"):
        SynthConfig(output=tmp_path / "x")
    empty = tmp_path / "empty"
    (empty / "rgb").mkdir(parents=True)
    (empty / "depth").mkdir()
    with pytest.raises(InputError, match="no image matches"):
        plan_samples(SynthConfig(output=tmp_path / "x",
                                 sources=(RGBDSource(empty / "rgb", empty / "depth", "e"),)))
    with pytest.raises(InputError, match="c_max"):
        SynthConfig(output=tmp_path / "x", procedural=1, c_max=0)


@pytest.mark.parametrize("use_photos", [False, True])
def test_procedural_scene(use_photos, tmp_path):
    textures = None
    if use_photos:
        photo = (np.random.default_rng(1).random((60, 50, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "t.png"), photo)
        textures = (tmp_path / "t.png",)
    rgb, depth, info = make_procedural_scene(np.random.default_rng(3), 96, 80, textures)
    assert rgb.shape == (80, 96, 3) and rgb.dtype == np.float32
    assert 0 <= rgb.min() and rgb.max() <= 1
    assert depth.shape == (80, 96) and np.isfinite(depth).all() and depth.min() > 0
    assert len(info["shapes"]) >= 1
    # the shapes stand in front of the background: several distinct depth surfaces
    assert depth.max() / depth.min() > 1.5


def test_real_rgbd_sample(shared_data, tmp_path):
    base = shared_data / "rgbd" / "dfd-indoor"
    src = tmp_path / "dfd"
    (src / "allinfocus").mkdir(parents=True)
    (src / "depth").mkdir()
    for sub, suffix in (("allinfocus", ".jpg"), ("depth", ".png")):
        (src / sub / f"indoor_001{suffix}").symlink_to(base / sub / f"indoor_001{suffix}")
    config = SynthConfig(output=tmp_path / "ds",
                         sources=(RGBDSource(src / "allinfocus", src / "depth", "dfd-indoor"),),
                         samples_per_source=1, max_side=200, seed=1)
    report = run_synth(config)
    assert report.generated == 1 and not report.failures
    record = json.loads((config.output / "manifest.jsonl").read_text())
    assert record["depth_encoding"] == "png-mm" and record["width"] == 200
    assert record["name"] == "dfd-indoor-indoor_001-00"


def test_middlebury_views_of_a_scene_share_its_split(tmp_path):
    root = tmp_path / "middlebury"
    for i in range(40):
        scene = root / f"scene{i:02d}"
        scene.mkdir(parents=True)
        for v in (1, 5):
            cv2.imwrite(str(scene / f"view{v}.png"), np.full((8, 8, 3), 100, np.uint8))
            cv2.imwrite(str(scene / f"disp{v}.png"), np.full((8, 8), 40, np.uint8))
    specs, unmatched = plan_samples(SynthConfig(output=tmp_path / "x", samples_per_source=1,
                                                sources=(RGBDSource(root, root, "mb"),)))
    assert len(specs) == 80 and unmatched == []
    by_scene: dict[str, set[str]] = {}
    for s in specs:
        by_scene.setdefault(s.scene.rsplit("/", 1)[0], set()).add(s.split)
    assert all(len(v) == 1 for v in by_scene.values())
    assert {s for v in by_scene.values() for s in v} == {"train", "val", "test"}
    # each view keeps its own randomness (the entropy is per view)
    assert len({tuple(s.entropy(0)) for s in specs}) == 80
