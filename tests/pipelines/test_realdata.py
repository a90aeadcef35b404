"""DFD indoor -> labelled real dataset: labels, validity, split, pair registration, real files."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from defocus_cli.io.images import read_png16
from defocus_cli.ops.thinlens import alpha_from_lens
from defocus_cli.pipelines import realdata as R

CFG = R.DfdIndoorConfig()

#: the published split (seed 0); changing it silently would leak training scenes into tests
TEST_SCENES = ["indoor_007", "indoor_008", "indoor_009", "indoor_010", "indoor_051", "indoor_052",
               "indoor_053", "indoor_054", "indoor_055", "indoor_056", "indoor_057", "indoor_058",
               "indoor_072", "indoor_077", "indoor_078", "indoor_079"]
VAL_SCENES = ["indoor_027", "indoor_028", "indoor_029", "indoor_063", "indoor_064", "indoor_065",
              "indoor_066", "indoor_067"]


def test_alpha_is_the_documented_camera():
    assert CFG.alpha_px == pytest.approx(35.0 ** 2 / (2.8 * (1700 - 35)) / 0.036)
    assert CFG.alpha_px == pytest.approx(alpha_from_lens(35, 2.8, 1700) / 0.036)
    assert CFG.alpha_px == pytest.approx(7.299, abs=1e-3)


def test_sigma_from_depth_values():
    depth = np.array([[1700, 1050, 4050, 600]], np.uint16).repeat(8, 0).repeat(8, 1)
    cfg = R.DfdIndoorConfig(edge_band_px=0)  # no band: check the formula everywhere
    s = R.sigma_from_depth(depth, cfg)
    a = cfg.alpha_px
    assert s.dtype == np.float32 and s.shape == depth.shape
    assert s[0, 0] == 0.0
    assert s[0, 8] == pytest.approx(a * 650 / 1050 / 4, rel=1e-6)
    assert s[0, 16] == pytest.approx(a * 2350 / 4050 / 4, rel=1e-6)
    assert s[0, 24] == pytest.approx(a * 1100 / 600 / 4, rel=1e-6)


def test_invalid_depth_zero_range_speckle_and_edges():
    z = np.full((40, 60), 2000, np.uint16)
    z[5, 5] = 0  # no reading
    z[5, 20] = 300  # nearer than the sensor sees
    z[30, 10] = 1500  # a lone speckle, 25% off its neighbourhood
    z[:, 40:] = 3000  # a depth edge at x = 40
    ok = R.valid_depth(z, R.DfdIndoorConfig(edge_band_px=8))
    assert not ok[5, 5] and not ok[5, 20] and not ok[30, 10]
    assert not ok[20, 36] and not ok[20, 43]  # inside the band around the edge
    assert ok[20, 25] and ok[20, 55]  # far from it
    s = R.sigma_from_depth(z, R.DfdIndoorConfig(edge_band_px=8))
    assert np.isnan(s[5, 5]) and np.isfinite(s[20, 25])
    no_band = R.valid_depth(z, R.DfdIndoorConfig(edge_band_px=0))
    assert no_band[20, 36] and no_band[20, 43]


def test_split_is_fixed_by_group_and_sized():
    splits = {f"indoor_{i:03d}": R.dfd_indoor_split(f"indoor_{i:03d}") for i in range(1, 82)}
    assert sorted(k for k, v in splits.items() if v == "test") == TEST_SCENES
    assert sorted(k for k, v in splits.items() if v == "val") == VAL_SCENES
    assert sum(v == "train" for v in splits.values()) == 57
    for first, last in R.SCENE_GROUPS:  # a group of overlapping views never straddles splits
        assert len({splits[f"indoor_{i:03d}"] for i in range(first, last + 1)}) == 1
    # the groups cover 1..81 exactly once, in order
    covered = [i for first, last in R.SCENE_GROUPS for i in range(first, last + 1)]
    assert covered == list(range(1, 82))
    # another seed gives another split of the same sizes at most
    other = R.split_groups(seed=1)
    assert other != R.split_groups(seed=0)
    assert R.dfd_indoor_split("dfd-indoor/indoor_010") == "test"  # synth-style ids work too
    with pytest.raises(ValueError, match="outside"):
        R.group_of("indoor_099")


def test_register_pair_recovers_subpixel_shift_and_gain(rng):
    big = cv2.GaussianBlur(rng.random((200, 260, 3)).astype(np.float32), (0, 0), 1.5)
    sharp = big[30:150, 30:190].copy()
    # the "f/2.8" photo: the same view moved by (+5.5, -2.25) px, blurred, 10% darker
    m = np.float32([[1, 0, 5.5], [0, 1, -2.25]])
    moved = cv2.warpAffine(big, m, (260, 200), flags=cv2.INTER_LANCZOS4)[30:150, 30:190]
    blurred = cv2.GaussianBlur(moved, (0, 0), 1.2) * np.float32([0.9, 0.9, 0.95])
    out, reg = R.register_pair(sharp, blurred)
    assert reg.shift[0] == pytest.approx(5.5, abs=0.05) and reg.shift[1] == pytest.approx(-2.25, abs=0.05)
    assert reg.gain == pytest.approx((0.9, 0.9, 0.95), abs=0.01)
    x0, y0, x1, y1 = reg.box
    assert x0 >= 5 and y1 <= 120 - 2
    err_after = np.abs(cv2.GaussianBlur(out, (0, 0), 1.2) - blurred)[y0:y1, x0:x1].mean()
    err_before = np.abs(cv2.GaussianBlur(sharp, (0, 0), 1.2) * 0.92 - blurred)[y0:y1, x0:x1].mean()
    assert err_after < err_before / 5


# --------------------------------------------------------------------------------------------
# the real data


@pytest.fixture(scope="module")
def dfd(shared_data):
    src = shared_data / "rgbd" / "dfd-indoor"
    if not (src / "depth").is_dir():
        pytest.skip(f"{src} not found")
    return src


def test_real_scene_with_shifted_pair(dfd):
    r = R.prepare_scene(dfd, "indoor_005", CFG)
    e = r["entry"]
    assert r["image"].shape == (432, 645, 3) and r["sigma"].shape == (432, 645)
    assert e["sharp_shift"][0] == pytest.approx(-12.5, abs=0.3)  # the documented 12.5 px shift
    assert 0.6 < e["label"]["valid_fraction"] < 0.95
    ok = np.isfinite(r["sigma"])
    assert r["sigma"][ok].max() < 8  # an office at 0.6-12 m stays below c_max / 4 = 7 px (+ slack)
    # the label is the thin lens on the raw depth, by hand: c = alpha |z - S1| / z, sigma = c / 4,
    # alpha = F^2 / (N (S1 - F)) / pitch for the documented 35 mm f/2.8 at 1.7 m, 36 um pixels
    z = read_png16(dfd / "depth" / "indoor_005.png").astype(np.float64)
    alpha = 35.0 ** 2 / (2.8 * (1700 - 35)) / 0.036
    np.testing.assert_allclose(r["sigma"][ok], alpha * np.abs(z[ok] - 1700) / z[ok] / 4, rtol=1e-6)
    assert np.all((r["mask"] == 128) == np.isnan(r["sigma"]))
    # blurred from sigma 1 px (CoC 4 px, the documented threshold), sharp below
    assert np.all((r["mask"] == 255) == (ok & (np.nan_to_num(r["sigma"]) >= 1.0)))


def test_real_depth_is_millimetres(dfd):
    z = read_png16(dfd / "depth" / "indoor_073.png")
    assert z.dtype == np.uint16 and z.shape == (432, 645)
    assert 1000 < np.median(z) < 6000  # an office seen from 1-6 m, in mm


def test_prepare_writes_the_dataset_layout(dfd, tmp_path):
    src = tmp_path / "src"
    for sub, ext in (("defocused", "jpg"), ("allinfocus", "jpg"), ("depth", "png")):
        (src / sub).mkdir(parents=True)
        for scene in ("indoor_010", "indoor_011"):
            shutil.copy(dfd / sub / f"{scene}.{ext}", src / sub / f"{scene}.{ext}")
    report = R.prepare_dfd_indoor(src, tmp_path / "out")
    out = tmp_path / "out"
    assert not report.failures and report.split_counts == {"train": 1, "val": 0, "test": 1}
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(e["name"], e["split"]) for e in entries] == [("indoor_010", "test"), ("indoor_011", "train")]
    for name in ("indoor_010", "indoor_011"):
        img = cv2.imread(str(out / "image" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        jpg = cv2.imread(str(src / "defocused" / f"{name}.jpg"))
        np.testing.assert_array_equal(img, jpg)  # the photo itself, losslessly
        sigma = np.load(out / "sigma" / f"{name}.npy")
        mask = cv2.imread(str(out / "mask" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert sigma.dtype == np.float32 and mask.dtype == np.uint8 and mask.shape == sigma.shape
        assert set(np.unique(mask)) <= {0, 128, 255}
        # the files hold the scene's label and mask as prepare_scene makes them
        scene = R.prepare_scene(src, name, CFG)
        np.testing.assert_array_equal(sigma, scene["sigma"])
        np.testing.assert_array_equal(mask, scene["mask"])
        assert (out / "sharp" / f"{name}.png").is_file()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"]["counts"] == report.split_counts
    assert meta["config"]["focus_distance_mm"] == 1700.0


def test_not_a_dfd_folder(tmp_path):
    from defocus_cli.errors import InputError

    with pytest.raises(InputError, match="not a DFD indoor folder"):
        R.list_scenes(tmp_path)
