"""The accounting terms of one researcher's ledger on one dataset at this site.

Joins what the policy says (relation by `release.sample_count`, the ledger's accountant,
the DP count's noise) with what the governance database holds (the training part's N,
the DP count drawn once, whether the researcher already received the exact N). The
runtime, the steward's verdict, the console and the ledger report all build it here,
so σ, the reservation and every reported ε are computed under the same terms.

Must never reveal the exact N where the policy keeps it private: under add/remove the
only size it hands on is the DP count.
"""

from __future__ import annotations

from policies.contract.privacy import ACCOUNTANTS_FOR, Accounting
from policies.schema import DatasetPolicy
from sites.governance.store import Governance


def accounting_for(gov: Governance, dataset: dict, rule: DatasetPolicy,
                   researcher: str | None = None) -> Accounting:
    """The ledger's terms for `researcher` (None: anyone new) on the published `dataset`.

    Replace-one when the policy makes N public, when the dataset was published while it
    was (its description states N), or when any earlier run of this researcher there was
    under replace-one (they already hold N, so an add/remove claim
    would not hold for them any more); the accountant is then dp-accounting's PLD if the
    policy's does not model replace-one.
    """
    adjacency = rule.release.adjacency
    if dataset.get("n_disclosed", 1):
        # published while N was public: its description (and syft's copy of it) state N
        adjacency = "replace_one"
    if researcher:
        adjacency = gov.ledger_adjacency(researcher, dataset["name"], adjacency)
    accountant = rule.ledger_accountant
    if accountant not in ACCOUNTANTS_FOR[adjacency]:
        accountant = "pld"
    if adjacency == "replace_one":
        return Accounting(accountant=accountant, adjacency=adjacency, n=int(dataset["n"]))
    n, noise = gov.cohort_count(dataset["name"], rule.release.count_noise)
    draws = gov.count_noises(dataset["name"])
    return Accounting(accountant=accountant, adjacency=adjacency, n=n, count_noise=noise,
                      earlier_counts=tuple(draws[:-1]))
