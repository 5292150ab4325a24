"""What a federated run reports, round by round and site by site, as pydantic models.

A site's answer itself is `policies.contract.wire.RoundResult`, validated there by
`parse_round` before anything is averaged; these are the researcher's own records.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from policies.contract.wire import RoundResult


class SiteRoundReport(BaseModel):
    site: str
    ok: bool
    n_k: int | None = None
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    steps: int | None = None
    delta: float | None = None
    epsilon: float | None = None
    target_epsilon: float | None = None
    adjacency: str | None = None
    accountant: str | None = None
    guarantee: str | None = Field(None, description="the site's ε claim in words")
    ledger_epsilon: float | None = Field(None, description="ε of all your plans on this "
                                                           "dataset at this site")
    count_noise: float | None = Field(None, description="add/remove: std of the DP count "
                                                        "of N that q derives from")
    error: str | None = None

    @classmethod
    def from_result(cls, r: RoundResult) -> SiteRoundReport:
        a = r.accounting
        return cls(site=r.site, ok=True, n_k=r.n_k, sample_rate=a.sample_rate,
                   noise_multiplier=a.noise_multiplier, steps=a.steps, delta=a.delta,
                   epsilon=a.epsilon, target_epsilon=a.target_epsilon,
                   adjacency=a.adjacency, accountant=a.accountant, guarantee=a.claim(),
                   ledger_epsilon=a.ledger_epsilon, count_noise=a.count_noise)


class RoundReport(BaseModel):
    round: int
    sites: list[SiteRoundReport]
    auc: float | None = None
    loss: float | None = None
    #: the task's metrics on the researcher's validation data (`researcher.evaluate`)
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float
    #: weights moved over the sites' endpoints in this round (uploads and downloads)
    transfer_mb: float = 0.0
    #: their mean rate per transfer, MB/s (MB = 2**20 bytes)
    transfer_mb_per_s: float = 0.0


class RunReport(BaseModel):
    plan: str
    plan_hash: str
    rounds: list[RoundReport] = Field(default_factory=list)
