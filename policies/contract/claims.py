"""The privacy claim in words, one phrasing for every place that states it.

"ε 7.99 at δ 1e-05, per subject, under replace-one adjacency (the cohort size is
public)": the site's console, its ledger, the researcher's round table and the demo
report all say it so. Pure text; must stay free of heavy imports (the governance
store and the wire format use it).
"""

from __future__ import annotations

RELATION_WORDS: dict[str, str] = {
    "add_remove": "add/remove-one adjacency (the cohort size is private)",
    "replace_one": "replace-one adjacency (the cohort size is public)",
}


def guarantee(epsilon: float, delta: float, adjacency: str) -> str:
    """The claim in words for an ε at δ under a neighbouring relation."""
    return (f"ε {epsilon:.3g} at δ {delta:g}, per subject, under "
            f"{RELATION_WORDS.get(adjacency, adjacency)}")
