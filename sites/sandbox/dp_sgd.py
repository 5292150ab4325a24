"""DP-SGD as the site runtime does it, over the plan's validated training graph.

One step, for a batch drawn by Poisson sampling (each of the N samples kept
independently with probability q):

    g_i   = ∇_θ ℓ(f_θ(x_i), y_i)                 per-sample gradient (vmap over
                                                 single samples: a model cannot
                                                 see another sample of the batch)
    ḡ_i   = g_i · min(1, C / ‖g_i‖₂)              clip to norm C over all params
    g̃     = (Σ_i ḡ_i + N(0, σ²C² I)) / B̄          noise the sum, divide by the
                                                 expected batch B̄ = q·n that the
                                                 site's accounting states (the plan's
                                                 batch size), never by the private N:
                                                 a divisor N would let the update's
                                                 scale reveal N (red team, issue 15)
    θ     ← optimizer(θ, g̃)                       SGD or Adam on the runtime's
                                                 own copy of θ

A plan's augmentation (`sites.sandbox.augment`) transforms each drawn sample on its own
before its gradient, so the bound C per sample holds as before.

The released parameters are the runtime's copy θ, changed only by that update. A GAN
(`train_gan`) makes two such updates per step, the discriminator's and the
generator's, each its own mechanism.
`f_θ` is a pure function `forward(params, x)`: at a site, the compiled training
graph (`sites.graph.execute`), which holds no state and runs no researcher Python,
so nothing written during forward can reach θ. This module must never print or
log tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, vmap

from policies.contract.plan import Augmentation
from sites.sandbox.augment import augment_batch
from sites.sandbox.losses import LOSSES
from sites.sandbox.randomness import Randomness, SecureRandomness

#: f(params, x) for one sample with a batch dimension of 1
Forward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DPConfig:
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    steps: int
    loss: str = "bce_with_logits"
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0
    micro_batch: int | None = None  # None: micro_batch_size() for the input and device
    #: the divisor of the noised sum; None: q·len(x), for library use where N is public.
    #: The site always sets it (`sites.runtime`: q·n of its accounting).
    expected_batch: float | None = None
    #: per-sample gradients each step computes at least (the draw, then zero-weighted
    #: stand-ins), so that a step's duration does not tell how many the draw took
    step_work: int | None = None
    #: the plan's site-side augmentation, applied to each drawn sample before its gradient
    augment: Augmentation | None = None
    #: what y holds, for augmentation: "label", "mask" (moved with x) or "volume"
    target: str = "label"


MICRO_BATCH_INPUT_ELEMENTS = 1 << 22  # CPU: 16 MiB of float32 input per micro-batch
MICRO_BATCH_MAX = 32


def micro_batch_size(sample_numel: int, device: torch.device, activation_bytes: int = 0,
                     memory_bytes: int | None = None) -> int:
    """How many samples go through one vmap pass.

    The result does not change what is computed (each sample's gradient is its
    own), only speed and peak memory. On CPU the best size shrinks as volumes
    grow (benchmarks/dp_step.py measured, against a plain step at batch 48:
    32 best at 24³, 16 at 48³, 8 at 64³), so it is the largest power of two
    whose inputs fit MICRO_BATCH_INPUT_ELEMENTS, which also keeps the peak
    memory of a step bounded for big volumes. On CUDA it starts at MICRO_BATCH_MAX.

    With the graph's measured `activation_bytes` per sample (forward and backward) and
    the process's `memory_bytes`, it is also at most what fits half of that memory: a
    policy may allow each sample 2 GiB, and 32 of them would not fit the sandbox.
    """
    if device.type != "cpu":
        size = MICRO_BATCH_MAX
    else:
        fit = max(1, MICRO_BATCH_INPUT_ELEMENTS // max(1, sample_numel))
        size = min(MICRO_BATCH_MAX, 1 << (fit.bit_length() - 1))
    if activation_bytes > 0 and memory_bytes:
        fit = max(1, (memory_bytes // 2) // activation_bytes)
        size = min(size, 1 << (fit.bit_length() - 1))
    return size


#: one sample's loss as a function of the parameters being trained: (params, x, y) with
#: x and y of one sample, each with a batch dimension of 1
SampleLoss = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def gradients_of(sample_loss: SampleLoss, params: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: each sample's gradient of `sample_loss` with respect to
    `params`, computed in isolation (vmap over single samples)."""

    def loss_one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return sample_loss(p, xi.unsqueeze(0), yi.unsqueeze(0))

    fresh = {k: v.detach().clone() for k, v in params.items()}
    return vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(fresh, x, y)


def per_sample_gradients(
    forward: Forward,
    params: dict[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: each sample's gradient, computed in isolation (vmap over
    single samples, each given a batch dimension of 1)."""
    return gradients_of(lambda p, xi, yi: loss_fn(forward(p, xi), yi), params, x, y)


def per_sample_losses(
    forward: Forward,
    params: dict[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int,
) -> torch.Tensor:
    """(N,) float32: each sample's loss under `params`, one sample at a time (vmap), no
    gradient; for the data owner's membership audit only."""

    def loss_one(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward(params, xi.unsqueeze(0)), yi.unsqueeze(0))

    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], micro):
            out.append(vmap(loss_one, randomness="different")(x[i:i + micro],
                                                              y[i:i + micro]).reshape(-1))
    return torch.cat(out).float() if out else torch.zeros(0)


def clip_and_sum(grads: dict[str, torch.Tensor], max_norm: float,
                 keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Σ_i c(g_i) with c(g) = g·min(1, C/‖g‖), the norm over all parameters of sample i,
    and c(g) = 0 when ‖g‖ is not finite (a NaN, an inf, or a norm that overflows).

    Any c(g) lies in the ball of radius C, so the sensitivity bound holds whatever the
    model does with a sample. Without the second case one sample's NaN would make the
    whole update NaN, and whether the round is released would be a noiseless answer to
    a question about the batch (a graph can turn "some voxel above t" into a NaN).
    """
    flat = torch.stack([g.reshape(g.shape[0], -1).norm(2, dim=1) for g in grads.values()], 1)
    norms = flat.norm(2, dim=1)
    finite = torch.isfinite(norms)
    if keep is not None:  # stand-ins that only make up the step's fixed work: weight 0
        finite = finite & keep
    factor = torch.where(finite, (max_norm / (norms + 1e-6)).clamp(max=1.0),
                         torch.zeros_like(norms))
    out = {}
    for k, g in grads.items():
        keep = finite.reshape(-1, *([1] * (g.dim() - 1)))
        out[k] = torch.einsum("b,b...->...", factor, torch.where(keep, g, torch.zeros_like(g)))
    return out


def add_noise(summed: dict[str, torch.Tensor], std: float,
              rng: Randomness | None = None) -> dict[str, torch.Tensor]:
    """Each tensor plus independent N(0, std²) noise from `rng` (the operating system's
    CSPRNG unless a test passes its own)."""
    rng = rng or SecureRandomness()
    return {k: v + rng.normal(tuple(v.shape), std, v.device) for k, v in summed.items()}


def _optimizer(leaves: list[torch.Tensor], cfg: DPConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(leaves, lr=cfg.learning_rate)
    return torch.optim.SGD(leaves, lr=cfg.learning_rate, momentum=cfg.momentum)


def _own_copy(start: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(device=device, dtype=torch.float32).clone()
            for k, v in start.items()}


@dataclass
class _Updater:
    """The DP-SGD update of one network: draw a Poisson batch, clip each sample's gradient,
    noise the sum, divide by the expected batch, step the optimizer. Every call is one
    subsampled Gaussian mechanism (σ, q) of the site's accounting."""

    theta: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    cfg: DPConfig
    n: int
    device: torch.device
    micro: int
    expected_batch: float
    rng: Randomness

    def step(self, sample_loss: SampleLoss, x: torch.Tensor, y: torch.Tensor) -> None:
        cfg = self.cfg
        mask = self.rng.uniform(self.n) < cfg.sample_rate
        idx = mask.nonzero().flatten()
        real = torch.ones(len(idx), dtype=torch.bool)
        if cfg.step_work and len(idx) < cfg.step_work:
            # zero-weighted stand-ins up to the fixed work: the step takes as long whatever
            # the Poisson draw took (they run on real subjects' values, weighted 0)
            extra = cfg.step_work - len(idx)
            idx = torch.cat([idx, torch.zeros(extra, dtype=idx.dtype)])
            real = torch.cat([real, torch.zeros(extra, dtype=torch.bool)])
        total = {k: torch.zeros_like(v) for k, v in self.theta.items()}
        for start_i in range(0, len(idx), self.micro):
            chunk = idx[start_i:start_i + self.micro]
            xb, yb = x[chunk].to(self.device), y[chunk].to(self.device)
            xb, yb = augment_batch(xb, yb, cfg.augment, cfg.target, self.rng)
            g = gradients_of(sample_loss, self.theta, xb, yb)
            keep = real[start_i:start_i + self.micro].to(self.device)
            for k, v in clip_and_sum(g, cfg.max_grad_norm, keep).items():
                total[k] += v
        noisy = add_noise(total, cfg.noise_multiplier * cfg.max_grad_norm, self.rng)
        self.opt.zero_grad(set_to_none=True)
        for k, p in self.theta.items():
            p.grad = noisy[k] / self.expected_batch
        self.opt.step()


def _updater(start: dict[str, torch.Tensor], x: torch.Tensor, cfg: DPConfig,
             device: torch.device, rng: Randomness) -> _Updater:
    theta = _own_copy(start, device)
    n = x.shape[0]
    return _Updater(theta=theta, opt=_optimizer([theta[k] for k in theta], cfg), cfg=cfg,
                    n=n, device=device,
                    micro=cfg.micro_batch or micro_batch_size(x[0].numel(), device),
                    expected_batch=cfg.expected_batch or cfg.sample_rate * n,
                    rng=rng)


def train(
    forward: Forward,
    start: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DPConfig,
    device: torch.device,
    rng: Randomness | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run `cfg.steps` DP-SGD steps from `start`; return the runtime's parameters.

    Batches and noise come from `rng`: the operating system's CSPRNG unless a test passes
    its own (there is no seed: see `sites.sandbox.randomness`)."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}")
    loss_fn = LOSSES[cfg.loss]
    upd = _updater(start, x, cfg, device, rng or SecureRandomness())

    def sample_loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward(p, xi), yi)

    for step in range(cfg.steps):
        upd.step(sample_loss, x, y)
        if on_step:
            on_step(step + 1)
    return {k: v.detach().cpu() for k, v in upd.theta.items()}


def _with_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: the sample's inputs and one target volume as channels."""
    return torch.cat([x, target.reshape(x.shape[0], 1, *x.shape[2:]).to(x.dtype)], dim=1)


def train_gan(
    generator: Forward,
    discriminator: Forward,
    start: dict[str, torch.Tensor],
    d_start: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DPConfig,
    weight: float,
    device: torch.device,
    rng: Randomness | None = None,
    d_rng: Randomness | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`cfg.steps` GAN iterations from (`start`, `d_start`); returns (θ_G, θ_D).

    Each iteration is two DP-SGD updates, each on its own Poisson batch at rate q, each
    clipped per sample to C and noised with σ·C, so each is one subsampled Gaussian
    mechanism and a round is 2 × `cfg.steps` of them in the accounting:

    1. the discriminator, on softplus(−D(x, y)) + softplus(D(x, G(x))) with G fixed;
    2. the generator, on loss(G(x), y) + λ·softplus(−D(x, G(x))) with D fixed.

    A sample's gradient in either update depends on that sample and on the parameters
    (outputs of the earlier mechanisms) only, so the sensitivity bound C holds for both.
    Draws come from `rng` (the CSPRNG unless a test passes its own); `d_rng`, when a test
    gives one, serves the discriminator's.
    """
    from sites.sandbox.losses import discriminator_loss, generator_adversarial

    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}")
    recon = LOSSES[cfg.loss]
    rng = rng or SecureRandomness()
    g_upd = _updater(start, x, cfg, device, rng)
    # the discriminator's batches, noise and optimizer are its own (fresh draws each)
    d_upd = _updater(d_start, x, cfg, device, d_rng or rng)
    d_upd.micro = max(1, min(g_upd.micro, d_upd.micro))

    def d_loss(pd: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        fake = generator(g_upd.theta, xi).detach()
        return discriminator_loss(discriminator(pd, _with_target(xi, yi)),
                                  discriminator(pd, _with_target(xi, fake)))

    def g_loss(pg: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        fake = generator(pg, xi)
        theta_d = {k: v.detach() for k, v in d_upd.theta.items()}
        return recon(fake, yi) + weight * generator_adversarial(
            discriminator(theta_d, _with_target(xi, fake)))

    for _ in range(cfg.steps):
        d_upd.step(d_loss, x, y)
        g_upd.step(g_loss, x, y)
    return ({k: v.detach().cpu() for k, v in g_upd.theta.items()},
            {k: v.detach().cpu() for k, v in d_upd.theta.items()})
