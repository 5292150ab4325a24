"""Privacy accounting for DP-SGD, delegated to Opacus's accountants.

The site derives the noise multiplier σ that meets a plan's ε target over all
its rounds, and reports ε spent for the history of released runs:

* one run is `steps` DP-SGD steps with Poisson sample rate q = B / N and noise
  σ·C on the clipped gradient sum (C = max grad norm);
* composition over runs is the accountant's own (RDP: sum of Rényi
  divergences per order, then converted to (ε, δ); PRV: numerical composition
  of privacy random variables). ε values are never added.

This module only computes; it never decides whether a run may happen.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from policies.contract.plan import TrainingPlan


@dataclass(frozen=True)
class RunShape:
    """What one round of a plan costs: sample rate and steps (σ applied separately)."""

    sample_rate: float
    steps: int


def run_shape(n: int, batch_size: int, local_epochs: int) -> RunShape:
    """Poisson sampling with expected batch B: q = B/N, N/B steps per epoch (at least 1)."""
    if n < 1:
        raise ValueError("empty cohort")
    q = min(1.0, batch_size / n)
    steps_per_epoch = max(1, round(n / batch_size))
    return RunShape(sample_rate=q, steps=local_epochs * steps_per_epoch)


@functools.lru_cache(maxsize=256)
def derive_noise_multiplier(
    target_epsilon: float, delta: float, shape: RunShape, rounds: int, accountant: str = "rdp"
) -> float:
    """Smallest σ (to Opacus's tolerance) whose ε over `rounds` runs is at most the target.

    A pure function of its arguments, cached: the site re-derives σ before every round
    (policy re-check and run), and Opacus's binary search takes seconds at high q."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus's "optimal order" hint is not for users
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=shape.sample_rate,
            steps=shape.steps * rounds,
            accountant=accountant,
            epsilon_tolerance=0.01,
        ))


@dataclass(frozen=True)
class RoundNoise:
    """What one round of a plan releases under, at a cohort of size N: the (σ, q, steps)
    that the ledger records and composes."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_history_entry(self) -> tuple[float, float, int]:
        """The (σ, q, steps) triple that `epsilon_spent` composes."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def noise_for(plan: TrainingPlan, n: int) -> RoundNoise:
    """σ, q and steps of one round of `plan` on a cohort of `n` subjects.

    σ is the smallest noise multiplier whose ε over all `plan.rounds` rounds (each of
    `steps` Poisson-sampled steps at rate q = B/N) stays within the plan's target at its
    δ, under the plan's accountant. Site review, the runtime and the researcher's
    pre-check all call this one function, so they agree.

    Args:
        plan: the training plan (batch size, local epochs, rounds, DP target).
        n: cohort size N at the site.

    Returns:
        The round's noise multiplier, sample rate and steps.

    Raises:
        ValueError: `n` is below 1.
    """
    shape = run_shape(n, plan.batch_size, plan.local_epochs)
    sigma = derive_noise_multiplier(plan.dp.target_epsilon, plan.dp.delta, shape,
                                    plan.rounds, plan.dp.accountant)
    return RoundNoise(noise_multiplier=sigma, sample_rate=shape.sample_rate, steps=shape.steps)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """Opacus's RDP of one step at every default order (read-only; costly at high q)."""
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                   orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)
    return rdp


def epsilon_spent(
    history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp"
) -> float:
    """ε after composing every (σ, q, steps) in `history` at the given δ.

    RDP is computed exactly as Opacus's `RDPAccountant.get_privacy_spent` does
    (Σ over the history of `compute_rdp(q, σ, steps)` = steps × one step's RDP, then
    `get_privacy_spent`), with one step's RDP per (q, σ) cached: the site recomputes
    the ledger before and after every round, and one fractional-order evaluation
    takes about a second at q = 0.5. PRV goes through Opacus's accountant as it is.
    """
    if not history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accountant == "rdp":
            rdp = sum(_rdp_per_step(float(q), float(s)) * int(k) for s, q, k in history)
            eps = float(rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])
        else:
            acc = create_accountant(mechanism=accountant)
            acc.history = [(float(s), float(q), int(k)) for s, q, k in history]
            eps = float(acc.get_epsilon(delta=delta))
    return eps if math.isfinite(eps) else float("inf")
