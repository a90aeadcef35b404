"""DMENet's training losses, one function per equation of the paper (Lee et al., CVPR 2019).

Conventions: maps are (B, 1, H, W) in sigma / sigma_max units; a target holding NaN at a pixel
means "no label there" and that pixel is left out of every mean (the synth datasets mark invalid
pixels with NaN). Every loss is computed in float32 whatever the autocast dtype of its inputs.
D and S return logits; the sigmoids of Eq. 7, 8 and 10 are applied here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Loss coefficients; defaults are the paper's (Sec. 5.1)."""

    adv: float = 1e-3  # lambda_adv, Eq. 3: small, the adversarial signal only nudges B's features
    d: float = 1.0  # lambda_D, Eq. 4
    content: float = 1e-4  # lambda_C, Eq. 3 (feature MSE is large in magnitude)
    sharpness: float = 2e-2  # lambda_S, Eq. 3
    aux: float = 1.0  # lambda_aux, Eq. 5
    #: lambda_T: L_T, the blur-map loss (Eq. 5) on real photos against another estimator's maps
    #: (pseudo-labels; not in the paper)
    teacher: float = 1.0


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of (pred - target)^2 over the pixels where target is finite; 0 if there are none.

    pred, target: same shape. The zero keeps gradients defined for an all-invalid crop.
    """
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred = pred.float()
    target = target.float()
    valid = torch.isfinite(target)
    diff = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff * diff).sum() / valid.sum().clamp_min(1)


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample a (B, 1, H, W) target with NaN holes to ``size`` (an exact 1/2^k of H, W).

    Each output pixel is the mean of the valid input pixels it covers, NaN where none is valid,
    so the label y_l of Eq. 6 at level l is the average defocus of the region it stands for.
    """
    h, w = target.shape[-2:]
    if (h, w) == tuple(size):
        return target
    if h % size[0] or w % size[1] or h // size[0] != w // size[1]:
        raise ValueError(f"resize_target: {h}x{w} is not an integer multiple of {size[0]}x{size[1]}")
    k = h // size[0]
    valid = torch.isfinite(target).float()
    total = F.avg_pool2d(torch.nan_to_num(target.float()) * valid, k)
    count = F.avg_pool2d(valid, k)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.full_like(total, float("nan")))


def auxiliary_loss(aux: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Eq. 6: L_aux = sum over decoder levels l of the MSE between A_l's map and y_l.

    aux: the per-level maps (B, 1, H_l, W_l) in [0, 1], any order; target: (B, 1, H, W) with NaN
    holes, resized to each level with :func:`resize_target`.
    """
    if not aux:
        raise ValueError("auxiliary_loss: no auxiliary maps given")
    return sum(masked_mse(a, resize_target(target, tuple(a.shape[-2:]))) for a in aux)


def blur_map_loss(sigma: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor,
                  lambda_aux: float = 1.0) -> torch.Tensor:
    """Eq. 5: L_B = MSE(B(I_S), y) + lambda_aux * L_aux.

    sigma: (B, 1, H, W) prediction in [0, 1]; target (B, 1, H, W) sigma / sigma_max, NaN = no label.
    """
    loss = masked_mse(sigma, target)
    if lambda_aux:
        loss = loss + lambda_aux * auxiliary_loss(aux, target)
    return loss


def discriminator_loss(logits: torch.Tensor, z: float) -> torch.Tensor:
    """Eq. 7: L_D = (z - 1) log(1 - D(f)) - z log D(f), D(f) = sigmoid(logits).

    z = 1 for features of synthetic images, 0 for real ones. Averaged over batch and patches;
    computed as binary cross-entropy with logits (the same value, stable for large |logits|).
    """
    if z not in (0, 1, 0.0, 1.0):
        raise ValueError(f"discriminator_loss: z must be 0 (real) or 1 (synthetic), got {z}")
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(z)))


def adversarial_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 8: L_adv = -log D(B_last(I_R)), D = sigmoid(logits), averaged over batch and patches.

    -log(sigmoid(x)) = softplus(-x): exact and stable. B minimises it by making D call real
    features synthetic (label 1).
    """
    return F.softplus(-logits.float()).mean()


def content_loss(features_pred: torch.Tensor, features_target: torch.Tensor) -> torch.Tensor:
    """Eq. 9: L_C = mean over the feature map of (phi_4(B(I_S)) - phi_4(y))^2.

    The mean runs over every element (channels included), as the authors' code did with
    TensorLayer's mean squared error; lambda_C = 1e-4 was tuned with that normalisation.
    """
    if features_pred.shape != features_target.shape:
        raise ValueError(f"content_loss: shapes {tuple(features_pred.shape)} and "
                         f"{tuple(features_target.shape)} differ")
    return F.mse_loss(features_pred.float(), features_target.float())


def sharpness_loss(logits: torch.Tensor, blur_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: L_S = mean over pixels of (sigmoid(S(B(I_B))) - b)^2.

    logits: (B, 1, H, W) output of S; blur_mask: (B, 1, H, W), 1 = blurred, 0 = sharp, NaN = unknown.
    """
    return masked_mse(torch.sigmoid(logits.float()), blur_mask)


def generator_objective(l_b: torch.Tensor, weights: LossWeights, *,
                        l_c: torch.Tensor | None = None,
                        l_adv_real: torch.Tensor | None = None,
                        l_adv_masked: torch.Tensor | None = None,
                        l_s: torch.Tensor | None = None,
                        l_t: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3: L_g = mean_S[L_B + lambda_C L_C] + mean_B[lambda_adv L_adv + lambda_S L_S]
    + lambda_adv mean_R[L_adv], plus lambda_T mean_R[L_T] when D_R has pseudo-labels.

    Each argument is already a mean over its set's mini-batch; a term that is None (its network or
    its data is absent) is left out.
    """
    total = l_b
    if l_c is not None:
        total = total + weights.content * l_c
    if l_adv_masked is not None:
        total = total + weights.adv * l_adv_masked
    if l_s is not None:
        total = total + weights.sharpness * l_s
    if l_adv_real is not None:
        total = total + weights.adv * l_adv_real
    if l_t is not None:
        total = total + weights.teacher * l_t
    return total


def discriminator_objective(l_d_synth: torch.Tensor, weights: LossWeights, *,
                            l_d_real: torch.Tensor | None = None, n_real: int = 0,
                            l_d_masked: torch.Tensor | None = None, n_masked: int = 0) -> torch.Tensor:
    """Eq. 4: L_d = lambda_D mean_S[L_D(I_S, 1)]
    + lambda_D / (|D_R| + |D_B|) * (sum_R L_D(I_R, 0) + sum_B L_D(I_B, 0)).

    l_d_* are mini-batch means; n_real / n_masked the mini-batch sizes they average over, so the
    real-domain term is the mean over the pooled real samples as in the equation.
    """
    total = weights.d * l_d_synth
    real_sum = 0.0
    count = 0
    if l_d_real is not None:
        real_sum = real_sum + l_d_real * n_real
        count += n_real
    if l_d_masked is not None:
        real_sum = real_sum + l_d_masked * n_masked
        count += n_masked
    if count:
        total = total + weights.d * real_sum / count
    return total
