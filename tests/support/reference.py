"""Reference privacy maths, computed with Opacus's own analysis functions (never with the
project's accountant, which the tests check against it)."""

from __future__ import annotations

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def reference_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε of a (σ, q, steps) history by Opacus's RDP analysis."""
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=k, orders=ORDERS) for s, q, k in history)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)
