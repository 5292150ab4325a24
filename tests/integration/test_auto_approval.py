"""Policy-driven review against a real datasite: automatic approval, overrides, four-eyes,
researcher pre-check and a policy changed in the middle of a plan."""

from __future__ import annotations

import time

import pytest

from policies.schema import load_policy
from sites.governance.store import Governance
from sites.review import console
from tests.support.plans import make_plan
from tests.support.sites import as_reviewer, one_site, wait_for

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "auto-approval-pw-1"
SHAPE = (8, 8, 8)


@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring, repo_root):
    with one_site(tmp_path_factory.mktemp("auto"), "gamma",
                  repo_root / "tests" / "policies" / "auto.yaml", EMAIL, PASSWORD, n=40, seed=3,
                  shape=SHAPE) as env:
        yield env


def test_compliant_plan_is_approved_automatically_and_runs(site):
    fed, d = site["fed"], site["dir"]
    plan = make_plan(rounds=2)
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)["gamma"].status == "approved")
    approval = Governance(d).approval(fed.bind(plan).plan_hash)
    assert approval is not None and approval.reviewers == ("policy:auto",)
    methods = [x["method"] for x in Governance(d).decisions()]
    assert methods == ["auto"]
    report = fed.run(plan)
    assert [r.round for r in report.rounds] == [1, 2]
    events = [e["event"] for e in Governance(d).audit_entries()]
    assert {"request.received", "request.verdict", "request.approved"} <= set(events)


def test_researcher_precheck_names_the_rule_a_site_would_fail(site):
    fed = site["fed"]
    ok = fed.check(make_plan(rounds=2, version=9))["gamma"]
    assert not [c.rule for c in ok if c.failed]
    bad = fed.check(make_plan(rounds=5, version=9))["gamma"]
    assert [c.rule for c in bad if c.failed] == ["training.rounds"]
    public = fed.public_policy("gamma")
    assert "lovelace-institute.org" not in str(public) and "dpo" not in str(public)


def test_non_compliant_plan_stays_pending_and_needs_a_recorded_override(site):
    fed, d = site["fed"], site["dir"]
    plan = make_plan(rounds=5, version=2)
    fed.submit(plan)
    bound = fed.bind(plan)
    view = wait_for(lambda: next((v for v in console.list_requests(d)
                                  if v.plan == bound and Governance(d).verdict_seen(
                                      v.id, v.policy_hash)), None))
    time.sleep(3)  # give the steward a further sweep: it must still not approve
    assert fed.status(plan)["gamma"].status == "pending"
    assert [c.rule for c in view.failing] == ["training.rounds"]
    with pytest.raises(console.ConsoleError, match="training.rounds"):
        console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"))
    with pytest.raises(console.ConsoleError, match="needs --reason"):
        console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"), override=True)
    done = console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"), override=True,
                           note="pilot agreed with the ethics board")
    assert done.status == "approved"
    audit = [e for e in Governance(d).audit_entries() if e["event"] == "request.override"]
    assert audit and audit[-1]["details"]["overridden"] == ["training.rounds"]
    assert audit[-1]["details"]["note"] == "pilot agreed with the ethics board"
    site["override_plan"] = plan


def test_policy_changed_mid_plan_stops_it_with_a_readable_reason(site):
    fed, d = site["fed"], site["dir"]
    plan = site["override_plan"]
    results, errors = fed.run_round(fed.bind(plan), fed.weights, retries=0)
    assert set(results) == {"gamma"}  # the override holds under the approved policy
    policy_file = d / "policy.yaml"
    original = policy_file.read_text()
    policy_file.write_text(original.replace("epsilon_per_plan: 8.0", "epsilon_per_plan: 4.0"))
    try:
        results, errors = fed.run_round(fed.bind(plan), fed.weights, retries=0)
        assert results == {}
        assert "policy changed" in errors["gamma"] and "ε target above the cap" in errors["gamma"]
    finally:
        policy_file.write_text(original)


def test_two_approvals_required_means_two_distinct_reviewers(site):
    fed, d = site["fed"], site["dir"]
    policy_file = d / "policy.yaml"
    original = policy_file.read_text()
    policy_file.write_text(original.replace("approval: auto", "approval: manual").replace(
        "approvals_required: 1", "approvals_required: 2"))
    assert load_policy(policy_file)[0].approvals_required == 2
    try:
        plan = make_plan(rounds=1, version=3)
        fed.submit(plan)
        bound = fed.bind(plan)
        view = wait_for(lambda: next((v for v in console.list_requests(d) if v.plan == bound),
                                     None))
        first = console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"))
        assert first.status == "awaiting second approval"
        assert fed.status(plan)["gamma"].status == "pending"
        assert Governance(d).approval(bound.plan_hash) is None
        with pytest.raises(console.ConsoleError, match="different reviewer"):
            console.approve(d, view.id, reviewer=as_reviewer(d, "dpo"))
        with pytest.raises(console.ConsoleError, match="not among the policy's reviewers"):
            console.approve(d, view.id, reviewer=as_reviewer(d, "mallory"))
        second = console.approve(d, view.id, reviewer=as_reviewer(d, "second-dpo"))
        assert second.status == "approved"
        assert set(Governance(d).approval(bound.plan_hash).reviewers) == {
            "dpo@reviewers.test", "second-dpo@reviewers.test"}
        results, errors = fed.run_round(bound, fed.weights, retries=0)
        assert set(results) == {"gamma"}, errors
    finally:
        policy_file.write_text(original)


def medsyft_policy(context) -> dict:  # noqa: ANN001 - as an older release stored it
    from sites.public_policy import public_policy  # the flat layout before sites/review/

    return public_policy("unused")


def test_an_endpoint_stored_by_an_older_layout_is_replaced_when_the_site_registers(site):
    """syft keeps the code an endpoint was stored with; a site upgraded from the flat layout
    still had `from sites.public_policy import ...` in it, and the pre-check broke."""
    from sites.common.syft_client import quiet, syft
    from sites.operator.admin import admin_client
    from sites.review import public_endpoint

    sy, fed = syft(), site["fed"]
    with admin_client(site["dir"]) as (_, _, client), quiet():
        client.custom_api.delete(endpoint_path=public_endpoint.ENDPOINT_PATH)
        stale = sy.api_endpoint(path=public_endpoint.ENDPOINT_PATH,
                                description="medsyft public policy")(medsyft_policy)
        client.custom_api.add(endpoint=stale)
        with pytest.raises(Exception, match="no public policy"):
            fed.public_policy("gamma")
        public_endpoint.register(client)
    assert fed.public_policy("gamma")["site"] == "gamma"
