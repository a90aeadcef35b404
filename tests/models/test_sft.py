"""SFTDeblurNet: shapes, identity at initialisation, map conditioning, config checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defocus_cli.models.sft import SFTDeblurNet, SFTLayer, SFTNetConfig, parameter_count

TINY = SFTNetConfig(channels=8, cond_channels=8, blocks=3, levels=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_looking(config: SFTNetConfig = TINY, seed: int = 0) -> SFTDeblurNet:
    """A network whose zero-initialised output convolution is randomised, so its residual is not 0."""
    torch.manual_seed(seed)
    net = SFTDeblurNet(config).eval()
    nn.init.normal_(net.tail.weight, std=0.05)
    return net


@pytest.mark.parametrize("size", [(32, 32), (37, 50), (5, 9)])
def test_output_shape_and_dtype_follow_the_input(size):
    net = _trained_looking()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = net(x, torch.full((2, 1, *size), 2.0))
    assert y.shape == x.shape and y.dtype == torch.float32


def test_untrained_network_returns_its_input_exactly():
    torch.manual_seed(0)
    net = SFTDeblurNet(SFTNetConfig()).eval()
    x, s = torch.rand(1, 3, 40, 56), torch.rand(1, 1, 40, 56) * 7
    with torch.no_grad():
        assert torch.equal(net(x, s), x)


def test_the_map_modulates_the_output():
    net = _trained_looking()
    for layer in net.modules():  # a modulation as strong as a trained one (default init is weak)
        if isinstance(layer, SFTLayer):
            nn.init.normal_(layer.gamma[2].weight, std=0.5)
            nn.init.normal_(layer.beta[2].weight, std=0.5)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = net(x, torch.full((1, 1, 32, 32), 1.0))
        b = net(x, torch.full((1, 1, 32, 32), 4.0))
        c = net(x, torch.full((1, 1, 32, 32), 1.0))
    assert torch.equal(a, c)
    # the residual itself is small at random init; the map moves a sizeable part of it
    assert (a - b).abs().mean() > 0.2 * (a - x).abs().mean()


def test_sft_layer_is_the_affine_transform_of_eq2():
    layer = SFTLayer(channels=4, cond_channels=3)
    f, cond = torch.randn(1, 4, 6, 6), torch.randn(1, 3, 6, 6)
    gamma, beta = layer.gamma(cond), layer.beta(cond)
    assert torch.allclose(layer(f, cond), (1 + gamma) * f + beta)
    # per pixel: a change of the condition at one pixel changes the output at that pixel only
    cond2 = cond.clone()
    cond2[..., 2, 3] += 1.0
    changed = (layer(f, cond2) - layer(f, cond)).abs().sum(1)[0] > 0
    assert changed[2, 3] and changed.sum() == 1


def test_one_step_reaches_every_parameter_group():
    net = SFTDeblurNet(TINY)
    x, s = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16) * 5
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves only the zero-initialised tail
        opt.zero_grad()
        (net(x, s) - torch.rand_like(x)).abs().mean().backward()
        opt.step()
    grads = {name.split(".")[0]: p.grad for name, p in net.named_parameters()}
    for part in ("condition", "head", "down_blocks", "bottom", "up_blocks", "tail"):
        assert grads[part] is not None and grads[part].abs().sum() > 0, part


def test_default_network_is_small():
    assert 3e5 < parameter_count(SFTDeblurNet(SFTNetConfig())) < 1e6  # measured 529 k
    assert SFTNetConfig().size_multiple == 8


@pytest.mark.parametrize("kw, match", [
    (dict(blocks=4, levels=2), r"blocks must be >= 2 \* levels \+ 1 = 5"),
    (dict(input="depth"), "input must be one of photo, solver"),
    (dict(sigma_max=0), "sigma_max must be > 0"),
    (dict(shuffle=0), "shuffle must be >= 1"),
])
def test_config_errors_say_what_is_wrong(kw, match):
    with pytest.raises(ValueError, match=match):
        SFTNetConfig(**kw)


def test_input_shapes_are_checked():
    net = SFTDeblurNet(TINY)
    with pytest.raises(ValueError, match=r"sigma must be \(B, 1, H, W\)"):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match=r"image must be \(B, 3, H, W\)"):
        net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
