"""The site's own losses, one sample at a time: the plan names one, the site computes it.

Each loss takes one sample's network output (batch dimension 1) and its target, and
returns a scalar. DP-SGD differentiates it per sample, clips and noises the gradient
(`sites.sandbox.dp_sgd`), so the sensitivity bound never depends on the loss; what the
loss must never do is fail, or behave differently, on a value a researcher could choose
to probe the data with: a target outside the network's classes weighs zero instead of
raising (whether a round failed would answer a question about the batch).

    classify    bce_with_logits   out (1, 1)             y ()        label 0/1
                cross_entropy     out (1, K)             y ()        label 0..K-1
    segment     dice              out (1, K, D, H, W)    y (D, H, W) soft Dice over the K
                                                                     classes (softmax)
                dice_ce           the same               the same    Dice + voxel mean CE
    synthesize  l1, l2            out (1, 1, D, H, W)    y (D, H, W) voxel mean |e|, e²
                ssim_l1           the same               the same    0.84 (1 − SSIM) +
                                                                     0.16 L1 (Zhao et al.,
                                                                     IEEE TCI 2017)

Dice, per class k over voxels v, with p the softmax and t the one-hot target:
    D_k = (2 Σ_v p_vk t_vk + s) / (Σ_v p_vk + Σ_v t_vk + s),  loss = 1 − mean_k D_k,  s = 1e-5
(MONAI's `DiceLoss(softmax=True, to_onehot_y=True)` with its default smoothing). SSIM is
Wang et al. (2004) with a Gaussian window (σ 1.5, 7 voxels or the volume if smaller),
C₁ = (0.01 L)², C₂ = (0.03 L)², L the target's value range.

A GAN (synthesize with `adversarial`) adds two losses over the discriminator's logits
d (one per sample, or a map), each the mean over its elements, softplus(z) = log(1 + eᶻ):

    discriminator   softplus(−d(x, y)) + softplus(d(x, G(x)))   real towards 1, generated 0
    generator       loss(G(x), y) + λ·softplus(−d(x, G(x)))     non-saturating (Goodfellow
                                                                et al. 2014)

Must never print or log a tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DICE_SMOOTH = 1e-5
SSIM_WEIGHT = 0.84


def bce_with_logits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out.reshape(-1), y.reshape(-1).to(out.dtype))


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one sample; a label outside the model's classes contributes zero
    (it once raised, and whether a round failed told whether any sampled subject had a
    label the model could not hold: red team, issue 14)."""
    logits = out.reshape(1, -1)
    label = y.reshape(-1).long()
    valid = (label >= 0) & (label < logits.shape[1])  # one sample: shape [1]
    loss = F.cross_entropy(logits, torch.where(valid, label, torch.zeros_like(label)))
    return loss * valid.to(loss.dtype).reshape(())


def _one_hot(y: torch.Tensor, classes: int, like: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """(one-hot (1, K, *grid), valid (1, 1, *grid)): a voxel whose class is outside 0..K-1
    is no class at all and is left out of every sum (never an error)."""
    label = y.reshape(1, 1, *like.shape[2:]).long()
    ks = torch.arange(classes, device=like.device).reshape(1, classes, *([1] * (like.dim() - 2)))
    onehot = (label == ks).to(like.dtype)
    valid = ((label >= 0) & (label < classes)).to(like.dtype)
    return onehot, valid


def _volume_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=tuple(range(2, t.dim())))


def dice(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    onehot, valid = _one_hot(y, out.shape[1], out)
    p = torch.softmax(out, dim=1) * valid
    inter = _volume_sum(p * onehot)
    score = (2 * inter + DICE_SMOOTH) / (_volume_sum(p) + _volume_sum(onehot) + DICE_SMOOTH)
    return 1.0 - score.mean()


def dice_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    onehot, valid = _one_hot(y, out.shape[1], out)
    ce = -(torch.log_softmax(out, dim=1) * onehot).sum(dim=1, keepdim=True)
    return dice(out, y) + (ce * valid).sum() / valid.sum().clamp(min=1.0)


def _pair(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and target as (1, 1, *grid) of one dtype."""
    target = y.reshape(1, 1, *y.shape[-3:]).to(out.dtype)
    return out.reshape(target.shape), target


def l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    o, t = _pair(out, y)
    return (o - t).abs().mean()


def l2(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    o, t = _pair(out, y)
    return ((o - t) ** 2).mean()


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    ax = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None, None] * g[None, :, None] * g[None, None, :]).reshape(1, 1, size, size,
                                                                            size)


def ssim(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of one synthesised volume against its target (see the module's formula)."""
    o, t = _pair(out, y)
    size = min(7, *t.shape[2:])
    size -= 1 - size % 2  # odd
    w = _gaussian_window(size, 1.5, t)
    value_range = (t.amax(dim=(2, 3, 4)) - t.amin(dim=(2, 3, 4))).clamp(min=1e-6)
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv3d(v, w)

    mu_o, mu_t = blur(o), blur(t)
    var_o = blur(o * o) - mu_o ** 2
    var_t = blur(t * t) - mu_t ** 2
    cov = blur(o * t) - mu_o * mu_t
    c1 = c1.reshape(1, 1, 1, 1, 1)
    c2 = c2.reshape(1, 1, 1, 1, 1)
    s = ((2 * mu_o * mu_t + c1) * (2 * cov + c2)) / ((mu_o ** 2 + mu_t ** 2 + c1)
                                                     * (var_o + var_t + c2))
    return s.mean()


def ssim_l1(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return SSIM_WEIGHT * (1.0 - ssim(out, y)) + (1.0 - SSIM_WEIGHT) * l1(out, y)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """One sample's discriminator loss from its logits on the real and the generated
    target (see the module's formula)."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_adversarial(fake: torch.Tensor) -> torch.Tensor:
    """One sample's non-saturating adversarial term for the generator."""
    return F.softplus(-fake).mean()


LOSSES: dict[str, Loss] = {
    "bce_with_logits": bce_with_logits, "cross_entropy": cross_entropy,
    "dice": dice, "dice_ce": dice_ce, "l1": l1, "l2": l2, "ssim_l1": ssim_l1,
}
