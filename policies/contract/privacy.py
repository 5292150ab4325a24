"""Privacy accounting for DP-SGD: what one ledger composes, and under which relation.

A site's claim is "ε at δ, per subject, under <relation>", about everything a plan
releases at that site. Two neighbouring relations are used, fixed per dataset by
its policy's `release.sample_count`:

* **add/remove** (`rounded`, `hidden`: the cohort size N is private). Datasets D and
  D' differ by one subject present in one of them. Nothing released may then depend
  on the exact N: the site draws one DP count of N once (N + 𝒩(0, s²), sensitivity 1:
  a Gaussian mechanism, composed into every ledger on the dataset as the entry
  (σ = s, q = 1, 1 step)), and derives q = B / Ñ and the steps from that count Ñ; the
  update is divided by the expected batch q·Ñ = B, never by N.
* **replace-one** (`exact`: N is public). D and D' have the same size and differ in one
  subject's record. The clipped gradient sum then moves by up to 2C, and the site
  accounts for it with Google's dp-accounting PLD (`NeighboringRelation.REPLACE_ONE`),
  the one accountant here that models Poisson sampling under this relation.

One round is `steps` DP-SGD steps, each the Poisson-subsampled Gaussian mechanism with
rate q and noise multiplier σ (noise σ·C on the sum of gradients clipped to norm C). A
ledger is a list of (σ, q, steps) entries, composed by one accountant:

* `rdp`: Opacus's RDP (Mironov 2017): Σ over entries of steps × RDP(q, σ) at each
  order α, converted to (ε, δ) by Opacus's `get_privacy_spent`. Add/remove only.
* `prv`: Opacus's PRV accountant (Gopi et al. 2021), its upper estimate. Add/remove only.
* `pld`: dp-accounting's privacy loss distributions (pessimistic estimate, value
  discretisation 1e-3) under either relation.

ε values are never added. This module only computes; it never decides whether a run
may happen.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from policies.contract.claims import RELATION_WORDS, guarantee
from policies.contract.errors import MedsyftError
from policies.contract.plan import TrainingPlan

Adjacency = Literal["add_remove", "replace_one"]
Accountant = Literal["rdp", "prv", "pld"]
#: (σ, q, steps): `steps` compositions of the Poisson-subsampled Gaussian mechanism
Entry = tuple[float, float, int]

ADJACENCIES: tuple[Adjacency, ...] = ("add_remove", "replace_one")
#: accountants that model each relation
ACCOUNTANTS_FOR: dict[str, tuple[str, ...]] = {
    "add_remove": ("rdp", "prv", "pld"),
    "replace_one": ("pld",),
}
PLD_DISCRETISATION = 1e-3
SIGMA_MAX = 1e4
EPSILON_TOLERANCE = 0.01
__all__ = ["RELATION_WORDS", "guarantee", "Accounting", "noise_for", "epsilon_spent"]

@dataclass(frozen=True)
class Accounting:
    """How a site accounts one researcher's ledger on one dataset.

    Attributes:
        accountant: the one accountant the ledger composes with (σ is derived with it too).
        adjacency: the neighbouring relation every ε of this ledger is stated under.
        n: the cohort size that q and the steps are derived from: N itself under
            replace-one, the DP count Ñ under add/remove.
        count_noise: the standard deviation s of the DP count (add/remove only).
        earlier_counts: the noise of each earlier DP count of this dataset (published
            again, each draw released through q): charged too.
    """

    accountant: Accountant
    adjacency: Adjacency
    n: int
    count_noise: float | None = None
    earlier_counts: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.adjacency not in ADJACENCIES:
            raise ValueError(f"unknown neighbouring relation {self.adjacency!r}")
        if self.accountant not in ACCOUNTANTS_FOR[self.adjacency]:
            raise ValueError(f"accountant {self.accountant!r} cannot state ε under "
                             f"{self.adjacency}; use one of "
                             f"{', '.join(ACCOUNTANTS_FOR[self.adjacency])}")
        if self.adjacency == "add_remove" and not (self.count_noise and self.count_noise > 0):
            raise ValueError("a private cohort size needs the noise of its DP count")
        if self.n < 1:
            raise ValueError("empty cohort")

    @property
    def prefix(self) -> tuple[Entry, ...]:
        """What every history of this ledger starts with: the DP count of N (add/remove)."""
        if self.adjacency == "add_remove":
            return tuple((float(s), 1.0, 1) for s in (*self.earlier_counts, self.count_noise))
        return ()

    def epsilon(self, history: list[Entry] | tuple[Entry, ...], delta: float) -> float:
        """ε of the prefix and `history` at δ, by this ledger's accountant and relation."""
        return epsilon_spent([*self.prefix, *history], delta, self.accountant, self.adjacency)


@dataclass(frozen=True)
class RunShape:
    """What one round of a plan costs: sample rate and steps (σ applied separately)."""

    sample_rate: float
    steps: int


def run_shape(n: int, batch_size: int, local_epochs: int, updates: int = 1) -> RunShape:
    """Poisson sampling with expected batch B: q = B/n, n/B iterations per epoch (at least
    1), where n is the accounting's cohort size (never the private N under add/remove).

    `steps` counts mechanisms, not iterations: an iteration that makes `updates` DP-SGD
    updates (a GAN's discriminator step, then its generator step, each on its own Poisson
    batch, each noised) is `updates` subsampled Gaussian mechanisms. Each reads the private
    data and the outputs of every earlier one (θ_D and θ_G), so by adaptive composition
    the ledger composes all of them: (σ, q, updates × iterations) per round. Nothing is
    claimed from the discriminator never being released: ε is stated as if every
    intermediate θ_D and θ_G were."""
    if n < 1:
        raise ValueError("empty cohort")
    if updates < 1:
        raise ValueError("at least one update per iteration")
    q = min(1.0, batch_size / n)
    steps_per_epoch = max(1, round(n / batch_size))
    return RunShape(sample_rate=q, steps=local_epochs * steps_per_epoch * updates)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """Opacus's RDP of one step at every default order (read-only; costly at high q)."""
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                   orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)
    return rdp


@functools.lru_cache(maxsize=1024)
def _pld(entry: Entry, adjacency: str):  # noqa: ANN202 - dp_accounting's PLD object
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    relation = (NeighboringRelation.REPLACE_ONE if adjacency == "replace_one"
                else NeighboringRelation.ADD_OR_REMOVE_ONE)
    sigma, q, steps = entry
    return pld.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, neighboring_relation=relation,
        value_discretization_interval=PLD_DISCRETISATION,
        pessimistic_estimate=True).self_compose(steps)


def epsilon_spent(history: list[Entry] | tuple[Entry, ...], delta: float,
                  accountant: str = "rdp", adjacency: str = "add_remove") -> float:
    """ε after composing every (σ, q, steps) in `history` at δ.

    RDP is computed exactly as Opacus's `RDPAccountant.get_privacy_spent` does (Σ of
    steps × one step's RDP, then `get_privacy_spent`), one step's RDP per (q, σ) cached:
    the site recomputes the ledger before and after every round. PRV goes through
    Opacus's accountant as it is; PLD through dp-accounting, one cached distribution per
    entry, composed.

    Raises:
        ValueError: the accountant cannot state ε under `adjacency`.
    """
    if accountant not in ACCOUNTANTS_FOR.get(adjacency, ()):
        raise ValueError(f"accountant {accountant!r} cannot state ε under {adjacency!r}")
    entries = [(float(s), float(q), int(k)) for s, q, k in history if k > 0 and q > 0]
    if not entries:
        return 0.0
    if accountant != "prv":
        # the same mechanism k₁ then k₂ times is that mechanism k₁ + k₂ times: RDP adds
        # linearly, and PLD composes one self-composition instead of one per round
        steps: dict[tuple[float, float], int] = {}
        for s, q, k in entries:
            steps[(s, q)] = steps.get((s, q), 0) + k
        entries = [(s, q, k) for (s, q), k in sorted(steps.items())]
    return _epsilon_of(tuple(entries), float(delta), accountant, adjacency)


@functools.lru_cache(maxsize=1024)
def _epsilon_of(history: tuple[Entry, ...], delta: float, accountant: str,
                adjacency: str) -> float:
    """`epsilon_spent` of a normalised history (cached: a round asks for the same ledger's
    ε up to three times: the budget check, the plan's ε and the ledger's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accountant == "rdp":
            rdp = sum(_rdp_per_step(q, s) * k for s, q, k in history)
            eps = float(rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])
        elif accountant == "prv":
            acc = create_accountant(mechanism="prv")
            acc.history = list(history)
            eps = float(acc.get_epsilon(delta=delta))
        else:
            composed = functools.reduce(lambda a, b: a.compose(b),
                                        (_pld(e, adjacency) for e in history))
            eps = float(composed.get_epsilon_for_delta(delta))
    return eps if math.isfinite(eps) else float("inf")


class TargetUnreachable(MedsyftError, ValueError):
    """No noise multiplier meets the ε target (the DP count alone may cost more)."""


@functools.lru_cache(maxsize=256)
def derive_noise_multiplier(target_epsilon: float, delta: float, shape: RunShape, rounds: int,
                            accounting: Accounting) -> float:
    """Smallest σ (to within EPSILON_TOLERANCE of the target) whose ε, composed with the
    ledger's prefix over `rounds` runs of `shape`, is at most `target_epsilon`.

    ε(σ) decreases in σ: the search doubles σ until the target is met, then bisects
    until ε lies in [target − 0.01, target] (Opacus's `get_noise_multiplier` does the
    same for RDP and PRV), so the ε the ledger charges is what the plan asked for.
    Pure and cached: the site re-derives σ before every round.

    Raises:
        TargetUnreachable: even σ = 10⁴ does not meet the target.
    """
    def eps(sigma: float) -> float:
        return accounting.epsilon([(sigma, shape.sample_rate, shape.steps * rounds)], delta)

    floor = accounting.epsilon([], delta)
    if floor >= target_epsilon:
        raise TargetUnreachable(
            f"the cohort size's DP count alone costs ε {floor:.3g} at δ {delta:g}; the "
            f"target {target_epsilon:g} cannot be met")
    hi, at_hi = 1.0, eps(1.0)
    while at_hi > target_epsilon:
        hi *= 2
        if hi > SIGMA_MAX:
            raise TargetUnreachable(f"no noise multiplier up to {SIGMA_MAX:g} meets ε "
                                    f"{target_epsilon:g} at δ {delta:g}")
        at_hi = eps(hi)
    lo = 0.0
    while at_hi < target_epsilon - EPSILON_TOLERANCE and hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        at_mid = eps(mid)
        if at_mid > target_epsilon:
            lo = mid
        else:
            hi, at_hi = mid, at_mid
    return hi


@dataclass(frozen=True)
class RoundNoise:
    """What one round of a plan releases under: the (σ, q, steps) that the ledger records
    and composes, and the expected batch q·n the update is divided by."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    expected_batch: float
    #: DP-SGD updates per iteration (2 for a GAN); `steps` counts every one of them
    updates: int = 1

    @property
    def iterations(self) -> int:
        """Training iterations of a round: `steps` / `updates`."""
        return self.steps // self.updates

    def as_history_entry(self) -> Entry:
        """The (σ, q, steps) triple that `epsilon_spent` composes."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def noise_for(plan: TrainingPlan, accounting: Accounting) -> RoundNoise:
    """σ, q, steps and the update's divisor for one round of `plan` under `accounting`.

    σ is the smallest noise multiplier whose ε over all `plan.rounds` rounds (each of
    `steps` Poisson-sampled steps at rate q = B/n; a GAN's discriminator and generator
    updates each count as one), after the ledger's prefix, stays within
    the plan's target at its δ, with the ledger's own accountant and relation. Site
    review, the runtime and the researcher's pre-check all call this one function.

    Raises:
        TargetUnreachable: no σ meets the target.
    """
    updates = plan.updates_per_step
    shape = run_shape(accounting.n, plan.batch_size, plan.local_epochs, updates)
    sigma = derive_noise_multiplier(plan.dp.target_epsilon, plan.dp.delta, shape,
                                    plan.rounds, accounting)
    return RoundNoise(noise_multiplier=sigma, sample_rate=shape.sample_rate, steps=shape.steps,
                      expected_batch=shape.sample_rate * accounting.n, updates=updates)
