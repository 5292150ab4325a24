"""What comes back from a site and what a federated run reports, as pydantic models.

`SiteResult.from_wire` is where the researcher validates a site's answer: a
plain dict on the syft wire (syft cannot carry arbitrary pydantic models),
checked here field by field before anything is averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Accounting(BaseModel):
    """Privacy accounting of a site for one plan, cumulative up to this round."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: float = Field(gt=0, le=1)
    noise_multiplier: float = Field(gt=0)
    steps: int = Field(ge=1, description="DP-SGD steps of this plan at this site so far")
    round_steps: int = Field(ge=1, description="steps of this round")
    delta: float
    epsilon: float = Field(ge=0, description="ε spent by this plan at this site so far")
    target_epsilon: float
    accountant: str
    max_grad_norm: float


class SiteResult(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    site: str
    round: int
    n_k: int | None = Field(None, ge=1, description="None when the site's policy hides it")
    seconds: float = Field(description="the site's runtime for this round, training included")
    train_seconds: float | None = Field(None, description="DP-SGD training alone")
    device: str
    weights_sha256: str
    accounting: Accounting
    params: dict[str, Any] = Field(repr=False)

    @classmethod
    def from_wire(cls, payload: Any, expected: dict[str, np.ndarray]) -> SiteResult:
        """Validate a site's answer against the global model's parameter names and shapes."""
        if not isinstance(payload, dict) or payload.get("medsyft") != 1:
            raise ValueError("answer is not a medsyft result")
        if not payload.get("ok"):
            raise ValueError(str(payload.get("error", "site reported a failure"))[:300])
        fields = {k: payload[k] for k in ("site", "round", "n_k", "seconds", "device",
                                          "weights_sha256", "accounting", "params")}
        fields["train_seconds"] = payload.get("train_seconds")
        params = fields["params"]
        if not isinstance(params, dict) or set(params) != set(expected):
            raise ValueError("returned parameters do not match the model")
        for name, ref in expected.items():
            arr = params[name]
            if not isinstance(arr, np.ndarray) or arr.shape != ref.shape:
                raise ValueError(f"returned parameter {name} has the wrong shape")
            if not np.isfinite(arr).all():
                raise ValueError(f"returned parameter {name} is not finite")
        return cls.model_validate(fields)


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
    seconds: float | None = None
    train_seconds: float | None = None
    error: str | None = None

    @classmethod
    def from_result(cls, r: SiteResult) -> SiteRoundReport:
        a = r.accounting
        return cls(site=r.site, ok=True, n_k=r.n_k, sample_rate=a.sample_rate,
                   noise_multiplier=a.noise_multiplier, steps=a.steps, delta=a.delta,
                   epsilon=a.epsilon, target_epsilon=a.target_epsilon, seconds=r.seconds,
                   train_seconds=r.train_seconds)


class RoundReport(BaseModel):
    round: int
    sites: list[SiteRoundReport]
    auc: float | None = None
    loss: float | None = None
    seconds: float


class RunReport(BaseModel):
    plan: str
    plan_hash: str
    rounds: list[RoundReport] = Field(default_factory=list)
