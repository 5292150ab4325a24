"""The privacy ledger: composition across plans, reservation, give-back, atomic refusal;
on SQLite and on a real PostgreSQL server (`open_governance`)."""

from __future__ import annotations

import re
import threading

import pytest

from policies.contract import privacy
from policies.contract.errors import Refused
from sites.governance.store import Budget
from tests.support.reference import reference_epsilon

DELTA = 1e-5


def budget(cap: float) -> Budget:
    return Budget(researcher="ada@x.org", dataset="brain", cap=cap,
                  epsilon_of=lambda h: privacy.epsilon_spent(h, DELTA))


def test_ledger_composes_every_released_run_of_all_plans(tmp_path, open_governance):
    gov = open_governance(tmp_path)
    shapes = {"plan-a": (1.1, 0.1, 20), "plan-b": (0.9, 0.05, 40)}
    for plan, (s, q, k) in shapes.items():
        for _ in range(2):
            run = gov.begin_run(plan, 5, s, q, k, "t", budget=budget(100))
            gov.finish_run(run.id, released=True, actor="t")
    history = [(r.noise_multiplier, r.sample_rate, r.steps)
               for r in gov.ledger_history("ada@x.org", "brain")]
    assert len(history) == 4
    expected = reference_epsilon([shapes["plan-a"]] * 2 + [shapes["plan-b"]] * 2, DELTA)
    assert privacy.epsilon_spent(history, DELTA) == pytest.approx(expected, rel=1e-9)


def test_failed_and_aborted_runs_stay_charged_and_count_as_rounds(tmp_path, open_governance):
    """A run that began reached the private data: whether it failed can depend on that data,
    so a failure is charged like a release and uses up a round (red team, issue 15)."""
    gov = open_governance(tmp_path)
    failed = gov.begin_run("p", 3, 1.0, 0.1, 10, "t", budget=budget(100))
    gov.finish_run(failed.id, released=False, actor="t", category="model forward raised")
    gov.begin_run("p", 3, 1.0, 0.1, 10, "t", budget=budget(100))  # left running: a crash
    assert gov.abort_running() == 1
    charged = gov.ledger_history("ada@x.org", "brain")
    assert [r.status for r in charged] == ["failed", "aborted"]
    assert gov.charged_history("p") == [(1.0, 0.1, 10)] * 2
    assert privacy.epsilon_spent([r.noise for r in charged], DELTA) == pytest.approx(
        reference_epsilon([(1.0, 0.1, 10)] * 2, DELTA), rel=1e-9)
    third = gov.begin_run("p", 3, 1.0, 0.1, 10, "t", budget=budget(100))
    assert third.round == 3  # the failed and the aborted run were rounds 1 and 2
    gov.finish_run(third.id, released=True, actor="t")
    with pytest.raises(Refused, match="all 3 rounds"):
        gov.begin_run("p", 3, 1.0, 0.1, 10, "t", budget=budget(100))
    events = [e["event"] for e in gov.audit_entries()]
    assert "budget.returned" not in events and events.count("budget.committed") == 3


def test_a_failed_run_is_charged_against_the_cap(tmp_path, open_governance):
    gov = open_governance(tmp_path)
    cap = privacy.epsilon_spent([(1.0, 0.1, 10)], DELTA) * 1.01  # room for one run only
    run = gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(cap))
    gov.finish_run(run.id, released=False, actor="t", category="timed out")
    with pytest.raises(Refused, match="budget exhausted"):
        gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(cap))


def test_run_beyond_the_budget_is_refused_with_a_readable_reason(tmp_path, open_governance):
    gov = open_governance(tmp_path)
    one = privacy.epsilon_spent([(1.0, 0.1, 10)], DELTA)
    cap = one * 1.01  # room for one run, not two (composition grows ε by more than 1%)
    run = gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(cap))
    gov.finish_run(run.id, released=True, actor="t")
    message = re.escape(f"privacy budget exhausted for brain: spent {one:.2f} of {cap:g}")
    with pytest.raises(Refused, match=message):
        gov.begin_run("q", 5, 1.0, 0.1, 10, "t", budget=budget(cap))


def test_parallel_reservations_at_the_edge_never_overspend(tmp_path, open_governance):
    gov = open_governance(tmp_path)
    per_run = privacy.epsilon_spent([(1.0, 0.1, 10)], DELTA)
    cap = privacy.epsilon_spent([(1.0, 0.1, 10)] * 3, DELTA) + 1e-6  # exactly 3 fit
    granted, refused = [], []
    barrier = threading.Barrier(8)

    def trigger(i: int) -> None:
        barrier.wait()
        try:
            granted.append(gov.begin_run(f"plan-{i}", 5, 1.0, 0.1, 10, "t", budget=budget(cap)))
        except Refused:
            refused.append(i)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3 and len(refused) == 5
    reserved = gov.ledger_history("ada@x.org", "brain", ("running",))
    assert privacy.epsilon_spent([(r.noise_multiplier, r.sample_rate, r.steps)
                                     for r in reserved], DELTA) <= cap
    assert per_run > 0


def test_a_plan_runs_one_round_at_a_time_and_each_states_every_run_before_it(
        tmp_path, open_governance):
    """Red team, issue 17: two rounds of one plan triggered together both started; the
    second stated the plan's ε from the finished runs only (5.31 after 8 steps that
    dp-accounting puts at 7.99), and a GAN's second round started from the researcher's
    discriminator, not the one the first round trained. Now a plan's second round is
    refused (retryable) while its first runs, and a run's history is every run up to it."""
    from policies.contract.wire import FailureCode

    gov = open_governance(tmp_path)
    first = gov.begin_run("plan-a", 5, 1.0, 0.1, 10, "t", budget=budget(100))
    with pytest.raises(Refused, match="already running") as refused:
        gov.begin_run("plan-a", 5, 1.0, 0.1, 10, "t", budget=budget(100))
    assert refused.value.code is FailureCode.BUSY and refused.value.code.retry
    other = gov.begin_run("plan-b", 5, 1.0, 0.1, 10, "t", budget=budget(100))  # other plans
    assert gov.history_through(first) == [(1.0, 0.1, 10)]  # itself, while it runs
    gov.finish_run(first.id, released=True, actor="t")
    gov.finish_run(other.id, released=True, actor="t")
    second = gov.begin_run("plan-a", 5, 1.2, 0.1, 20, "t", budget=budget(100))
    assert second.round == 2  # the refused trigger took no round
    assert gov.history_through(second) == [(1.0, 0.1, 10), (1.2, 0.1, 20)]
    assert gov.history_through(first) == [(1.0, 0.1, 10)]


def test_a_rounds_ledger_covers_the_researchers_other_plans_running_beside_it(
        tmp_path, open_governance):
    """Red team, issue 17: a round's stated ledger ε composed the finished runs only, so a
    round of another plan of the same researcher, running at the same time, was left out
    (5.88 stated where both runs reaching the data make 7.90)."""
    gov = open_governance(tmp_path)
    a = gov.begin_run("plan-a", 5, 1.0, 0.1, 10, "t", budget=budget(100))
    b = gov.begin_run("plan-b", 5, 0.9, 0.2, 10, "t", budget=budget(100))
    gov.finish_run(a.id, released=True, actor="t")
    assert gov.ledger_through(b, "ada@x.org", "brain") == [(1.0, 0.1, 10), (0.9, 0.2, 10)]
    assert gov.ledger_through(a, "ada@x.org", "brain") == [(1.0, 0.1, 10)]  # b came after
    later = gov.begin_run("plan-c", 5, 1.0, 0.1, 5, "t", budget=budget(100))  # b still runs
    assert len(gov.ledger_through(later, "ada@x.org", "brain")) == 3
