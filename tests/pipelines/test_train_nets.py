"""The full DMENet objective (B + D + C + S): losses, alternating updates, data fallbacks, DDP,
precision, and a step that never waits for the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import defocus_cli
from defocus_cli import device as dev
from defocus_cli.errors import InputError
from defocus_cli.pipelines.train import (
    Dist,
    TrainConfig,
    Trainer,
    launch,
    load_checkpoint,
    prepare,
    train,
    training_dtype,
)
from defocus_cli.pipelines.train_data import BatchPlan, StepBatches, write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")


def fake_vgg19_file(path):
    """torchvision-vgg19-shaped random weights (no ImageNet weights exist on this machine)."""
    g = torch.Generator().manual_seed(0)
    sd, idx, cin = {}, 0, 3
    for item in VGG19:
        if item == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(item, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(item)
        idx += 2
        cin = item
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ds = write_toy_dataset(root / "toy", n_train=6, n_val=1, size=64, seed=2)
    vgg = fake_vgg19_file(root / "vgg19.pth")
    return ds, vgg


def config(toy, **kw) -> TrainConfig:
    ds, vgg = toy
    # the toy set doubles as D_R (its photos) and D_B (a dataset folder with image/ + mask/)
    base = dict(data=str(ds), real=str(ds / "image"), real_masks=str(ds), vgg_weights=str(vgg),
                nets="BDCS", width=0.25, crop=32, batch=2, steps=2, log_every=1, ckpt_every=2, val_max=1)
    base.update(kw)
    return TrainConfig(**base)


def make_trainer(cfg):
    prep = prepare(cfg)
    trainer = Trainer(cfg, prep.active, 10, CPU, Dist(), c=prep.content)
    plan = BatchPlan(cfg.batch, cfg.crop, cfg.seed, 0, 1, cfg.sigma_max)
    batches = StepBatches(prep.train, prep.real, prep.masked, plan, prep.real_maps)
    return prep, trainer, batches


def test_every_loss_is_finite_with_the_right_sign(toy):
    prep, trainer, batches = make_trainer(config(toy))
    assert prep.active == "BDCS" and not any("off" in n for n in prep.notes)
    batch = batches[0]
    assert batch["synth"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    terms = {k: float(v) for k, v in trainer.step(batch, 0).items()}
    for key in ("L_B", "L_C", "L_S", "L_adv_R", "L_adv_B", "L_g", "L_D_synth", "L_D_real", "L_D_masked", "L_d"):
        assert key in terms, key
        assert terms[key] == pytest.approx(terms[key]) and terms[key] >= 0, (key, terms[key])
    assert terms["L_B"] > 0 and terms["L_adv_R"] > 0 and terms["L_d"] > 0
    assert 0 <= terms["L_S"] <= 1


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_d_and_g_change_only_in_their_own_steps(toy):
    _, trainer, batches = make_trainer(config(toy))
    batch = trainer._to_device(batches[0])
    b0, s0, d0 = snapshot(trainer.b), snapshot(trainer.s), snapshot(trainer.d)
    _, feats = trainer.g_step(batch)
    assert changed(b0, trainer.b) and changed(s0, trainer.s)
    assert not changed(d0, trainer.d)  # not even D's BN running statistics
    assert all(p.grad is None for p in trainer.d.parameters())
    b1, s1, d1 = snapshot(trainer.b), snapshot(trainer.s), snapshot(trainer.d)
    trainer.d_step(feats)
    assert changed(d1, trainer.d)
    assert not changed(b1, trainer.b) and not changed(s1, trainer.s)


def test_a_few_steps_lower_l_b(toy):
    _, trainer, batches = make_trainer(config(toy, nets="B", lr=1e-3))
    batch = trainer._to_device(batches[0])
    losses = [float(trainer.g_step(batch)[0]["L_B"]) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_missing_data_and_weights_turn_networks_off_and_say_so(toy):
    ds, _ = toy
    prep = prepare(TrainConfig(data=str(ds), nets="BDCS"))
    assert prep.active == "B"
    text = " ".join(prep.notes)
    assert "network D" in text and "network C" in text and "network S" in text
    assert "Kaiming" in text
    assert prep.provenance["content_network"].startswith("none")
    # real photos without masks: D trains, S cannot
    prep = prepare(TrainConfig(data=str(ds), real=str(ds / "image"), nets="BDS"))
    assert prep.active == "BD"


def test_exclusion_list_holds_scenes_out_of_the_real_sets(toy, tmp_path):
    ds, _ = toy
    excl = tmp_path / "eval_scenes.txt"
    excl.write_text("toy_0000\ntoy_0001  # used by eval\n")
    prep = prepare(TrainConfig(data=str(ds), real=str(ds / "image"), real_masks=str(ds),
                               real_exclude=str(excl), nets="BDS"))
    names = {p.stem for p in prep.real} | {p.stem for p, _ in prep.masked}
    assert "toy_0000" not in names and "toy_0001" not in names and "toy_0002" in names
    assert "toy_0006" not in {p.stem for p, _ in prep.masked}  # D_B keeps the train split only


def test_two_process_gloo_ddp_run_keeps_replicas_identical(toy, tmp_path):
    result = launch(config(toy, steps=2), tmp_path / "ddp", cpu_procs=2)
    assert result.step == 2
    replicas = json.loads((tmp_path / "ddp" / "replicas.json").read_text())
    assert replicas["world"] == 2 and replicas["identical"]
    ckpt = load_checkpoint(tmp_path / "ddp")
    assert ckpt["D"] is not None and ckpt["S"] is not None
    assert json.loads(ckpt["info"])["provenance"]["nets_trained"] == "BDCS"


def test_pretrain_steps_train_b_alone_first(toy):
    _, trainer, batches = make_trainer(config(toy, pretrain_steps=1))
    d0 = snapshot(trainer.d)
    first = trainer.step(batches[0], 0)
    assert set(k for k in first if k.startswith("L_")) == {"L_B", "L_g"}
    assert not changed(d0, trainer.d)
    second = trainer.step(batches[1], 1)
    assert {"L_C", "L_S", "L_adv_R", "L_d"} <= set(second)


def test_learning_rate_decays_by_0_8_every_decay_period(toy):
    cfg = config(toy, nets="BD", decay_every_epochs=2)
    prep = prepare(cfg)
    trainer = Trainer(cfg, prep.active, 1, CPU, Dist())  # 1 step per epoch
    batches = StepBatches(prep.train, prep.real, prep.masked, BatchPlan(2, 32, 0, 0, 1, 7.0))
    lrs = [trainer.step(batches[i], i)["lr"] for i in range(5)]
    assert lrs == pytest.approx([1e-4, 1e-4, 8e-5, 8e-5, 6.4e-5])
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(6.4e-5)


def test_a_synth_manifest_holds_its_non_train_scenes_out_of_d_r(tmp_path):
    from defocus_cli.pipelines.train_data import read_exclusions, real_photos

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(e) for e in [
        {"name": "dfd-indoor-indoor_001-00", "split": "train", "scene": "dfd-indoor/indoor_001"},
        {"name": "dfd-indoor-indoor_002-00", "split": "test", "scene": "dfd-indoor/indoor_002"},
        {"name": "proc-7", "split": "val"},
    ]))
    photos = tmp_path / "real"
    photos.mkdir()
    for n in ("indoor_001", "indoor_002", "indoor_003"):
        (photos / f"{n}.jpg").write_bytes(b"x")
    excluded = read_exclusions(manifest)
    assert {"indoor_002", "proc-7"} <= excluded and "indoor_001" not in excluded
    assert [p.stem for p in real_photos(photos, excluded)] == ["indoor_001", "indoor_003"]


def test_training_precision_follows_device_py(toy, monkeypatch):
    """auto: fp32 on a CPU without AMX, bf16 with it (and the forward passes then run in bf16);
    on CUDA bf16 where supported, else fp32 rather than device.py's fp16 (no loss scaling)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert training_dtype("auto", cpu) is None
    assert Trainer(config(toy, nets="B"), "B", 10, cpu, Dist()).dtype is None
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert training_dtype("auto", cpu) is torch.bfloat16
    assert training_dtype("fp32", cpu) is None and training_dtype("bf16", cpu) is torch.bfloat16
    _, trainer, batches = make_trainer(config(toy, nets="B"))
    assert trainer.dtype is torch.bfloat16
    seen = []
    trainer.b.head.register_forward_hook(lambda m, inp, out: seen.append(out.dtype))
    trainer.step(batches[0], 0)
    assert seen == [torch.bfloat16]
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.resolve_precision("auto", cuda) is torch.float16
    assert training_dtype("auto", cuda) is None
    with pytest.raises(InputError, match="--precision"):
        config(toy, precision="fp16")


#: Tensor methods that read a value back to the host (on a GPU: wait for every queued kernel)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__format__")
PACKAGE = str(Path(defocus_cli.__file__).parent)


@pytest.fixture
def host_reads(monkeypatch):
    """The project's own reads of tensor values to the host, as (method, file, line).

    Only calls made from defocus_cli's code count: torch's Adam reads its step counter, a CPU
    tensor, with .item(), which waits for no device.
    """
    import sys

    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(PACKAGE):
                calls.append((_name, Path(frame.f_code.co_filename).name, frame.f_lineno))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_steps_between_log_records_never_read_the_device(toy, tmp_path, host_reads):
    # every network and both stages (B-only pre-training, then the full objective)
    quiet = config(toy, pretrain_steps=1, steps=50, log_every=50, ckpt_every=50, val_every=50)
    train(quiet, tmp_path / "quiet", device=CPU, stop_after=5)
    assert host_reads == []
    # a record every 2 of 6 steps: one read per record, nothing else (no validation here)
    loud = config(toy, nets="B", steps=6, log_every=2, ckpt_every=100, val_max=0)
    train(loud, tmp_path / "loud", device=CPU)
    assert len(host_reads) == 3, host_reads
    records = [json.loads(l) for l in (tmp_path / "loud" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["L_B"] > 0 for r in records)
