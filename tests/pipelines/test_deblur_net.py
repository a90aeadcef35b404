"""The deblurring network's pipelines: tiled inference (deblur_with_network), training
(train_sft: data, loss, resume) and export / loading through the registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from defocus_cli.errors import InputError, WeightsError
from defocus_cli.io.datasets import write_manifest
from defocus_cli.io.images import save_npy, write_image
from defocus_cli.models import registry
from defocus_cli.models.sft import SFTDeblurNet, SFTNetConfig
from defocus_cli.pipelines.deblur_net import (
    deblur_with_network,
    default_context,
    load_deblur_network,
    receptive_radius,
)
from defocus_cli.pipelines.train_sft import (
    PSNR_MSE_FLOOR,
    PairSet,
    SFTTrainConfig,
    crop_psnr_loss,
    degrade,
    over_statement,
    export_sft_run,
    learning_rate,
    make_batch,
    masked_l1,
    train_sft,
)

TINY = SFTNetConfig(channels=8, cond_channels=8, blocks=3, levels=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_net(config: SFTNetConfig = TINY, seed: int = 0) -> SFTDeblurNet:
    torch.manual_seed(seed)
    net = SFTDeblurNet(config).eval()
    nn.init.normal_(net.tail.weight, std=0.05)  # not the zero residual of an untrained network
    return net


def write_pairs(root: Path, n_train: int = 6, n_val: int = 2, size: int = 48, seed: int = 0) -> Path:
    """A tiny deblurring dataset: blocky textures blurred by one sigma on the left half and
    another on the right (drawn in [0.5, 3] px), the sharp texture, the map (NaN in a 2-px seam)."""
    rng = np.random.default_rng(seed)
    for sub in ("image", "sharp", "sigma"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_train + n_val):
        name = f"pair_{i:02d}"
        tex = cv2.resize(rng.random((size // 6, size // 6, 3), dtype=np.float32), (size, size),
                         interpolation=cv2.INTER_NEAREST)
        s = rng.uniform(0.5, 3.0, size=2)
        half = size // 2
        blurred = np.concatenate([cv2.GaussianBlur(tex, (0, 0), s[0])[:, :half],
                                  cv2.GaussianBlur(tex, (0, 0), s[1])[:, half:]], axis=1)
        sigma = np.empty((size, size), np.float32)
        sigma[:, :half], sigma[:, half:] = s
        sigma[:, half - 1:half + 1] = np.nan
        write_image(root / "image" / f"{name}.png", blurred)
        write_image(root / "sharp" / f"{name}.png", tex)
        save_npy(root / "sigma" / f"{name}.npy", sigma)
        entries.append({"name": name, "split": "train" if i < n_train else "val"})
    write_manifest(root, entries)
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def _config(data: Path, **kw) -> SFTTrainConfig:
    base = dict(data=str(data), net=TINY, steps=4, batch=2, crop=32, lr=2e-3, warmup=1,
                log_every=2, val_every=4, val_max=1, ckpt_every=2)
    base.update(kw)
    return SFTTrainConfig(**base)


# ------------------------------------------------------------------------------------------
# inference


def test_tiled_equals_whole_image():
    net = _random_net(SFTNetConfig(channels=8, cond_channels=8, blocks=5, levels=2))
    rng = np.random.default_rng(0)
    rgb = rng.random((70, 101, 3), dtype=np.float32)
    sigma = rng.uniform(0, 6, (70, 101)).astype(np.float32)
    whole = deblur_with_network(rgb, sigma, net, tile=0)
    tiled = deblur_with_network(rgb, sigma, net, tile=24)  # 3 x 5 tiles, context 64 px
    assert whole.shape == rgb.shape and whole.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=1e-5)  # only float summation order differs
    assert np.abs(whole - rgb).max() > 1e-3  # the residual is not zero: the comparison means something


def test_receptive_radius_bounds_the_reach_of_one_pixel():
    config = SFTNetConfig(channels=8, cond_channels=8, blocks=5, levels=2)
    net = _random_net(config)
    r = receptive_radius(config)
    x, s = torch.rand(1, 3, 160, 160), torch.rand(1, 1, 160, 160) * 3
    x2 = x.clone()
    x2[..., 80, 80] += 1.0
    with torch.no_grad():
        changed = (net(x2, s) - net(x, s)).abs().amax(1)[0] > 0
    ys, xs = np.nonzero(changed.numpy())
    reach = max(np.abs(ys - 80).max(), np.abs(xs - 80).max())
    assert 0.5 * r < reach <= r, (reach, r)  # a bound, and not a loose one
    assert default_context(config) % config.size_multiple == 0 and default_context(config) >= r


def test_untrained_network_leaves_the_photo_and_nan_counts_as_zero():
    torch.manual_seed(0)
    zero = SFTDeblurNet(TINY).eval()
    rgb = np.random.default_rng(1).random((20, 30, 3), dtype=np.float32)
    sigma = np.full((20, 30), np.nan, np.float32)
    np.testing.assert_array_equal(deblur_with_network(rgb, sigma, zero), rgb)
    net = _random_net()
    np.testing.assert_array_equal(deblur_with_network(rgb, sigma, net),
                                  deblur_with_network(rgb, np.zeros_like(sigma), net))


def test_inference_checks_its_inputs():
    net = _random_net()
    with pytest.raises(ValueError, match=r"sigma must be \(H, W\) = \(20, 30\)"):
        deblur_with_network(np.zeros((20, 30, 3), np.float32), np.zeros((20, 31), np.float32), net)
    with pytest.raises(ValueError, match="context must be a multiple of 4"):
        deblur_with_network(np.zeros((20, 30, 3), np.float32), np.zeros((20, 30), np.float32), net, context=6)


# ------------------------------------------------------------------------------------------
# training


def test_batches_are_a_function_of_seed_and_step(pairs):
    config = _config(pairs)
    train = PairSet.open(pairs, "train")
    a, b, c = make_batch(train, config, 3), make_batch(train, config, 3), make_batch(train, config, 4)
    assert a["input"].shape == (2, 3, 32, 32) and a["sigma"].shape == a["valid"].shape == (2, 1, 32, 32)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input"], c["input"])
    # unknown sigma: conditioned as 0, left out of the loss
    assert torch.equal(a["sigma"][a["valid"] == 0], torch.zeros(int((a["valid"] == 0).sum())))
    assert 0 < a["valid"].mean() < 1


def test_estimated_maps_condition_while_true_labels_mask_the_loss(pairs, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(8):
        np.save(maps / f"pair_{i:02d}.defocus.npy", np.full((48, 48), 1.25, np.float32))
    config = _config(pairs, maps=str(maps))
    batch = make_batch(PairSet.open(pairs, "train", maps), config, 0)
    assert torch.all(batch["sigma"] == 1.25)  # the estimate conditions the network...
    assert 0 < batch["valid"].mean() < 1  # ...and the true map's unknown seam stays out of the loss
    # a mix: some crops conditioned on the estimate, the others on the true map
    mixed = _config(pairs, maps=str(maps), maps_prob=0.5, batch=16)
    b = make_batch(PairSet.open(pairs, "train", maps), mixed, 0)
    estimated = [bool(torch.all(s == 1.25)) for s in b["sigma"]]
    assert 0 < sum(estimated) < 16
    for s, v, est in zip(b["sigma"], b["valid"], estimated):
        if not est:  # the true map: unknown pixels conditioned as 0, the rest not the estimate
            assert torch.all(s[v == 0] == 0) and not torch.all(s[v == 1] == 1.25)
    with pytest.raises(InputError, match="--maps-prob"):
        _config(pairs, maps=str(maps), maps_prob=1.5)
    with pytest.raises(InputError, match="pair_00.defocus.npy: missing"):
        PairSet.open(pairs, "train", tmp_path / "nowhere")
    with pytest.raises(InputError, match="'solver' input is not implemented"):
        _config(pairs, net=dataclasses.replace(TINY, input="solver"))


def test_map_over_raises_half_the_conditioning_maps_smoothly(pairs, tmp_path):
    field = over_statement((40, 60), 1.5, np.random.default_rng(0))
    assert field.shape == (40, 60) and field.dtype == np.float32
    assert 0 <= field.min() and field.max() <= 1.5 and field.max() > field.min()
    assert np.abs(np.diff(field, axis=1)).max() < 1.5 / 20  # smooth: no step between neighbours
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(8):
        np.save(maps / f"pair_{i:02d}.defocus.npy", np.full((48, 48), 1.25, np.float32))
    config = _config(pairs, maps=str(maps), map_over=1.5, batch=32)
    b = make_batch(PairSet.open(pairs, "train", maps), config, 0)
    raised = [bool(torch.any(s > 1.25 + 1e-6)) for s in b["sigma"]]
    assert 8 < sum(raised) < 24  # about half
    assert torch.all(b["sigma"] >= 1.25 - 1e-6) and torch.all(b["sigma"] <= 1.25 + 1.5 + 1e-6)
    plain = make_batch(PairSet.open(pairs, "train", maps), dataclasses.replace(config, map_over=0.0), 0)
    assert torch.all(plain["sigma"] == 1.25)
    with pytest.raises(InputError, match="--map-over must be >= 0"):
        _config(pairs, map_over=-0.5)


def test_masked_l1_ignores_unlabelled_pixels():
    pred, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., :2, :] = 1
    target[..., 2:, :] = 100.0  # unlabelled: any error there is ignored
    assert masked_l1(pred, target, valid).item() == pytest.approx(1.0)


def test_crop_psnr_loss_averages_each_crops_psnr():
    target = torch.zeros(3, 3, 4, 4)
    pred = torch.zeros(3, 3, 4, 4)
    pred[0] += 0.1  # MSE 1e-2: 20 dB (less the floor)
    pred[1] += 0.01  # MSE 1e-4: 40 dB
    pred[2] += 0.5  # no labelled pixel: left out
    valid = torch.ones(3, 1, 4, 4)
    valid[2] = 0
    valid[1, ..., 2:, :] = 0
    pred[1, ..., 2:, :] = 9.0  # unlabelled: ignored
    expected = -np.mean([-10 * np.log10(1e-2 + PSNR_MSE_FLOOR), -10 * np.log10(1e-4 + PSNR_MSE_FLOOR)])
    assert crop_psnr_loss(pred, target, valid).item() == pytest.approx(expected, rel=1e-5)
    # a pixel's gradient is its error / (its crop's MSE x the crop's labelled values): the
    # 40-dB crop (error 0.01, 24 values) pulls each pixel ~18x harder than the 20-dB one (0.1, 48)
    pred.requires_grad_(True)
    crop_psnr_loss(pred, target, valid).backward()
    g0, g1 = pred.grad[0, 0, 0, 0].item(), pred.grad[1, 0, 0, 0].item()
    ratio = (1e-2 + PSNR_MSE_FLOOR) / (1e-4 + PSNR_MSE_FLOOR) * (0.01 / 0.1) * (48 / 24)
    assert g1 / g0 == pytest.approx(ratio, rel=1e-4) and 18 < ratio < 20
    assert pred.grad[2].abs().max() == 0 and pred.grad[1, ..., 2:, :].abs().max() == 0
    assert crop_psnr_loss(pred[2:], target[2:], valid[2:]).item() == 0.0
    with pytest.raises(InputError, match="--loss must be one of l1, psnr, got 'l2'"):
        _config(Path("."), loss="l2")


def test_degrade_leaves_a_share_of_the_inputs_clean():
    rgb = np.random.default_rng(1).random((32, 32, 3), dtype=np.float32)
    rounded = np.round(rgb * 255) / 255
    clean = _config(Path("."), clean_prob=1.0, noise_max=0.05, jpeg_prob=1.0)
    np.testing.assert_allclose(degrade(rgb, np.random.default_rng(0), clean), rounded, atol=1e-7)
    dirty = dataclasses.replace(clean, clean_prob=0.0)
    assert np.abs(degrade(rgb, np.random.default_rng(0), dirty) - rounded).mean() > 0.01
    # a share: about that many of 400 inputs come back only rounded
    mixed = dataclasses.replace(clean, clean_prob=0.3)
    rng = np.random.default_rng(2)
    share = np.mean([np.abs(degrade(rgb[:8, :8], rng, mixed) - rounded[:8, :8]).max() < 1e-6 for _ in range(400)])
    assert 0.24 < share < 0.36, share
    with pytest.raises(InputError, match="--clean-prob must be in"):
        _config(Path("."), clean_prob=1.5)


def test_learning_rate_warms_up_then_anneals():
    config = _config(Path("."), steps=100, warmup=10, lr=1e-3, lr_final=0.1)
    lrs = [learning_rate(config, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_a_few_steps_lower_the_loss(pairs, tmp_path):
    # clean inputs: the degradations would hide a small gain behind their noise
    config = _config(pairs, steps=80, batch=4, lr=3e-3, warmup=2, log_every=20, val_every=80, ckpt_every=80,
                     noise_max=0.0, jpeg_prob=0.0)
    torch.manual_seed(0)
    train = PairSet.open(pairs, "train")
    fixed = make_batch(train, config, 10_000)  # a batch the run never trains on

    def loss_of(model):
        with torch.no_grad():
            return masked_l1(model(fixed["input"], fixed["sigma"]), fixed["target"], fixed["valid"]).item()

    before = loss_of(SFTDeblurNet(TINY))  # the untrained network: the input's own error
    result = train_sft(config, tmp_path / "run", device="cpu")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    model = SFTDeblurNet(TINY)
    model.load_state_dict(ckpt["model"])
    after = loss_of(model.eval())
    assert after < 0.96 * before, (before, after)
    print(f"L1 on an unseen batch: {before:.4f} untrained, {after:.4f} after 80 steps")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [20, 40, 60, 80]
    assert result.val["val_images"] == 1 and np.isfinite(result.val["val_psnr_gain"])


def test_resume_reproduces_the_uninterrupted_run(pairs, tmp_path):
    config = _config(pairs, steps=4)
    train_sft(config, tmp_path / "once", device="cpu")
    train_sft(dataclasses.replace(config, steps=2), tmp_path / "twice", device="cpu")
    train_sft(config, tmp_path / "twice", resume=True, device="cpu")
    a = torch.load(tmp_path / "once" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "twice" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "twice" / "metrics.jsonl").read_text().splitlines()
             if "loss" in line]
    assert steps == [2, 4]
    with pytest.raises(InputError, match="holds a run already"):
        train_sft(config, tmp_path / "once", device="cpu")


def test_dataset_without_sharp_photos_is_a_clear_error(tmp_path):
    from defocus_cli.pipelines.train_data import write_toy_dataset

    write_toy_dataset(tmp_path / "toy", n_train=2, n_val=1)
    with pytest.raises(InputError, match="no sharp/ folder"):
        PairSet.open(tmp_path / "toy", "train")


# ------------------------------------------------------------------------------------------
# export and loading


def test_export_load_roundtrip_checks_sha256(pairs, tmp_path):
    train_sft(_config(pairs, steps=2), tmp_path / "run", device="cpu")
    pt = tmp_path / "w" / "sft-deblur.pt"
    meta = export_sft_run(tmp_path / "run", pt)
    assert meta["architecture"] == "sft-deblur" and meta["sha256"] == registry.sha256_file(pt)
    assert meta["config"] == TINY.to_dict() and meta["steps"] == 2
    state = torch.load(pt, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())

    network = load_deblur_network(pt, device="cpu")
    assert network.describe()["sha256"] == meta["sha256"] and network.describe()["precision"] == "fp32"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    full = SFTDeblurNet(TINY).eval()
    full.load_state_dict(ckpt["model"])
    x, s = torch.rand(1, 3, 24, 24), torch.rand(1, 1, 24, 24) * 4
    with torch.no_grad():
        torch.testing.assert_close(network.model(x, s), full(x, s), atol=2e-3, rtol=0)  # fp16 weights

    with pytest.raises(WeightsError, match="'sft-deblur' is not 'dmenet-b'"):
        registry.load_model(pt)  # the estimator's loader refuses a deblurring network
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_deblur_network(pt, device="cpu")


def test_estimator_weights_are_not_a_deblurring_network(tiny_weights):
    with pytest.raises(WeightsError, match="'dmenet-b' is not 'sft-deblur' \\(a defocus map estimator"):
        load_deblur_network(tiny_weights, device="cpu")


def test_shipped_network_sharpens_a_known_blur(monkeypatch):
    monkeypatch.delenv("DEFOCUS_WEIGHTS_DIR", raising=False)
    if not (registry.weights_dir() / registry.REGISTRY[registry.DEBLUR_MODEL]).is_file():
        pytest.skip("no shipped sft-deblur weights")
    network = load_deblur_network(registry.DEBLUR_MODEL, device="cpu")
    assert network.meta["sha256"] == registry.sha256_file(registry.weights_dir() / "sft-deblur.pt")
    rng = np.random.default_rng(0)
    sharp = cv2.resize(rng.random((16, 16, 3), dtype=np.float32), (128, 128), interpolation=cv2.INTER_NEAREST)
    blurred = (np.round(cv2.GaussianBlur(sharp, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT) * 255) / 255)
    restored = network.run(blurred.astype(np.float32), np.full((128, 128), 2.0, np.float32))

    def psnr(a):
        return 10 * np.log10(1 / np.mean((a - sharp) ** 2))

    assert psnr(restored) > psnr(blurred) + 0.5  # measured +1.44 dB (17.56 -> 19.00)


def test_a_network_trained_on_an_estimators_maps_takes_them_without_margin(pairs, tmp_path):
    """Stage 2 records whose maps it learnt (``maps_estimator``, from the maps' sidecars); the
    CLI then gives that estimator's maps no margin, other estimators' maps their own margin."""
    import json

    from defocus_cli.pipelines.deblur import DeblurConfig, estimated_map_margin
    from defocus_cli.pipelines.train_sft import maps_estimator
    from defocus_cli.photos import deblur_network_pixels

    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(8):
        np.save(maps / f"pair_{i:02d}.defocus.npy", np.full((48, 48), 1.25, np.float32))
        (maps / f"pair_{i:02d}.defocus.json").write_text(json.dumps({"model": {"name": "fused"}}))
    assert maps_estimator(maps) == "fused"
    train_sft(_config(pairs, steps=2, maps=str(maps), maps_prob=0.5), tmp_path / "run", device="cpu")
    meta = export_sft_run(tmp_path / "run", tmp_path / "net.pt")
    assert meta["maps_estimator"] == "fused"
    network = load_deblur_network(tmp_path / "net.pt", device="cpu")
    assert network.conditioned_on == "fused" and network.describe()["conditioned_on"] == "fused"
    rgb, sigma = np.full((16, 16, 3), 0.5, np.float32), np.full((16, 16), 2.0, np.float32)
    for name, expected in (("fused", 0.0), ("dmenet-lite", estimated_map_margin("dmenet-lite"))):
        _, used = deblur_network_pixels(rgb, sigma, {"source": "estimated", "model": {"name": name}},
                                        network, DeblurConfig())
        assert used["margin_px"] == expected
    _, used = deblur_network_pixels(rgb, sigma, {"source": "estimated", "model": {"name": "fused"}},
                                    network, DeblurConfig(), margin=0.3)
    assert used["margin_px"] == 0.3
    (maps / "pair_00.defocus.json").write_text(json.dumps({"model": {"name": "edge"}}))
    assert maps_estimator(maps) is None  # mixed estimators: no claim


def test_sharp_threshold_depends_on_where_the_map_came_from():
    """Exact maps (none an estimator made) keep the input up to 0.25 px, estimated maps up to
    DeblurConfig.sharp_sigma (0.5), a given ``sharp`` wins; the blend is linear up to twice it."""
    from defocus_cli.pipelines.deblur import DeblurConfig
    from defocus_cli.photos import EXACT_MAP_SHARP_SIGMA, deblur_network_pixels

    class AddTenth:  # stands in for a DeblurNetwork: its output is the input + 0.1
        config, conditioned_on = TINY, "fused"

        def run(self, rgb, sigma):
            return rgb + 0.1

        def describe(self):
            return {"name": "stub"}

    sigma = np.tile(np.array([0.0, 0.2, 0.3, 0.4, 0.6, 1.2], np.float32), (2, 1))
    rgb = np.full(sigma.shape + (3,), 0.5, np.float32)
    cases = [({"source": "true"}, None, EXACT_MAP_SHARP_SIGMA, [0, 0, 0.2, 0.6, 1, 1]),
             ({"source": "estimated", "model": {"name": "fused"}}, None, 0.5, [0, 0, 0, 0, 0.2, 1]),
             ({"source": "true"}, 0.1, 0.1, [0, 1, 1, 1, 1, 1])]
    for origin, sharp, threshold, weight in cases:
        out, used = deblur_network_pixels(rgb, sigma, origin, AddTenth(), DeblurConfig(), sharp=sharp)
        assert used["sharp_sigma_px"] == threshold and used["margin_px"] == 0.0
        np.testing.assert_allclose(out[0, :, 0] - 0.5, 0.1 * np.array(weight), atol=1e-6)


def test_a_photo_the_estimated_map_calls_in_focus_is_returned_as_it_is():
    """Estimated maps at most 1 px at their 99th percentile leave the photo unchanged and the
    network unrun; 2 % of the pixels above it, or an exact map, or ``in_focus=0``, deblur; a
    given ``in_focus`` applies to any map; the margin comes off first."""
    from defocus_cli.pipelines.deblur import DeblurConfig
    from defocus_cli.photos import IN_FOCUS_SIGMA, deblur_network_pixels

    class AddTenth:  # the network stand-in of the test above, counting its runs
        config, conditioned_on, runs = TINY, "fused", 0

        def run(self, rgb, sigma):
            AddTenth.runs += 1
            return rgb + 0.1

        def describe(self):
            return {"name": "stub"}

    estimated, exact = {"source": "estimated", "model": {"name": "fused"}}, {"source": "true"}
    rgb = np.random.default_rng(0).random((20, 50, 3), dtype=np.float32) * 0.8
    flat = np.full((20, 50), 0.9, np.float32)  # in focus by the rule, deblurred above 0.5 px
    patch = flat.copy()
    patch[:, :1] = 3.0  # 2 % of the pixels at 3 px: the 99th percentile is 3 px
    cases = [(flat, estimated, {}, True), (patch, estimated, {}, False), (flat, exact, {}, False),
             (flat, estimated, {"in_focus": 0.0}, False), (flat, exact, {"in_focus": 1.0}, True),
             (flat, estimated, {"in_focus": 0.8}, False), (flat + 0.5, estimated, {"margin": 0.6}, True)]
    for sigma, origin, kw, kept in cases:
        runs = AddTenth.runs
        out, used = deblur_network_pixels(rgb, sigma, origin, AddTenth(), DeblurConfig(), **kw)
        assert used["in_focus"] is kept, (origin, kw)
        assert used["in_focus_sigma_px"] == kw.get("in_focus", IN_FOCUS_SIGMA if origin is estimated else 0.0)
        assert used["map_p99_px"] == pytest.approx(np.percentile(sigma, 99) - kw.get("margin", 0.0), abs=1e-4)
        assert out.dtype == np.float32 and out.shape == rgb.shape
        if kept:
            assert AddTenth.runs == runs and np.array_equal(out, rgb) and out is not rgb
        else:  # 0.9 px: 80 % of the network's change at threshold 0.5 (estimated), all at 0.25
            assert AddTenth.runs == runs + 1
            change = 0.08 if origin is estimated else 0.1
            np.testing.assert_allclose(out[:, 10:] - rgb[:, 10:], change, atol=1e-6)


def test_self_ensemble_maps_each_run_back_to_the_photo():
    """A run that adds a ramp across its input's columns: transformed back, the ramps of the
    flips and quarter turns point in opposite directions in pairs, so every ensemble of 2, 4 or 8
    adds exactly 0.5; an equivariant run comes back unchanged; shapes are not square."""
    from defocus_cli.pipelines.deblur_net import self_ensemble

    rng = np.random.default_rng(0)
    rgb, sigma = rng.random((6, 9, 3), dtype=np.float32), rng.random((6, 9), dtype=np.float32)

    def ramp(x, s):
        assert x.shape[:2] == s.shape
        return x + np.linspace(0, 1, x.shape[1], dtype=np.float32)[None, :, None]

    assert np.allclose(self_ensemble(ramp, rgb, sigma, 1), ramp(rgb, sigma))
    for n in (2, 4, 8):
        assert np.allclose(self_ensemble(ramp, rgb, sigma, n), rgb + 0.5, atol=1e-6), n
        # the map travels with the photo: a run that multiplies them is equivariant
        product = self_ensemble(lambda x, s: x * s[..., None], rgb, sigma, n)
        assert np.allclose(product, rgb * sigma[..., None], atol=1e-6), n
    with pytest.raises(InputError, match="--ensemble must be one of 1, 2, 4, 8, got 3"):
        self_ensemble(ramp, rgb, sigma, 3)
