"""The privacy ledger: composition across plans, reservation, give-back, atomic refusal."""

from __future__ import annotations

import re
import threading

import pytest

from policies.contract import privacy
from policies.contract.errors import Refused
from sites.governance.store import Budget, Governance
from tests.support.reference import reference_epsilon

DELTA = 1e-5


def budget(cap: float) -> Budget:
    return Budget(researcher="ada@x.org", dataset="brain", cap=cap,
                  epsilon_of=lambda h: privacy.epsilon_spent(h, DELTA))


def test_ledger_composes_every_released_run_of_all_plans(tmp_path):
    gov = Governance(tmp_path)
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


def test_failed_or_aborted_runs_give_their_reservation_back(tmp_path):
    gov = Governance(tmp_path)
    failed = gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(100))
    gov.finish_run(failed.id, released=False, actor="t", category="model forward raised")
    gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(100))  # left running: a crash
    assert gov.abort_running() == 1
    assert gov.ledger_history("ada@x.org", "brain", ("released", "running")) == []
    events = [e["event"] for e in gov.audit_entries()]
    assert events.count("budget.reserved") == 2 and events.count("budget.returned") == 2


def test_run_beyond_the_budget_is_refused_with_a_readable_reason(tmp_path):
    gov = Governance(tmp_path)
    one = privacy.epsilon_spent([(1.0, 0.1, 10)], DELTA)
    cap = one * 1.01  # room for one run, not two (composition grows ε by more than 1%)
    run = gov.begin_run("p", 5, 1.0, 0.1, 10, "t", budget=budget(cap))
    gov.finish_run(run.id, released=True, actor="t")
    message = re.escape(f"privacy budget exhausted for brain: spent {one:.2f} of {cap:g}")
    with pytest.raises(Refused, match=message):
        gov.begin_run("q", 5, 1.0, 0.1, 10, "t", budget=budget(cap))


def test_parallel_reservations_at_the_edge_never_overspend(tmp_path):
    gov = Governance(tmp_path)
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
