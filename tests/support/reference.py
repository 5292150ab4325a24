"""Reference privacy maths, computed with Opacus's own analysis functions and with Google's
dp-accounting (PLD, both neighbouring relations), never with the project's accountant,
which the tests check against them."""

from __future__ import annotations

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def reference_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε of a (σ, q, steps) history by Opacus's RDP analysis."""
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=k, orders=ORDERS) for s, q, k in history)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def pld_epsilon(history: list[tuple[float, float, int]], delta: float, adjacency: str,
                discretisation: float = 1e-4) -> float:
    """ε of a (σ, q, steps) history by dp-accounting's PLD accountant under `adjacency`
    (`add_remove` or `replace_one`), at a finer discretisation than the project uses."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    relation = {"add_remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE}[adjacency]
    acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=
                                               discretisation)
    for sigma, q, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return float(acc.get_epsilon(delta))
