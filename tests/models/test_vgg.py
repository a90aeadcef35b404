"""Network C: frozen VGG19 to relu4_4 (or relu3_1); torchvision and "normalised" weight files."""

import pytest
import torch

from defocus_cli.errors import WeightsError
from defocus_cli.models.b import BlurNet, load_vgg19_encoder
from defocus_cli.models.vgg import IMAGENET_MEAN, ContentNet, from_normalised, load_vgg19_state_dict

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
    with pytest.raises(WeightsError, match="not VGG19 weights"):
        load_vgg19_state_dict(wrong)
    good = tmp_path / "vgg19.pth"
    torch.save(fake_vgg19_state_dict(), good)
    assert len(load_vgg19_state_dict(good)) == 32


NORMALISED = ((2, 3, 64), (5, 64, 64), (9, 64, 128), (12, 128, 128), (16, 128, 256))


def fake_normalised_state_dict(seed: int = 0) -> dict:
    """The normalised Sequential's keys and shapes: Caffe preprocessing, then five random convs."""
    g = torch.Generator().manual_seed(seed)
    swap = torch.tensor([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    sd = {"0.weight": (255 * swap)[:, :, None, None],
          "0.bias": -255 * torch.tensor(IMAGENET_MEAN).flip(0)}
    for i, cin, cout in NORMALISED:
        scale = (2 / (9 * cin)) ** 0.5 / (255 if i == 2 else 1)  # conv1_1 sees 0-255 inputs
        sd[f"{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * scale
        sd[f"{i}.bias"] = 0.1 * torch.randn(cout, generator=g)
    return sd


def normalised_reference(sd: dict) -> torch.nn.Sequential:
    """The network as the normalised file defines it (reflection padding), to relu3_1."""
    nn = torch.nn
    layers: list = [nn.Conv2d(3, 3, 1)]
    for i, cin, cout in NORMALISED:
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU()]
        if i in (5, 12):
            layers.append(nn.MaxPool2d(2, 2))
    seq = nn.Sequential(*layers)
    convs = [m for m in seq if isinstance(m, nn.Conv2d)]
    for m, key in zip(convs, [0] + [i for i, _, _ in NORMALISED]):
        m.weight.data, m.bias.data = sd[f"{key}.weight"], sd[f"{key}.bias"]
    return seq.eval()


def _check_normalised_conversion(sd: dict) -> None:
    c = ContentNet(from_normalised(sd))
    assert c.layer == "relu3_1"
    x = torch.rand(1, 1, 64, 80)
    ours = c(x)
    assert ours.shape == (1, 256, 16, 20)
    with torch.no_grad():
        ref = normalised_reference(sd)(x.expand(-1, 3, -1, -1))
    # equal away from the border (zero padding of the normalised input vs reflection padding)
    torch.testing.assert_close(ours[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], rtol=1e-4, atol=1e-4)


def test_normalised_weights_fold_into_torchvision_layout(tmp_path):
    sd = fake_normalised_state_dict()
    _check_normalised_conversion(sd)
    path = tmp_path / "normalised.pth"
    torch.save(sd, path)
    loaded = load_vgg19_state_dict(path)
    assert sorted(loaded) == sorted(f"features.{i}.{p}" for i in (0, 2, 5, 7, 10) for p in ("weight", "bias"))
    # full-width B takes the five convolutions; the deeper ones keep their initialisation
    b = BlurNet()
    before = b.encoder[12].weight.clone()
    assert load_vgg19_encoder(b, loaded) == 10
    torch.testing.assert_close(b.encoder[10].weight, loaded["features.10.weight"])
    assert torch.equal(b.encoder[12].weight, before)
    with pytest.raises(ValueError, match="has 'features.2.weight' but not 'features.0.weight'"):
        load_vgg19_encoder(BlurNet(), {k: v for k, v in loaded.items() if not k.startswith("features.0.")})
    # a full torchvision file still reaches relu4_4
    assert ContentNet(fake_vgg19_state_dict()).layer == "relu4_4"


def test_the_shipped_normalised_vgg_file(shared_data):
    path = shared_data.parent / "models" / "vgg19_normalised_to_conv3_1.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    _check_normalised_conversion(torch.load(path, weights_only=True))
