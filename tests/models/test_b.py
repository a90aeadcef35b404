"""Network B (supplement Table 1): shapes, parameter count, modes, VGG19 key mapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defocus_cli.models.b import (BlurNet, BlurNetConfig, BlurNetOutput, fuse_for_inference, load_vgg19_encoder,
                                  scaled)


def _conv(cin, cout, bias=True):
    return 9 * cin * cout + (cout if bias else 0)


def _table1_params() -> int:
    """Parameter count of Table 1 at full width, computed from the table, not from the code."""
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3 + \
          [(256, 512)] + [(512, 512)] * 7
    n = sum(_conv(a, b) for a, b in vgg)
    assert n == 20_024_384  # torchvision's vgg19().features
    bn = lambda c: 2 * c  # noqa: E731  (scale + shift)
    block = lambda a, b: _conv(a, b, bias=False) + bn(b)  # noqa: E731
    n += block(1024, 256) + 2 * block(256, 256)
    n += block(512, 128) + 2 * block(128, 128)
    n += block(256, 64) + 2 * block(64, 64)
    n += block(128, 64)
    n += 7 * 2 * block(64, 64)
    n += _conv(64, 1)
    for cin, mid in [(512, 256), (256, 128), (128, 64), (64, 32), (64, 32)]:
        n += block(cin, mid) + _conv(mid, 1)
    return n


def test_full_width_parameter_count_matches_table_1():
    model = BlurNet()
    assert sum(p.numel() for p in model.parameters()) == _table1_params()
    assert len([m for m in model.encoder if isinstance(m, nn.Conv2d)]) == 16


@pytest.mark.parametrize("width,ratio", [(0.5, 4), (0.25, 16)])
def test_width_scales_parameters_quadratically(width, ratio):
    full = sum(p.numel() for p in BlurNet().parameters())
    lite = sum(p.numel() for p in BlurNet(BlurNetConfig(width=width)).parameters())
    assert full / lite == pytest.approx(ratio, rel=0.05)
    assert scaled(64, width) == int(64 * width)


@pytest.mark.parametrize("h,w", [(1, 1), (17, 33), (40, 16), (31, 5)])
def test_eval_output_matches_odd_input_sizes(h, w):
    torch.manual_seed(0)
    model = BlurNet(BlurNetConfig(width=0.125)).eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = model(x)
        alone = model(x[1:])
        # the odd size is padded at the bottom and right and cropped back: the top-left of the
        # padded input's map (reflect padding; replicate where the pad exceeds the side)
        ph, pw = -h % 16, -w % 16
        mode = "reflect" if ph < h and pw < w else "replicate"
        padded = model(torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, h, w)
    torch.testing.assert_close(y[1:], alone, atol=1e-5, rtol=0)  # eval: images do not mix
    torch.testing.assert_close(y, padded[..., :h, :w], atol=1e-6, rtol=0)


def test_training_mode_returns_aux_and_features():
    model = BlurNet(BlurNetConfig(width=0.125)).train()
    out = model(torch.rand(2, 3, 32, 48))
    assert isinstance(out, BlurNetOutput)
    assert out.sigma.shape == (2, 1, 32, 48)
    assert [tuple(a.shape[-2:]) for a in out.aux] == [(2, 3), (4, 6), (8, 12), (16, 24), (32, 48)]
    assert out.features.shape == (2, scaled(64, 0.125), 32, 48)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 30, 32))


def test_input_contract_is_checked():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        BlurNet(BlurNetConfig(width=0.125)).eval()(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="width"):
        BlurNetConfig(width=0)


def test_initial_output_is_not_saturated():
    torch.manual_seed(0)
    with torch.no_grad():
        y = BlurNet().eval()(torch.rand(1, 3, 64, 64))
    assert 0.3 < float(y.min()) and float(y.max()) < 0.7


def test_vgg19_state_dict_maps_key_for_key():
    model = BlurNet()
    # a torchvision-style vgg19 "features" state dict built from the VGG19 layer list
    fake = {f"features.{k}": torch.full_like(v, 0.01 * (i + 1))
            for i, (k, v) in enumerate(model.encoder.state_dict().items())}
    assert load_vgg19_encoder(model, fake) == 32
    # conv5_4 sits at torchvision index 34; the first conv at 0
    assert torch.equal(model.encoder[34].weight, fake["features.34.weight"])
    assert torch.equal(model.encoder[0].bias, fake["features.0.bias"])
    del fake["features.0.weight"]
    with pytest.raises(ValueError, match="features.0.weight"):
        load_vgg19_encoder(model, fake)
    with pytest.raises(ValueError, match="full-width"):
        load_vgg19_encoder(BlurNet(BlurNetConfig(width=0.5)), fake)


def test_fused_inference_copy_matches_and_has_no_batchnorm():
    torch.manual_seed(0)
    model = BlurNet(BlurNetConfig(width=0.125)).eval()
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(expected, fused(x), atol=1e-5)
        in_place = fuse_for_inference(model, inplace=True)
        assert in_place is model and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(expected, model(x), atol=1e-5)
