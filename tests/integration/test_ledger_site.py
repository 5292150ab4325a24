"""Against a real datasite: side channels closed, crash safety, and the privacy ledger's
edge under parallel triggers."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from policies.contract import privacy
from researcher.federation import (
    Federation,
    initial_weights,
)
from sites.common.syft_client import quiet
from sites.governance.store import Governance
from sites.operator import lifecycle
from sites.review import console
from tests.support.plans import make_plan
from tests.support.sites import as_reviewer, one_site

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "ledger-site-pw-42"
SHAPE = (8, 8, 8)

BROKEN = '''
class Broken(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        assert x.mean(dim=(1, 2, 3, 4)) > 1e12, x
        return self.head(x.mean(dim=(2, 3, 4)))
'''

@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring, repo_root):
    with one_site(tmp_path_factory.mktemp("ledger"), "delta",
                  repo_root / "tests" / "policies" / "ledger.yaml", EMAIL, PASSWORD, n=32, seed=4,
                  shape=SHAPE) as env:
        yield env


def approved(fed, plan, timeout_s=180.0, site_dir=None) -> None:
    deadline = time.monotonic() + timeout_s
    while fed.status(plan)["delta"].status != "approved":
        if time.monotonic() > deadline:
            failing = [(c.rule, c.seen, c.message) for v in console.list_requests(site_dir)
                       if v.plan == fed.bind(plan) for c in v.failing] if site_dir else "?"
            raise AssertionError(f"plan was not approved automatically: {failing}")
        time.sleep(1.0)


def plan_of(name, version, rounds, epsilon, **kw):
    p = make_plan(name=name, version=version, rounds=rounds, epsilon=epsilon, **kw)
    return p.model_copy(update={"batch_size": 8})


def _visible_text(client) -> str:
    """Everything a researcher can read back through the syft APIs they can call."""
    chunks = []
    probes = {
        "requests": lambda: [(str(r), str(r.status), str(r.code), str(r.code.status),
                              str(getattr(r.code, "status_dict", ""))) for r in
                             client.requests.get_all()],
        "code": lambda: [str(c) for c in client.code.get_all()],
        "jobs": lambda: [(str(j), str(getattr(j, "logs", lambda: "")()))
                         for j in client.jobs.get_all()],
        "notifications": lambda: [str(n) for n in client.notifications.get_all()],
        "logs": lambda: [str(x) for x in client.api.services.log.get_all()],
        "outputs": lambda: [str(o) for o in client.api.services.output.get_all()],
    }
    for name, probe in probes.items():
        with quiet() as captured:
            try:
                chunks.append(f"{name}: {probe()}")
            except Exception as exc:
                chunks.append(f"{name}: {type(exc).__name__}: {exc}")
        chunks.append(captured.getvalue())
    return "\n".join(chunks)


def test_data_dependent_model_is_refused_at_review_with_the_reason(site):
    """Python that branches on the batch cannot become a graph: denied, never trained."""
    fed, d = site["fed"], site["dir"]
    plan = plan_of("branchy", 1, 1, 0.5, source=BROKEN, class_name="Broken")
    fed.submit(plan)
    deadline = time.monotonic() + 180
    while (status := fed.status(plan)["delta"]).status != "denied":
        assert status.status != "approved" and time.monotonic() < deadline, status
        time.sleep(1.0)
    assert "training.graph" in (status.reason or "")
    assert Governance(d).runs(fed.bind(plan).plan_hash) == []


def test_killed_site_mid_round_keeps_the_charge_and_continues(site):
    fed, d = site["fed"], site["dir"]
    plan = plan_of("crashy", 1, 2, 0.5)
    plan = plan.model_copy(update={"local_epochs": 10})
    fed.submit(plan)
    approved(fed, plan, site_dir=site["dir"])
    bound = fed.bind(plan)
    gov = Governance(d)
    caller = threading.Thread(target=lambda: _ignore(fed.run_site_round, "delta", bound,
                                                     initial_weights(bound)), daemon=True)
    caller.start()
    deadline = time.monotonic() + 60
    while not [r for r in gov.runs(bound.plan_hash) if r.status == "running"]:
        assert time.monotonic() < deadline, "run never started"
        time.sleep(0.05)
    pid = int((d / "run" / "server.pid").read_text())
    os.killpg(pid, signal.SIGKILL)  # the server and its training child, mid-round
    caller.join(timeout=60)
    lifecycle.up(d)
    runs = gov.runs(bound.plan_hash)
    assert [r.status for r in runs] == ["aborted"]
    # the run may have trained on the data before the kill: its charge stays (issue 15)
    assert [r.status for r in gov.ledger_history(EMAIL, "brain-mri-pet")
            if r.plan_hash == bound.plan_hash] == ["aborted"]
    assert "run.aborted" in [e["event"] for e in gov.audit_entries()]
    assert gov.verify_audit()[0]
    fresh = Federation(site["config"]).connect()
    site["fed"] = fresh
    result = fresh.run_site_round("delta", bound, initial_weights(bound))
    assert result.round == 2  # the aborted round counted
    aborted_only = [runs[0].noise]
    assert result.accounting.epsilon > privacy.Accounting(
        result.accounting.accountant, result.accounting.adjacency, n=1).epsilon(
        aborted_only, result.accounting.delta)  # both rounds are in the plan's ε


def _ignore(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass


def test_the_data_owner_audits_a_plans_releases_and_the_researcher_never_sees_it(site):
    import json

    from typer.testing import CliRunner

    from sites.entrypoint import app

    fed, d = site["fed"], site["dir"]
    plan = plan_of("audited", 1, 1, 1.0)  # leaves room for the budget-edge plans below
    fed.submit(plan)
    approved(fed, plan, site_dir=site["dir"])
    bound = fed.bind(plan)
    result = fed.run_site_round("delta", bound, initial_weights(bound))
    gov = Governance(d)
    assert gov.dataset("brain-mri-pet")["n"] == 24  # 32 published, a quarter held out
    ran = CliRunner().invoke(app, ["console", "audit-privacy", bound.plan_hash[:12],
                                   "--site", str(d), "--json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.output)
    f = report["figures"]
    assert (f["members"], f["nonmembers"]) == (24, 8)
    assert 0.0 <= f["auc"] <= 1.0 and f["max_auc_allowed"] > 0.5
    assert report["plan_epsilon"] == pytest.approx(result.accounting.epsilon, rel=1e-6)
    assert report["epsilon"] >= report["plan_epsilon"]  # the whole ledger up to it
    assert report["adjacency"] == "replace_one" and report["warnings"] == []
    [entry] = [e for e in gov.audit_entries() if e["event"] == "privacy.audited"]
    assert entry["subject"] == bound.plan_hash
    seen = _visible_text(fed.client("delta"))  # nothing of it reaches the researcher
    assert "privacy.audited" not in seen and "tpr_at_1pct" not in seen
    text = CliRunner().invoke(app, ["console", "audit-privacy", "no-such-plan",
                                    "--site", str(d)])
    assert text.exit_code == 1 and "no plan 'no-such-plan'" in text.output


def test_parallel_triggers_at_the_budget_edge_never_overspend(site):
    fed, d = site["fed"], site["dir"]
    gov = Governance(d)
    first = plan_of("first", 1, 2, 6.0)
    fed.submit(first)
    approved(fed, first, site_dir=site["dir"])
    fed.run(first)
    second = plan_of("second", 1, 3, 6.0)
    fed.submit(second)
    bound = fed.bind(second)
    view = None
    deadline = time.monotonic() + 60
    while view is None or not gov.verdict_seen(view.id, view.policy_hash):
        assert time.monotonic() < deadline
        time.sleep(1.0)
        view = next((v for v in console.list_requests(d) if v.plan == bound), None)
    assert "privacy.epsilon_total" in [c.rule for c in view.failing]
    console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"), override=True,
                    note="ledger edge test")

    cap = 8.0
    history = [(r.noise_multiplier, r.sample_rate, r.steps)
               for r in gov.ledger_history(EMAIL, "brain-mri-pet")]
    n = int(gov.dataset("brain-mri-pet")["n"])  # the training part (a quarter held out)
    ledger_terms = privacy.Accounting("pld", "replace_one", n=n)  # the site publishes N
    shape = privacy.run_shape(n, bound.batch_size, bound.local_epochs)
    sigma = privacy.derive_noise_multiplier(6.0, 1e-5, shape, 3, ledger_terms)
    fits = 0
    while fits < 3 and ledger_terms.epsilon(
            history + [(sigma, shape.sample_rate, shape.steps)] * (fits + 1), 1e-5) <= cap:
        fits += 1
    assert fits < 3  # the test is at the edge: the plan's own 3 rounds do not all fit

    weights = initial_weights(bound)
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda _: _outcome(fed, bound, weights), range(3)))
    # one round of a plan at a time: a trigger while one runs is refused as busy (nothing
    # charged) or, once the budget is spent, as exhausted; never run beside it
    assert all(o == "ok" or "already running" in o
               or "privacy budget exhausted for brain-mri-pet: spent" in o for o in outcomes)
    assert 1 <= outcomes.count("ok") <= fits
    for _ in range(3):  # then one after the other, up to the budget's refusal
        outcomes.append(_outcome(fed, bound, weights))
        if "privacy budget exhausted for brain-mri-pet: spent" in outcomes[-1]:
            break
    released = [o for o in outcomes if o == "ok"]
    assert len(released) == fits
    assert "privacy budget exhausted for brain-mri-pet: spent" in outcomes[-1]
    spent = ledger_terms.epsilon([r.noise for r in gov.ledger_history(EMAIL, "brain-mri-pet")],
                                 1e-5)
    assert spent <= cap
    assert gov.verify_audit()[0]


def _outcome(fed, plan, weights) -> str:
    try:
        fed.run_site_round("delta", plan, weights)
        return "ok"
    except Exception as exc:
        return str(exc)
