"""Training pipeline: B-only runs, checkpoints, resume (tiny synthetic dataset, width 0.25)."""

from __future__ import annotations

import json

import pytest
import torch

from defocus_cli.errors import InputError
from defocus_cli.pipelines.train import CHECKPOINT, METRICS, TrainConfig, load_checkpoint, train
from defocus_cli.pipelines.train_data import write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")




@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=8, n_val=2, size=64, seed=1)


def tiny(toy, **kw) -> TrainConfig:
    base = dict(data=str(toy), nets="B", width=0.25, crop=32, batch=2, steps=4, log_every=1,
                ckpt_every=2, val_max=1)
    base.update(kw)
    return TrainConfig(**base)


def test_b_only_run_writes_checkpoint_metrics_and_config(toy, tmp_path):
    result = train(tiny(toy), tmp_path / "run", device=CPU)
    assert result.step == 4
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 4 and ckpt["D"] is None and ckpt["S"] is None
    records = [json.loads(l) for l in (tmp_path / "run" / METRICS).read_text().splitlines()]
    steps = [r["step"] for r in records if "kind" not in r]
    assert steps == [1, 2, 3, 4]
    assert all(r["L_B"] > 0 for r in records if "L_B" in r)
    assert {"val_mse", "val_mae", "val_mae_px"} <= set(result.val)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["provenance"]["nets_trained"] == "B"
    assert any("randomly" in n for n in result.notes)


def test_refuses_to_overwrite_a_run(toy, tmp_path):
    train(tiny(toy, steps=1), tmp_path / "run", device=CPU)
    with pytest.raises(InputError, match="--resume"):
        train(tiny(toy, steps=1), tmp_path / "run", device=CPU)


def test_resume_after_interruption_matches_uninterrupted_run(toy, tmp_path):
    cfg = tiny(toy, steps=4, ckpt_every=2)
    train(cfg, tmp_path / "full", device=CPU)
    # interrupted after 3 steps: the last checkpoint is step 2, step 3 is redone on resume
    train(cfg, tmp_path / "cut", device=CPU, stop_after=3)
    assert load_checkpoint(tmp_path / "cut")["step"] == 2
    result = train(cfg, tmp_path / "cut", device=CPU, resume=True)
    assert result.step == 4
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a["config"] == b["config"]
    for k in a["B"]:
        torch.testing.assert_close(a["B"][k], b["B"][k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / METRICS).read_text().splitlines()
             if "kind" not in json.loads(l)]
    assert steps == [1, 2, 3, 4]


def test_export_round_trips_through_the_registry(toy, tmp_path):
    from defocus_cli.models.registry import load_model
    from defocus_cli.pipelines.train import export_run

    train(tiny(toy, steps=2), tmp_path / "run", device=CPU,
          provenance={"command": "defocus train ...", "git_revision": "abc123"})
    meta = export_run(tmp_path / "run", tmp_path / "w" / "toy.pt", command="defocus train export", git_revision="abc",
                      root=tmp_path)
    model, loaded = load_model(tmp_path / "w" / "toy.pt", CPU)
    assert loaded["architecture"] == "dmenet-b" and loaded["config"]["width"] == 0.25
    assert loaded["sha256"] == meta["sha256"]
    assert loaded["train_command"] == "defocus train ..." and loaded["val_metrics"]["val_images"] == 1
    assert "L_C dropped" in loaded["vgg19_replacement"] and "Kaiming" in loaded["encoder_init"]
    written = (tmp_path / "w" / "toy.json").read_text()
    assert str(tmp_path) not in written  # no path of the machine that built it, relative to the root
    ckpt = load_checkpoint(tmp_path / "run")
    for k, v in model.state_dict().items():  # fp16 storage: equal to half precision
        ref = ckpt["B"][k]
        torch.testing.assert_close(v, ref.half().float() if ref.is_floating_point() else ref)
    # --init continues from the shipped weights with a fresh optimiser
    result = train(tiny(toy, steps=1, init_weights=str(tmp_path / "w" / "toy.pt")), tmp_path / "cont", device=CPU)
    assert result.step == 1
    assert "toy.pt" in json.loads((tmp_path / "cont" / "config.json").read_text())["provenance"]["encoder_init"]
    assert not any("random" in n for n in result.notes)  # B starts from the file, not at random
    with pytest.raises(InputError, match="--width 0.25"):
        train(tiny(toy, steps=1, width=0.5, init_weights=str(tmp_path / "w" / "toy.pt")), tmp_path / "bad", device=CPU)


def test_portable_paths_write_paths_relative_to_the_repository(tmp_path):
    from defocus_cli.pipelines.train.export import portable_paths

    repo = tmp_path / "defocus"
    meta = {"data": f"{repo}/datasets/mix", "cmd": f"defocus train --data {repo}/datasets/mix --real {tmp_path}/shared/x",
            "list": [str(repo)], "n": 3}
    assert portable_paths(meta, repo) == {"data": "datasets/mix", "cmd": "defocus train --data datasets/mix --real ../shared/x",
                                          "list": ["."], "n": 3}


def test_nan_loss_stops_the_run_with_a_clear_message(toy, tmp_path):
    from defocus_cli.errors import ProcessingError

    # lr = inf: step 1's loss is finite, its update makes the weights inf/NaN, step 2's loss NaN
    with pytest.raises(ProcessingError, match="between steps 2 and 2: a loss is NaN or inf"):
        train(tiny(toy, lr=float("inf"), steps=3), tmp_path / "run", device=CPU)
    # the losses are read once per record: the error names the steps since the last one
    with pytest.raises(ProcessingError, match="between steps 1 and 3: a loss is NaN or inf.*lower --lr"):
        train(tiny(toy, lr=float("inf"), steps=3, log_every=10, ckpt_every=10), tmp_path / "run2", device=CPU)


def test_a_diverged_run_writes_no_checkpoint(toy, tmp_path):
    """The checkpoint at step 2 (not a log step) checks the losses first: the NaN weights step 1's
    update wrote never reach the disk."""
    from defocus_cli.errors import ProcessingError

    with pytest.raises(ProcessingError, match="between steps 1 and 2"):
        train(tiny(toy, lr=float("inf"), steps=4, log_every=4, ckpt_every=2), tmp_path / "run", device=CPU)
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    assert not (tmp_path / "run" / METRICS).exists()


def test_resume_drops_metrics_written_after_the_checkpoint(toy, tmp_path):
    """A killed run's records past its last checkpoint go (they are redone), a line cut short too."""
    run = tmp_path / "run"
    train(tiny(toy, steps=4, ckpt_every=2), run, device=CPU, stop_after=3)
    with open(run / METRICS, "a") as f:
        f.write('{"step": 4, "L_B": 0.')  # the kill came mid-write
    train(tiny(toy, steps=4, ckpt_every=2), run, device=CPU, resume=True)
    lines = (run / METRICS).read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines if "kind" not in json.loads(l)] == [1, 2, 3, 4]


def _bn_stats(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_frozen_batchnorm_trains_with_fixed_statistics(toy, tmp_path):
    """--bn frozen: statistics re-estimated once, then unchanged by training; batch: they move."""
    frozen = train(tiny(toy, bn="frozen", steps=4, ckpt_every=2), tmp_path / "f", device=CPU)
    assert any("BatchNorm statistics re-estimated on" in n for n in frozen.notes)
    after = load_checkpoint(tmp_path / "f")
    resumed_from_2 = tiny(toy, bn="frozen", steps=2, ckpt_every=2)
    train(resumed_from_2, tmp_path / "f2", device=CPU)
    at_2 = load_checkpoint(tmp_path / "f2")
    s4, s2 = _bn_stats(after["B"]), _bn_stats(at_2["B"])
    assert s4 and all(torch.equal(s4[k], s2[k]) for k in s4)
    # the weights did train meanwhile
    w = "head.weight"
    assert not torch.equal(after["B"][w], at_2["B"][w])
    train(tiny(toy, steps=2, ckpt_every=2), tmp_path / "b2", device=CPU)
    train(tiny(toy, steps=4, ckpt_every=2), tmp_path / "b4", device=CPU)
    b2, b4 = _bn_stats(load_checkpoint(tmp_path / "b2")["B"]), _bn_stats(load_checkpoint(tmp_path / "b4")["B"])
    assert any(not torch.equal(b2[k], b4[k]) for k in b2)


def test_recalibrate_batchnorm_averages_whole_image_statistics(toy):
    from defocus_cli.models.b import BlurNet, BlurNetConfig
    from defocus_cli.pipelines.train import recalibrate_batchnorm
    from defocus_cli.pipelines.train_data import SynthSet

    torch.manual_seed(0)
    b = BlurNet(BlurNetConfig(width=0.25))
    images = SynthSet.open(toy, "train")
    bn = b.up1.convs[0][1]
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].mean(dim=(0, 2, 3))))
    b.eval()
    used = recalibrate_batchnorm(b, images, 3, CPU)
    hook.remove()
    assert used == 3 and len(seen) == 3
    torch.testing.assert_close(bn.running_mean, torch.stack(seen).mean(0), rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.1 and not b.training  # restored
    with pytest.raises(InputError, match="--bn"):
        tiny(toy, bn="instance")


def test_weight_average_follows_the_decay_formula():
    from defocus_cli.pipelines.train.step import WeightAverage

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    avg = WeightAverage(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(3.0)
    avg.update(net)  # first update: d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(avg.module[0].weight, w0 + 0.9)
    torch.testing.assert_close(avg.module[1].running_mean, torch.full((1,), 3.0))  # buffers copied
    for _ in range(200):
        avg.update(net)  # d reaches 0.9: the average converges to the fixed weights
    torch.testing.assert_close(avg.module[0].weight, w0 + 1.0, atol=1e-6, rtol=0)
    assert avg.updates == 201 and not any(p.requires_grad for p in avg.module.parameters())


def test_ema_run_validates_and_exports_the_average_and_resumes_exactly(toy, tmp_path):
    from defocus_cli.models.registry import load_model
    from defocus_cli.pipelines.train import export_run

    cfg = tiny(toy, steps=4, ckpt_every=2, ema=0.5)
    result = train(cfg, tmp_path / "full", device=CPU)
    assert {"val_mae_px", "raw_val_mae_px"} <= set(result.val)
    ckpt = load_checkpoint(tmp_path / "full")
    assert ckpt["B_ema"]["updates"] == 4
    diff = max((ckpt["B_ema"]["weights"][k] - ckpt["B"][k]).abs().max().item()
               for k in ckpt["B"] if ckpt["B"][k].is_floating_point())
    assert diff > 0  # the average lags the last weights
    meta = export_run(tmp_path / "full", tmp_path / "w.pt", root=tmp_path)
    assert "moving average" in meta["weights"] and "0.5" in meta["weights"]
    model, _ = load_model(tmp_path / "w.pt", CPU)
    for k, v in model.state_dict().items():
        ref = ckpt["B_ema"]["weights"][k]
        torch.testing.assert_close(v, ref.half().float() if ref.is_floating_point() else ref)
    last = export_run(tmp_path / "full", tmp_path / "last.pt", root=tmp_path, average=False)
    assert last["weights"] == "the last step's weights"
    model, _ = load_model(tmp_path / "last.pt", CPU)
    for k, v in model.state_dict().items():
        ref = ckpt["B"][k]
        torch.testing.assert_close(v, ref.half().float() if ref.is_floating_point() else ref)
    # an interrupted run resumes its average too
    train(cfg, tmp_path / "cut", device=CPU, stop_after=3)
    train(cfg, tmp_path / "cut", device=CPU, resume=True)
    cut = load_checkpoint(tmp_path / "cut")
    assert cut["B_ema"]["updates"] == 4
    for k, v in ckpt["B_ema"]["weights"].items():
        torch.testing.assert_close(cut["B_ema"]["weights"][k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="--ema"):
        tiny(toy, ema=1.0)
