"""The round's wire format: what a site may send and what the researcher accepts."""

from __future__ import annotations

import numpy as np
import pytest

from policies.contract.wire import (
    WIRE_VERSION,
    FailureCode,
    RoundAccounting,
    RoundFailure,
    RoundResult,
    SiteFailed,
    parse_round,
    weights_digest,
)

EXPECTED = {"conv.weight": np.zeros((4, 2), np.float32), "head.bias": np.zeros(1, np.float32)}


def result(**changes) -> dict:
    params = {k: np.full_like(v, 0.5) for k, v in EXPECTED.items()}
    doc = RoundResult(
        site="st-agnes", round=1, rounds=4, plan_hash="ab" * 32, params=params, n_k=480,
        device="cpu", weights_sha256=weights_digest(params),
        accounting=RoundAccounting(sample_rate=0.1, noise_multiplier=1.1, steps=10,
                                   round_steps=10, delta=1e-5, epsilon=2.0, target_epsilon=8,
                                   accountant="pld", adjacency="replace_one",
                                   ledger_epsilon=2.5, ledger_delta=1e-5,
                                   max_grad_norm=1.0)).to_wire()
    doc.update(changes)
    return doc


def test_a_released_round_survives_the_wire_and_matches_its_digest():
    parsed = parse_round(result(), EXPECTED)
    assert parsed.site == "st-agnes" and parsed.accounting.epsilon == 2.0
    assert weights_digest(parsed.params) == parsed.weights_sha256
    assert set(parsed.params) == set(EXPECTED)


@pytest.mark.parametrize("bad,reason", [
    ({"medsyft": 1}, "wire version"),  # a site of the layout before the stated relation
    ({"params": {"conv.weight": np.zeros((4, 2), np.float32)}}, "do not match the model"),
    ({"params": {"conv.weight": np.zeros((2, 4), np.float32),
                 "head.bias": np.zeros(1, np.float32)}}, "wrong shape"),
    ({"params": {"conv.weight": np.full((4, 2), np.nan, np.float32),
                 "head.bias": np.zeros(1, np.float32)}}, "not finite"),
    ({"surprise": "field"}, "invalid result"),
    ({"device": "tpu"}, "invalid result"),
    ({"n_k": 0}, "invalid result"),
    ({"n_k": 10**30}, "invalid result"),  # would outweigh every other site in FedAvg
    ({"train_seconds": 1.0}, "invalid result"),  # timings are not part of a result
    ({"weights_sha256": "0" * 64}, "do not match their digest"),
    ({"params": {"conv.weight": np.zeros((4, 2), np.complex128),
                 "head.bias": np.zeros(1, np.float32)}}, "not float32"),
    ({"params": {"conv.weight": np.zeros((4, 2), "S8"),
                 "head.bias": np.zeros(1, np.float32)}}, "not float32"),
    ({"site": "[/x] st-agnes"}, "invalid result"),  # rendered as markup by the client once
    ({"plan_hash": "not-this-plan"}, "invalid result"),
])
def test_an_answer_that_is_not_a_valid_result_is_refused(bad, reason):
    with pytest.raises(SiteFailed, match=reason) as exc:
        parse_round(result(**bad), EXPECTED)
    assert exc.value.code is None and exc.value.retry is False


def test_not_a_dict_is_refused():
    for payload in (None, [1], "ok", b"\x00"):
        with pytest.raises(SiteFailed):
            parse_round(payload, EXPECTED)


@pytest.mark.parametrize("code", list(FailureCode))
def test_a_failure_carries_its_code_and_whether_to_retry(code):
    wire = RoundFailure(code=code, error="why").to_wire()
    assert wire["medsyft"] == WIRE_VERSION and wire["ok"] is False
    with pytest.raises(SiteFailed, match="why") as exc:
        parse_round(wire, EXPECTED)
    assert exc.value.code is code and exc.value.retry is code.retry


def test_only_transient_failures_are_worth_a_retry():
    retry = {c for c in FailureCode if c.retry}
    assert retry == {FailureCode.TIMEOUT, FailureCode.OUT_OF_MEMORY, FailureCode.INTERNAL,
                     FailureCode.BUSY}
    assert not FailureCode.BUDGET_EXHAUSTED.retry and not FailureCode.ROUNDS_EXHAUSTED.retry


def test_a_failure_without_a_valid_code_keeps_its_message_and_is_not_retried():
    v = WIRE_VERSION
    for payload in ({"medsyft": v, "ok": False, "error": "all 4 rounds of this plan have "
                     "been run"},  # an older site
                    {"medsyft": v, "ok": False, "code": "made-up", "error": "all 4 rounds"},
                    {"medsyft": v, "ok": False, "code": "internal", "error": "all 4 rounds",
                     "extra": 1}):
        with pytest.raises(SiteFailed, match="all 4 rounds") as exc:
            parse_round(payload, EXPECTED)
        assert exc.value.code is None and exc.value.retry is False


def test_a_sites_words_reach_the_researcher_without_control_characters():
    with pytest.raises(SiteFailed) as exc:
        parse_round(RoundFailure(code=FailureCode.POLICY, error="no\x1b[2K\x07 way").to_wire(),
                    EXPECTED)
    assert "\x1b" not in exc.value.message and "\x07" not in exc.value.message


def test_a_failure_message_is_bounded():
    with pytest.raises(SiteFailed) as exc:
        parse_round(RoundFailure(code=FailureCode.POLICY, error="x" * 1500).to_wire(), EXPECTED)
    assert len(exc.value.message) <= 300


@pytest.mark.parametrize("field,bad", [
    ("epsilon", float("inf")), ("delta", float("nan")), ("delta", 2.0),
    ("target_epsilon", float("-inf")), ("max_grad_norm", float("nan")),
    ("noise_multiplier", float("inf")), ("accountant", "x" * 100_000),
    ("adjacency", "replace_some"), ("count_noise", -1.0)])
def test_accounting_must_be_finite_and_in_range(field, bad):
    doc = result()
    doc["accounting"] = doc["accounting"] | {field: bad}
    with pytest.raises(SiteFailed, match="invalid result"):
        parse_round(doc, EXPECTED)


def test_an_answer_must_name_the_site_and_plan_that_were_asked():
    assert parse_round(result(), EXPECTED, site="st-agnes", plan_hash="ab" * 32)
    with pytest.raises(SiteFailed, match="another site"):
        parse_round(result(), EXPECTED, site="riverside")
    with pytest.raises(SiteFailed, match="another plan"):
        parse_round(result(), EXPECTED, plan_hash="cd" * 32)
