"""What one round at a site sends back to the researcher, defined once for both sides.

syft carries plain values only, so a round's answer travels as a dict; this module is
its only definition. The site builds a `RoundResult` or a `RoundFailure` and sends
`to_wire()`; the researcher turns the dict back with `parse_round`, which checks every
field and the parameters' names and shapes against the weights sent out, before
anything is averaged. A failure carries a `FailureCode`, which says whether trying
again makes sense; nobody matches English sentences.

Must never hold anything but what the site's release filter let through: parameter
values, counts the policy allows and the privacy accounting. No timings: a round's
duration depends on the Poisson batch sizes (and may on the data); the researcher sees
only their own clock, which the site's policy may pad (`release.pad_seconds`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.contract import transfer
from policies.contract.claims import guarantee
from policies.contract.errors import MedsyftError, format_errors, printable

#: Version of the wire layout; a site and a client agree on it or refuse each other.
WIRE_VERSION = 3
#: More subjects than any cohort has: a larger count would let one site outweigh the rest.
MAX_COHORT = 10_000_000


class FailureCode(str, Enum):
    """Why a round released nothing, and whether a retry can help."""

    MOCK = "mock"                          # syft's second call, on the mock: no training
    INVALID = "invalid"                    # the plan, the input or the weights are malformed
    NOT_APPROVED = "not_approved"          # no approval at this site (or no longer)
    POLICY = "policy"                      # the current policy refuses the plan
    ROUNDS_EXHAUSTED = "rounds_exhausted"  # every round of the plan has been run
    BUDGET_EXHAUSTED = "budget_exhausted"  # the researcher's ε budget would be exceeded
    MODEL = "model"                        # the model failed to load, fit or run
    RELEASE = "release"                    # the release filter rejected the output
    TIMEOUT = "timeout"                    # training ran past the site's time limit
    OUT_OF_MEMORY = "oom"
    INTERNAL = "internal"                  # a fault at the site; see the site's log
    BUSY = "busy"                          # a round of the plan is running at the site

    @property
    def retry(self) -> bool:
        """True where the same round, sent again unchanged, may succeed."""
        return self in (FailureCode.TIMEOUT, FailureCode.OUT_OF_MEMORY, FailureCode.INTERNAL,
                        FailureCode.BUSY)


class RoundAccounting(BaseModel):
    """Privacy accounting of a site for one plan, cumulative up to this round."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: float = Field(gt=0, le=1)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    steps: int = Field(ge=1, description="DP-SGD steps of this plan at this site so far")
    round_steps: int = Field(ge=1, description="steps of this round")
    delta: float = Field(gt=0, lt=1)
    epsilon: float = Field(ge=0, allow_inf_nan=False,
                           description="ε spent by this plan at this site so far")
    target_epsilon: float = Field(gt=0, allow_inf_nan=False)
    accountant: Literal["rdp", "prv", "pld"] = Field(
        description="the site's ledger accountant: σ was derived with it, ε is its value")
    adjacency: Literal["add_remove", "replace_one"] = Field(
        description="the neighbouring relation ε is stated under")
    ledger_epsilon: float = Field(
        ge=0, allow_inf_nan=False,
        description="ε of the researcher's whole ledger on this dataset at this site (all "
                    "their plans, every charged run), at ledger_delta")
    ledger_delta: float = Field(gt=0, lt=1)
    count_noise: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="add/remove: std of the DP count of N that q derives from (its ε is "
                    "included)")
    max_grad_norm: float = Field(gt=0, allow_inf_nan=False)

    def claim(self) -> str:
        """"ε … at δ …, per subject, under <relation>"."""
        return guarantee(self.epsilon, self.delta, self.adjacency)


class RoundResult(BaseModel):
    """A released round: DP-noised parameters and what the site may say about them."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    medsyft: Literal[3] = WIRE_VERSION
    ok: Literal[True] = True
    site: str = Field(pattern=r"^[a-z][a-z0-9-]{1,39}$")
    round: int = Field(ge=1)
    rounds: int = Field(ge=1)
    plan_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    n_k: int | None = Field(None, ge=1, le=MAX_COHORT,
                            description="None when the site's policy hides it")
    device: Literal["cpu", "cuda"]
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    accounting: RoundAccounting
    params: dict[str, Any] | None = Field(
        None, repr=False, description="the released parameters; None when they wait at the "
                                      "site's weights endpoint (fetched by their digest)")
    weights_bytes: int | None = Field(None, gt=8, description="size of the released "
                                                              "safetensors file")

    def to_wire(self) -> dict[str, Any]:
        """The plain dict syft carries (numpy arrays stay arrays)."""
        return self.model_dump()


class RoundFailure(BaseModel):
    """A round that released nothing; `error` is one line safe for the researcher."""

    model_config = ConfigDict(extra="forbid")

    medsyft: Literal[3] = WIRE_VERSION
    ok: Literal[False] = False
    code: FailureCode
    error: str = Field(max_length=2000)
    mock: bool = False

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SiteFailed(MedsyftError):
    """A site answered a round with a failure, or with an answer that is not valid.

    Args:
        message: the site's safe message, or what was wrong with its answer.
        code: the failure's code; `None` when the answer itself was malformed.
    """

    def __init__(self, message: str, code: FailureCode | None = None) -> None:
        super().__init__(printable(message, 300),
                         retry=code.retry if code is not None else False)
        self.code = code


def weights_digest(params: dict[str, np.ndarray]) -> str:
    """SHA-256 of the parameters' canonical safetensors bytes (`transfer.encode`): the
    digest of the very file the side channel moves, the audit records and a researcher
    can hash."""
    return transfer.digest(transfer.encode(params))


def parse_round(payload: Any, expected: dict[str, np.ndarray], site: str | None = None,
                plan_hash: str | None = None) -> RoundResult:
    """A site's answer as a `RoundResult`, checked against the weights sent out.

    Args:
        payload: what syft returned for the round (untrusted).
        expected: the global weights of this round: names and shapes the result must match.
        site: the site asked (the answer must name it: a site cannot pose as another).
        plan_hash: the plan asked for (an answer for another plan is refused).

    Returns:
        The validated result; its parameters are finite arrays of the expected shapes.

    Raises:
        SiteFailed: the site reported a failure (with its code), or the answer is not a
            valid medsyft result of this wire version.
    """
    if not isinstance(payload, dict) or payload.get("medsyft") != WIRE_VERSION:
        raise SiteFailed("answer is not a medsyft result of wire version "
                         f"{WIRE_VERSION}")
    if payload.get("ok") is not True:
        try:
            failure = RoundFailure.model_validate(payload)
        except ValidationError:  # an older site (no code) or a malformed failure
            raise SiteFailed(str(payload.get("error", "site reported a failure"))) from None
        raise SiteFailed(failure.error, failure.code)
    params = payload.get("params")
    if params is not None:
        check_params(params, expected)
    elif not isinstance(payload.get("weights_bytes"), int):
        raise SiteFailed("the answer carries neither parameters nor their size")
    try:
        result = RoundResult.model_validate(payload)
    except ValidationError as exc:
        raise SiteFailed(f"invalid result: {format_errors(exc)}") from None
    if result.params is not None and weights_digest(result.params) != result.weights_sha256:
        raise SiteFailed("returned parameters do not match their digest")
    if site is not None and result.site != site:
        raise SiteFailed("the answer names another site")
    if plan_hash is not None and result.plan_hash != plan_hash:
        raise SiteFailed("the answer is for another plan")
    return result


def check_params(params: Any, expected: dict[str, np.ndarray]) -> None:
    """Raise `SiteFailed` unless `params` are finite float32 arrays of exactly the names
    and shapes of `expected`."""
    if not isinstance(params, dict) or set(params) != set(expected):
        raise SiteFailed("returned parameters do not match the model")
    for name, ref in expected.items():
        arr = params[name]
        if not isinstance(arr, np.ndarray) or arr.shape != ref.shape:
            raise SiteFailed(f"returned parameter {name} has the wrong shape")
        if arr.dtype != np.float32:
            raise SiteFailed(f"returned parameter {name} is not float32")
        if not np.isfinite(arr).all():
            raise SiteFailed(f"returned parameter {name} is not finite")


def attach_released(result: RoundResult, blob: bytes | bytearray,
                    expected: dict[str, np.ndarray]) -> RoundResult:
    """`result` with the parameters fetched from the site's endpoint, checked: the bytes'
    SHA-256 must be the one the site's answer named, the arrays the model's.

    Raises:
        SiteFailed: another file than the one released, or one that is not the model's.
    """
    if len(blob) != result.weights_bytes or transfer.digest(blob) != result.weights_sha256:
        raise SiteFailed("the fetched weights are not the ones the site released (digest)")
    try:
        params = transfer.decode(blob)
    except transfer.TransferRefused as exc:
        raise SiteFailed(f"fetched weights: {exc}") from None
    check_params(params, expected)
    return result.model_copy(update={"params": params})

