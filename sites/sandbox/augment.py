"""Site-side augmentation of a DP-SGD batch: the plan's `augment` (a fixed set of
transforms, `policies.contract.plan.Augmentation`), drawn afresh for each sample.

For each sample i, with u uniform on [−1, 1] drawn independently per quantity:

    A_i = S_i · R_z(u·ρ) R_y(u·ρ) R_x(u·ρ) · diag(±1, ±1, ±1)     scale S_i = 1 + u·s,
    t_i = u · τ · 2 / size (per axis, in grid_sample's [−1, 1] coordinates)
    x'_i = grid_sample(x_i, A_i, t_i)  (linear, border)   then  x'_i · (1 + u·γ) + u·γ
    y'_i = grid_sample(y_i, A_i, t_i)  (nearest for a mask, linear for a volume)
           and, with target_jitter j, a second affine of ranges j·(ρ, τ, s) on y'_i alone

A sample's augmented copy is a function of that sample and of fresh random draws only,
never of another sample: the per-sample gradient of the augmented sample is still
clipped to C, so one subject still moves the noised sum by at most C and the privacy
accounting is unchanged. The draws come from the step's `Randomness`. This module must
never print or log tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from policies.contract.plan import Augmentation
from sites.sandbox.randomness import Randomness


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians -> (B, 3, 3) rotations R_z R_y R_x."""
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).reshape(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).reshape(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def _signed(rng: Randomness, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform on [−1, 1), float32."""
    return (rng.uniform(math.prod(shape)).reshape(shape) * 2.0 - 1.0).float()


def _affine(rng: Randomness, spec: Augmentation, batch: int, grid: tuple[int, int, int],
            share: float = 1.0, flips: bool = True) -> torch.Tensor:
    """(B, 3, 4) affines for F.affine_grid (output -> input, normalised coordinates)."""
    rot = _rotation(_signed(rng, (batch, 3)) * math.radians(spec.rotate_deg * share))
    zoom = 1.0 + _signed(rng, (batch, 1, 1)) * spec.scale * share
    matrix = rot * zoom
    if flips and spec.flip:
        signs = torch.where(rng.uniform(batch * 3).reshape(batch, 3) < 0.5, -1.0, 1.0)
        matrix = matrix * signs.float().unsqueeze(1)  # flip input axes: columns
    # grid_sample's x, y, z run along W, H, D; one voxel is 2/size of [−1, 1]
    sizes = torch.tensor([grid[2], grid[1], grid[0]], dtype=torch.float32)
    shift = _signed(rng, (batch, 3)) * spec.translate_vox * share * 2.0 / sizes
    return torch.cat([matrix, shift.unsqueeze(2)], dim=2)


def _warp(v: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(v.device, v.dtype), list(v.shape), align_corners=False)
    return F.grid_sample(v, grid, mode=mode, padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, y: torch.Tensor, spec: Augmentation | None,
                  target: str, rng: Randomness) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch (x: (B, C, D, H, W); y: (B,) labels, (B, D, H, W) mask or volume) with
    each sample augmented on its own; `target` is "label", "mask" or "volume"."""
    if spec is None or x.dim() != 5 or x.shape[0] == 0:
        return x, y
    batch, channels = x.shape[:2]
    grid = tuple(int(s) for s in x.shape[2:])
    if spec.spatial:
        theta = _affine(rng, spec, batch, grid)  # type: ignore[arg-type]
        x = _warp(x.float(), theta, "bilinear")
        if target == "mask":
            y = _warp(y.unsqueeze(1).float(), theta, "nearest").squeeze(1).round().to(y.dtype)
        elif target == "volume":
            y = _warp(y.unsqueeze(1).float(), theta, "bilinear").squeeze(1).to(y.dtype)
    if target == "volume" and spec.target_jitter > 0:
        jitter = _affine(rng, spec, batch, grid, share=spec.target_jitter,  # type: ignore
                         flips=False)
        y = _warp(y.unsqueeze(1).float(), jitter, "bilinear").squeeze(1).to(y.dtype)
    if spec.intensity > 0:
        shape = (batch, channels, 1, 1, 1)
        gain = 1.0 + _signed(rng, shape).to(x.device) * spec.intensity
        offset = _signed(rng, shape).to(x.device) * spec.intensity
        x = x * gain + offset
    return x, y
