"""evaluate_dataset on tiny synthetic dataset folders with known estimators."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from defocus_cli.errors import InputError
from defocus_cli.pipelines.eval import EvalConfig, evaluate_dataset, list_samples, read_sigma_radius_table


def write_dataset(root, n=3, size=(24, 32), seed=0, sharp=True, radius=False, splits=None):
    """n samples; sigma = a left-right ramp 0..4 px with a NaN corner; mask from sigma >= 1;
    the photo is the 'sharp' texture darkened by 10% (so PSNR of the input is finite)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("image", "sigma", "mask", "sharp") + (("radius",) if radius else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"s{i}"
        tex = rng.random((h, w, 3)).astype(np.float32)
        sigma = np.tile(np.linspace(0, 4, w, dtype=np.float32), (h, 1))
        sigma[:3, :3] = np.nan
        mask = np.where(np.isnan(sigma), 128, np.where(sigma >= 1, 255, 0)).astype(np.uint8)
        cv2.imwrite(str(root / "image" / f"{name}.png"), np.round(tex * 0.9 * 255).astype(np.uint8)[..., ::-1])
        if sharp:
            cv2.imwrite(str(root / "sharp" / f"{name}.png"), np.round(tex * 255).astype(np.uint8)[..., ::-1])
        if radius:
            np.save(root / "radius" / f"{name}.npy", sigma * 2)  # table below: radius = 2 sigma
        else:
            np.save(root / "sigma" / f"{name}.npy", sigma)
        cv2.imwrite(str(root / "mask" / f"{name}.png"), mask)
        split = splits[i] if splits else "test"
        lines.append(json.dumps({"name": name, "split": split, "sharp_valid": [2, 2, w - 2, h - 2]}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (root / "dataset.json").write_text(json.dumps({"kind": "test"}))
    return root


def oracle(root):
    """An estimator that returns the label (NaN -> 0) of the photo it is given, by lookup."""
    labels = {}
    for p in sorted((root / "sigma").glob("*.npy")):
        img = np.ascontiguousarray(cv2.imread(str(root / "image" / f"{p.stem}.png"))[..., ::-1])
        labels[img.tobytes()] = np.nan_to_num(np.load(p))
    return lambda rgb: labels[np.round(rgb * 255).astype(np.uint8).tobytes()]


def test_perfect_estimator_scores_perfectly(tmp_path):
    root = write_dataset(tmp_path / "ds")
    r = evaluate_dataset(root, oracle(root), EvalConfig(split="test"))
    assert len(r.images) == 3 and not r.failures
    assert r.mean["mae"] == 0 and r.mean["mse"] == 0 and r.mean["mae_px"] == 0
    assert r.mean["spearman"] == pytest.approx(1.0)
    # Park's tau on a 0..4 ramp = 1.2 px, the mask threshold is 1.0: the columns in between
    # are misclassified; the ranking itself is perfect
    assert r.mean["ap"] == pytest.approx(1.0)
    # by hand: column k holds 4k/31 px; labelled 24 x 32 - 9 (NaN corner) = 759 pixels, blurred
    # (>= 1 px) columns 8..31 = 576 pixels; tau 1.2 calls columns 8 and 9 (48 pixels) sharp
    assert r.mean["accuracy"] == pytest.approx((759 - 48) / 759)
    assert r.images[0]["n"] == 24 * 32 - 9  # the NaN corner is left out
    assert len(r.pr_curve["precision"]) == 101
    # tau = v_min calls everything blurred (precision = blurred share, recall 1); tau = v_max
    # only the most blurred column (precision 1)
    assert r.pr_curve["precision"][0] == pytest.approx(576 / 759)
    assert r.pr_curve["recall"][0] == 1.0 and r.pr_curve["precision"][-1] == 1.0


def test_constant_and_reversed_estimators(tmp_path):
    root = write_dataset(tmp_path / "ds")
    flat = evaluate_dataset(root, lambda rgb: np.ones(rgb.shape[:2], np.float32))
    assert math.isnan(flat.mean["spearman"])
    d = flat.to_dict()  # strict JSON: NaN becomes null
    assert d["mean"]["spearman"] is None and json.loads(json.dumps(d, allow_nan=False)) == d
    gt_mean = flat.images[0]["gt_sigma_px_mean"]
    assert flat.mean["bias_px"] == pytest.approx(1.0 - gt_mean, abs=1e-6)
    w = 32
    rev = evaluate_dataset(root, lambda rgb: np.tile(np.linspace(4, 0, w, dtype=np.float32), (rgb.shape[0], 1)))
    assert rev.mean["spearman"] == pytest.approx(-1.0)
    assert rev.mean["mae"] == pytest.approx(rev.mean["mae_px"] / 7.0)


def test_sigma_norm_scales_normalised_errors(tmp_path):
    root = write_dataset(tmp_path / "ds", n=1)
    est = lambda rgb: np.zeros(rgb.shape[:2], np.float32)  # noqa: E731
    r7 = evaluate_dataset(root, est, EvalConfig(sigma_norm=7.0))
    r3 = evaluate_dataset(root, est, EvalConfig(sigma_norm=3.275))
    assert r3.mean["mae"] == pytest.approx(r7.mean["mae"] * 7 / 3.275)
    assert r3.mean["mae_px"] == r7.mean["mae_px"]


def test_deblur_pairs_are_measured_in_the_valid_box(tmp_path):
    root = write_dataset(tmp_path / "ds", n=2)
    est = lambda rgb: np.zeros(rgb.shape[:2], np.float32)  # noqa: E731
    # "deblurring" that undoes the 10% darkening exactly, up to 8-bit rounding
    r = evaluate_dataset(root, est, deblur=lambda rgb, sigma: np.clip(rgb / 0.9, 0, 1))
    row = r.images[0]
    assert row["psnr_gain"] > 20 and row["psnr_deblurred"] > 40
    assert row["ssim_deblurred"] > row["ssim_input"]
    # oracle for the input's figures: skimage on the valid box [2, h - 2) x [2, w - 2), SSIM of
    # the BT.601 luma with Wang et al.'s settings (1e-9: the same float32 pixels, float64 sums)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from defocus_cli.io.images import read_image

    def read(sub):  # the pixels the evaluation reads
        return read_image(root / sub / "s0.png").pixels[2:-2, 2:-2].astype(np.float64)

    photo, sharp = read("image"), read("sharp")
    luma = np.array([0.299, 0.587, 0.114])
    assert row["psnr_input"] == pytest.approx(peak_signal_noise_ratio(sharp, photo, data_range=1.0), abs=1e-9)
    assert row["ssim_input"] == pytest.approx(
        structural_similarity(sharp @ luma, photo @ luma, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0), abs=1e-9)
    assert r.mean["psnr_gain"] == pytest.approx(np.mean([x["psnr_gain"] for x in r.images]))
    no = evaluate_dataset(root, est)  # without a deblur function no deblur figures
    assert "psnr_gain" not in no.images[0]


def test_splits_and_limit(tmp_path):
    root = write_dataset(tmp_path / "ds", n=4, splits=["train", "test", "val", "test"])
    est = lambda rgb: np.zeros(rgb.shape[:2], np.float32)  # noqa: E731
    assert [s.name for s in list_samples(root, "test")] == ["s1", "s3"]
    assert len(list_samples(root, "all")) == 4
    assert len(evaluate_dataset(root, est, EvalConfig(split="all", limit=3)).images) == 3
    with pytest.raises(InputError, match="no sample in split 'nope'"):
        list_samples(root, "nope")


def test_radius_labels_need_and_use_the_table(tmp_path):
    root = write_dataset(tmp_path / "ds", n=1, radius=True)
    table_path = tmp_path / "table.csv"
    table_path.write_text("gaussian_sigma_px,disk_radius_px\n0.5,1\n1,2\n4,8\n")
    with pytest.raises(InputError, match="radius-table"):
        evaluate_dataset(root, lambda rgb: np.zeros(rgb.shape[:2], np.float32))
    table = read_sigma_radius_table(table_path)
    truth = np.tile(np.linspace(0, 4, 32, dtype=np.float32), (24, 1))
    r = evaluate_dataset(root, lambda rgb: truth, radius_table=table)
    assert r.mean["mae_px"] == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a dataset folder"):
        list_samples(tmp_path)
    root = write_dataset(tmp_path / "ds", n=2)
    (root / "sigma" / "s1.npy").write_bytes(b"garbage")
    r = evaluate_dataset(root, lambda rgb: np.zeros(rgb.shape[:2], np.float32))
    assert [n for n, _ in r.failures] == ["s1"] and len(r.images) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n0.5,3\n")
    with pytest.raises(InputError, match="increasing"):
        read_sigma_radius_table(bad)


def test_real_dfd_dataset_with_thin_lens_oracle(shared_data, tmp_path):
    """On a real scene prepared by realdata, the label itself scores MAE 0 and the f/2.8 photo
    vs its registered f/8 partner is a finite PSNR pair."""
    from defocus_cli.pipelines.realdata import prepare_scene, DfdIndoorConfig, prepare_dfd_indoor

    src = shared_data / "rgbd" / "dfd-indoor"
    if not (src / "depth").is_dir():
        pytest.skip(f"{src} not found")
    import shutil

    one = tmp_path / "src"
    for sub, ext in (("defocused", "jpg"), ("allinfocus", "jpg"), ("depth", "png")):
        (one / sub).mkdir(parents=True)
        shutil.copy(src / sub / f"indoor_053.{ext}", one / sub / f"indoor_053.{ext}")
    prepare_dfd_indoor(one, tmp_path / "ds")
    label = np.nan_to_num(prepare_scene(one, "indoor_053", DfdIndoorConfig())["sigma"])
    r = evaluate_dataset(tmp_path / "ds", lambda rgb: label,
                         deblur=lambda rgb, sigma: rgb)  # identity "deblur": gain 0
    row = r.images[0]
    assert row["mae_px"] == 0 and row["spearman"] == pytest.approx(1.0)
    assert 20 < row["psnr_input"] < 45 and row["psnr_gain"] == 0
