"""Eq. 3-10 losses: values, signs, NaN masking."""

import pytest
import torch

from defocus_cli.models.losses import (
    LossWeights,
    adversarial_loss,
    auxiliary_loss,
    blur_map_loss,
    content_loss,
    discriminator_loss,
    discriminator_objective,
    generator_objective,
    masked_mse,
    resize_target,
    sharpness_loss,
)


def test_paper_coefficients_are_the_defaults():
    w = LossWeights()
    assert (w.adv, w.d, w.content, w.sharpness, w.aux) == (1e-3, 1.0, 1e-4, 2e-2, 1.0)


def test_masked_mse_ignores_nan_labels():
    pred = torch.tensor([[0.5, 0.2, 0.9]])
    target = torch.tensor([[0.5, float("nan"), 0.6]])
    assert masked_mse(pred, target).item() == pytest.approx(0.09 / 2)
    all_nan = torch.full((1, 3), float("nan"))
    pred = pred.clone().requires_grad_(True)
    loss = masked_mse(pred, all_nan)
    loss.backward()
    assert loss.item() == 0 and torch.equal(pred.grad, torch.zeros_like(pred))  # no label, no pull


def test_resize_target_averages_valid_pixels_only():
    t = torch.tensor([[1.0, 3.0], [float("nan"), 5.0]]).view(1, 1, 2, 2)
    assert resize_target(t, (1, 1)).item() == pytest.approx(3.0)
    assert torch.isnan(resize_target(torch.full((1, 1, 4, 4), float("nan")), (2, 2))).all()
    with pytest.raises(ValueError, match="integer multiple"):
        resize_target(torch.zeros(1, 1, 6, 6), (4, 4))


def test_blur_map_loss_is_mse_plus_weighted_aux():
    y = torch.rand(2, 1, 16, 16)
    sigma = torch.rand(2, 1, 16, 16)
    aux = [torch.rand(2, 1, s, s) for s in (1, 2, 4, 8, 16)]
    l_aux = auxiliary_loss(aux, y)
    expected = sum(((a - resize_target(y, a.shape[-2:])) ** 2).mean() for a in aux)
    assert l_aux.item() == pytest.approx(expected.item(), rel=1e-5)
    total = blur_map_loss(sigma, aux, y, lambda_aux=0.5)
    assert total.item() == pytest.approx(((sigma - y) ** 2).mean().item() + 0.5 * l_aux.item(), rel=1e-5)
    perfect = blur_map_loss(y, [resize_target(y, a.shape[-2:]) for a in aux], y)
    assert perfect.item() == pytest.approx(0.0, abs=1e-12)


def test_discriminator_loss_is_eq7_cross_entropy():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    p = torch.sigmoid(logits)
    assert discriminator_loss(logits, 1).item() == pytest.approx(-torch.log(p).mean().item(), rel=1e-6)
    assert discriminator_loss(logits, 0).item() == pytest.approx(-torch.log(1 - p).mean().item(), rel=1e-6)
    # stable for large logits: -log(1 - sigmoid(200)) = softplus(200) = 200 (to float rounding)
    assert discriminator_loss(torch.tensor([200.0]), 0).item() == pytest.approx(200.0, rel=1e-6)
    assert discriminator_loss(torch.tensor([-200.0]), 1).item() == pytest.approx(200.0, rel=1e-6)
    with pytest.raises(ValueError, match="z must be"):
        discriminator_loss(logits, 0.5)


def test_adversarial_loss_is_minus_log_d_and_falls_as_d_says_synthetic():
    logits = torch.tensor([-1.0, 0.5])
    assert adversarial_loss(logits).item() == pytest.approx(-torch.log(torch.sigmoid(logits)).mean().item(), rel=1e-6)
    assert adversarial_loss(torch.tensor([3.0])) < adversarial_loss(torch.tensor([0.0])) < adversarial_loss(torch.tensor([-3.0]))
    assert adversarial_loss(torch.tensor([-1000.0])).item() == pytest.approx(1000.0, rel=1e-6)  # stable


def test_content_and_sharpness_losses():
    f = torch.rand(1, 4, 3, 3)
    assert content_loss(f, f).item() == 0
    assert content_loss(f, f + 1).item() == pytest.approx(1.0)
    b = torch.tensor([[0.0, 1.0]]).view(1, 1, 1, 2)
    good = torch.tensor([[-20.0, 20.0]]).view(1, 1, 1, 2)
    assert sharpness_loss(good, b).item() == pytest.approx(0.0, abs=1e-8)
    assert sharpness_loss(-good, b).item() == pytest.approx(1.0, abs=1e-8)
    assert sharpness_loss(torch.zeros(1, 1, 1, 2), b).item() == pytest.approx(0.25)


def test_objectives_combine_terms_with_the_coefficients():
    w = LossWeights()
    one = torch.tensor(1.0)
    # distinct term values, so a coefficient on the wrong term shows
    g = generator_objective(one, w, l_c=torch.tensor(2.0), l_adv_real=torch.tensor(3.0),
                            l_adv_masked=torch.tensor(5.0), l_s=torch.tensor(7.0))
    assert g.item() == pytest.approx(1 + 1e-4 * 2 + 1e-3 * 3 + 1e-3 * 5 + 2e-2 * 7, rel=1e-6)
    assert generator_objective(one, w).item() == 1.0
    d = discriminator_objective(torch.tensor(2.0), w, l_d_real=torch.tensor(1.0), n_real=1,
                                l_d_masked=torch.tensor(3.0), n_masked=3)
    # synthetic term + mean over the pooled real samples, weighted by count: (1 * 1 + 3 * 3) / 4
    assert d.item() == pytest.approx(2.0 + 2.5)
    assert discriminator_objective(torch.tensor(2.0), LossWeights(d=0.5)).item() == 1.0
