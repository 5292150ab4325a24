"""End to end against two real datasites on loopback, with the real syft client.

One module-scoped federation; the tests run in order and build on each other:
pending plan refused → console approval → two rounds → beyond-rounds refused →
denied plan cannot run → syft-only approval is not enough → restart keeps state.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic import generate_cohort
from researcher.federation import (
    Federation,
    FederationConfig,
    FederationError,
    SiteEntry,
    store_password,
)
from sites.common.syft_client import LoginFailed, login, quiet, syft
from sites.governance.store import Governance
from sites.operator import admin, lifecycle
from sites.review import console
from tests.support.plans import TEST_POLICY, make_plan
from tests.support.reference import pld_epsilon
from tests.support.sites import as_reviewer

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "integration-pw-4711"
SHAPE = (12, 12, 12)


@pytest.fixture(scope="module")
def fed_env(tmp_path_factory, memory_keyring, repo_root):
    root = tmp_path_factory.mktemp("fed")
    sites = {"alpha": root / "alpha", "beta": root / "beta"}
    for name, d in sites.items():
        lifecycle.init_site(name, d, policy_file=TEST_POLICY, train_threads=1)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lifecycle.up, sites.values()))
    try:
        for i, d in enumerate(sites.values()):
            admin.add_researcher(d, EMAIL, "Ada Lovelace", PASSWORD, "Lovelace Institute")
            admin.publish_synthetic(d, "brain-mri-pet", n=40 + 8 * i, seed=i, shape=SHAPE)
        config = FederationConfig(
            sites=[SiteEntry(name=n, port=lifecycle.load_site(d)[1].port, email=EMAIL)
                   for n, d in sites.items()],
            quorum=2, checkpoints=str(root / "checkpoints"))
        for s in config.sites:
            store_password(s, PASSWORD)
        fed = Federation(config).connect()
        yield {"sites": sites, "fed": fed, "config": config, "plan": make_plan(rounds=2),
               "root": root}
    finally:
        for d in sites.values():
            lifecycle.down(d)


def _site_port(d: Path) -> int:
    return lifecycle.load_site(d)[1].port


def test_syft_default_admin_credentials_never_work(fed_env):
    for d in fed_env["sites"].values():
        with pytest.raises(LoginFailed):
            login("127.0.0.1", _site_port(d), "info@openmined.org", "changethis")


def test_researchers_cannot_sign_themselves_up(fed_env):
    sy = syft()
    d = fed_env["sites"]["alpha"]
    with quiet():
        guest = sy.login_as_guest(url="http://127.0.0.1", port=_site_port(d))
        try:
            res = guest.register(name="Mallory", email="mallory@evil.org",
                                 password="pw-123456789", password_verify="pw-123456789")
        except Exception:
            res = None
    assert res is None or type(res).__name__ == "SyftError"
    with pytest.raises(LoginFailed):
        login("127.0.0.1", _site_port(d), "mallory@evil.org", "pw-123456789")


def test_researcher_sees_datasets_and_schema_equal_mocks(fed_env):
    fed = fed_env["fed"]
    listing = fed.datasets()
    assert {d["name"] for d in listing["alpha"]} == {"brain-mri-pet"}
    assert "40 subjects" in listing["alpha"][0]["description"]
    mock = fed.mock("alpha", "brain-mri-pet")
    assert mock.volume_shape == SHAPE and set(mock.volumes) == {"mri", "pet"}
    assert mock.volumes["mri"].dtype == np.float32


def test_pending_plan_cannot_run(fed_env):
    fed, plan = fed_env["fed"], fed_env["plan"]
    statuses = fed.submit(plan)
    assert {s.status for s in statuses.values()} == {"pending"}
    results, errors = fed.run_round(fed.bind(plan), {"x": np.zeros(1, np.float32)}, retries=0)
    assert results == {} and set(errors) == {"alpha", "beta"}
    assert all("approval" in e.lower() or "pending" in e.lower() for e in errors.values())


def test_console_lists_and_approves_the_plan(fed_env):
    plan = fed_env["fed"].bind(fed_env["plan"])
    for d in fed_env["sites"].values():
        views = console.list_requests(d)
        assert len(views) == 1
        v = views[0]
        assert v.status == "pending" and v.template_error is None
        assert v.plan == plan and not v.failing and v.noise_multiplier > 0
        approved = console.approve(d, v.short_id, note="looks fine",
                                   reviewer=as_reviewer(d, "dpo"))
        assert approved.status == "approved"
        approval = Governance(d).approval(plan.plan_hash)
        assert approval is not None and approval.researcher == EMAIL
    assert {s.status for s in fed_env["fed"].status(plan).values()} == {"approved"}


def test_two_rounds_change_weights_and_grow_epsilon(fed_env):
    fed, plan = fed_env["fed"], fed_env["plan"]
    w0 = {k: v.copy() for k, v in __import__("researcher.federation", fromlist=["x"])
          .initial_weights(fed.bind(plan)).items()}
    validation = generate_cohort(30, seed=99, shape=SHAPE)
    report = fed.run(plan, validation=validation)
    assert [r.round for r in report.rounds] == [1, 2]
    assert any(not np.array_equal(fed.weights[k], w0[k]) for k in w0)
    for site in ("alpha", "beta"):
        eps = [next(s for s in r.sites if s.site == site).epsilon for r in report.rounds]
        assert 0 < eps[0] < eps[1] <= plan.dp.target_epsilon
    for r in report.rounds:  # every reported ε is at least dp-accounting's for its relation
        for s in r.sites:
            assert s.adjacency == "replace_one" and "replace-one" in s.guarantee
            assert s.epsilon >= pld_epsilon([(s.noise_multiplier, s.sample_rate, s.steps)],
                                            s.delta, s.adjacency) - 1e-9
            assert s.ledger_epsilon >= s.epsilon - 1e-9
    assert all(r.auc is not None for r in report.rounds)
    for d in fed_env["sites"].values():
        assert "syft speed patches: syft.types.syft_object" in (d / "logs/site.log").read_text()
        log = (d / "logs/training.log").read_text()
        takers = re.findall(r"training child (\d+) takes a run", log)
        assert len(takers) == 2 and len(set(takers)) == 2  # a fresh process for each round
    ckpts = sorted((Path(fed_env["config"].checkpoints)).glob("*/round-*.pt"))
    assert len(ckpts) == 2


def test_run_resumes_from_checkpoint_and_refuses_rounds_beyond_the_plan(fed_env):
    fed, plan = fed_env["fed"], fed_env["plan"]
    report = fed.run(plan)  # all rounds done: resumes at the end, runs nothing more
    assert [r.round for r in report.rounds] == [1, 2]
    results, errors = fed.run_round(fed.bind(plan), fed.weights, retries=0)
    assert results == {}
    assert all("all 2 rounds" in e for e in errors.values())


def test_denied_plan_cannot_run_and_researcher_reads_the_reason(fed_env):
    fed, sites = fed_env["fed"], fed_env["sites"]
    plan = make_plan(rounds=1, version=2)
    fed.submit(plan)
    bound = fed.bind(plan)
    for d in sites.values():
        v = next(v for v in console.list_requests(d) if v.plan == bound)
        console.deny(d, v.id, reason="cohort reserved for another study",
                     reviewer=as_reviewer(d, "dpo"))
    statuses = fed.status(plan)
    assert {s.status for s in statuses.values()} == {"denied"}
    assert any(s.reason and "reserved" in s.reason for s in statuses.values())
    results, errors = fed.run_round(bound, fed.weights, retries=0)
    assert results == {} and len(errors) == 2


def test_syft_approval_without_a_governance_record_is_not_enough(fed_env):
    fed, d = fed_env["fed"], fed_env["sites"]["beta"]
    plan = make_plan(rounds=1, version=3)
    fed.submit(plan)
    bound = fed.bind(plan)
    cfg = lifecycle.load_site(d)[1]
    admin_client = login(cfg.host, cfg.port, cfg.admin_email, lifecycle.admin_password(cfg))
    req = next(r for r in admin_client.requests.get_all()
               if r.code.service_func_name == bound.function_name)
    with quiet():
        req.approve(disable_warnings=True)  # bypasses the console and its record
    # the weights endpoint refuses the upload; weights sent inline, the runtime refuses
    with pytest.raises(Exception, match="has an approval at this site"):
        fed.run_site_round("beta", bound, fed.weights)  # one site only
    inline = Federation(fed.config, transport="syft")
    inline._clients = fed._clients
    with pytest.raises(Exception, match="not approved at this site"):
        inline.run_site_round("beta", bound, fed.weights)
    assert Governance(d).runs(bound.plan_hash) == []


def test_restart_keeps_users_datasets_requests_and_approvals(fed_env):
    d = fed_env["sites"]["alpha"]
    plan = fed_env["fed"].bind(fed_env["plan"])
    lifecycle.down(d)
    assert not lifecycle.status(d).running
    lifecycle.up(d)
    client = login("127.0.0.1", _site_port(d), EMAIL, PASSWORD)
    assert [ds.name for ds in client.datasets.get_all()] == ["brain-mri-pet"]
    views = console.list_requests(d)
    first = next(v for v in views if v.plan == plan)
    assert first.status == "approved"
    assert Governance(d).approval(plan.plan_hash) is not None
    fresh = Federation(fed_env["config"]).connect()
    assert fresh.status(fed_env["plan"])["alpha"].status == "approved"


def test_round_goes_on_without_a_failed_site_while_the_quorum_holds(fed_env):
    sites, fed = fed_env["sites"], fed_env["fed"]
    plan = make_plan(rounds=1, version=4)
    fed.submit(plan)
    bound = fed.bind(plan)
    for d in sites.values():
        v = next(v for v in console.list_requests(d) if v.plan == bound)
        # same model as the plan denied above: a reviewer approves it only with a reason
        console.approve(d, v.id, reviewer=as_reviewer(d, "dpo"), override=True,
                        note="same model as the denied v2; this study is agreed")
    lifecycle.down(sites["beta"])
    try:
        with pytest.raises(FederationError, match="quorum"):
            Federation(fed_env["config"]).connect(require_all=False)  # quorum 2 of 2
        config = fed_env["config"].model_copy(
            update={"quorum": 1, "checkpoints": str(fed_env["root"] / "lenient")})
        lenient = Federation(config).connect(require_all=False)
        report = lenient.run(plan)
        (only,) = report.rounds
        by_site = {s.site: s for s in only.sites}
        assert by_site["alpha"].ok and by_site["alpha"].epsilon > 0
        assert not by_site["beta"].ok and by_site["beta"].error
    finally:
        lifecycle.up(sites["beta"])
