"""Network C: frozen VGG19 to relu4_4; torchvision state-dict loading."""

import pytest
import torch

from defocus_cli.errors import WeightsError
from defocus_cli.models.b import BlurNet, load_vgg19_encoder
from defocus_cli.models.vgg import ContentNet, load_vgg19_state_dict

VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")


def fake_vgg19_state_dict(seed: int = 0) -> dict:
    """Random tensors with torchvision vgg19's feature keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd, idx, cin = {}, 0, 3
    for item in VGG19:
        if item == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(item, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(item)
        idx += 2
        cin = item
    return sd


def test_features_shape_and_frozen():
    c = ContentNet(fake_vgg19_state_dict())
    out = c(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 512, 4, 6)
    assert not any(p.requires_grad for p in c.parameters())
    c.train()
    assert not c.training  # fixed network: stays in eval mode


def test_gradient_flows_to_the_input_map():
    c = ContentNet(fake_vgg19_state_dict())
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    c(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_weights_as_blurnet_encoder_give_same_features():
    sd = fake_vgg19_state_dict()
    b = BlurNet()
    assert load_vgg19_encoder(b, sd) == 32
    c = ContentNet(sd)
    x = torch.rand(1, 1, 16, 16)
    rgb = x.expand(-1, 3, -1, -1)
    norm = (rgb - b._mean) / b._std
    torch.testing.assert_close(c(x), b.encoder[:27](norm))


def test_file_loading_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_vgg19_state_dict(tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="(?s)cannot read VGG19 weights.*pass torchvision.s vgg19 state dict"):
        load_vgg19_state_dict(bad)
    # loading is weights-only: a pickle that would build an arbitrary object is refused
    import datetime

    unsafe = tmp_path / "unsafe.pth"
    torch.save({**fake_vgg19_state_dict(), "made": datetime.date(2020, 1, 1)}, unsafe)
    with pytest.raises(WeightsError, match="unsafe.pth: cannot read VGG19 weights"):
        load_vgg19_state_dict(unsafe)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsError, match="not a torchvision vgg19"):
        load_vgg19_state_dict(wrong)
    good = tmp_path / "vgg19.pth"
    torch.save(fake_vgg19_state_dict(), good)
    assert len(load_vgg19_state_dict(good)) == 32
