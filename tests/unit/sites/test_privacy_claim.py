"""What a round releases matches the claim the site states (red team, issue 15).

The trusted runtime is called in-process as the syft template calls it, each run in a
real sealed training process: a private cohort size leaks through nothing the round
returns, q = 1 plans are refused where N is private, a subject whose loss is not finite
cannot decide whether a round releases, and a run that fails is charged and counted.
"""

from __future__ import annotations

import numpy as np
import pytest

from datasets.synthetic import generate_cohort
from policies.contract import privacy
from policies.contract.wire import FailureCode
from sites import runtime
from sites.governance.registry import Registry
from sites.governance.store import Governance
from sites.operator.site import Site
from sites.review.public_endpoint import public_policy
from tests.support.jobs import RESEARCHER, weights_for
from tests.support.plans import make_plan
from tests.support.reference import pld_epsilon

SHAPE = (8, 8, 8)
#: the integration policy with every other dataset's size private
HIDDEN_RULE = """
  "*":
    access:
      domains: [lovelace-institute.org]
    privacy:
      delta_max: 1.0e-5
      epsilon_per_plan: 8.0
      epsilon_total: 100.0
    training:
      max_rounds: 10
    release:
      sample_count: hidden
"""
COUNT = (40, 10.0)  # the DP count of N a test publishes with (Ñ, its noise)


@pytest.fixture()
def site(site_dir, monkeypatch):
    monkeypatch.setenv(runtime.SITE_DIR_ENV, str(site_dir))
    policy = Site.open(site_dir).policy_file
    policy.write_text(policy.read_text() + HIDDEN_RULE)
    gov = Governance(site_dir)
    Registry(gov).add(user_id="0" * 32, verify_key="ab" * 32, email=RESEARCHER, name="Ada",
                      institution="Lovelace Institute", actor="test")
    return site_dir, gov


def publish(gov: Governance, name: str, cohort, count=COUNT) -> None:
    gov.register_dataset(name, cohort.cohort_id, cohort.n, "test", actor="test",
                         volume_shape=cohort.volume_shape, count=count)


def approve(gov: Governance, plan) -> None:
    gov.record_decision(request_id="r-" + plan.plan_hash[:8], plan_hash=plan.plan_hash,
                        researcher=plan.researcher, dataset=plan.dataset, decision="approved",
                        policy_hash="p", reviewer="dpo", actor="test", note="", method="manual",
                        plan_json=plan.canonical_json())


def run(gov, plan, cohort, weights=None) -> dict:
    return runtime.execute_round(plan.canonical_json(), cohort.to_asset(),
                                 weights or weights_for(plan))


def test_n_and_n_plus_one_release_identical_accounting_when_n_is_hidden(site):
    site_dir, gov = site
    answers = {}
    for n in (32, 33):
        cohort = generate_cohort(n, seed=n, shape=SHAPE)
        name = f"brain-{n}"
        publish(gov, name, cohort)
        plan = make_plan(researcher=RESEARCHER, dataset=name)
        approve(gov, plan)
        answers[n] = run(gov, plan, cohort)
        assert answers[n]["ok"], answers[n]
    a, b = answers[32], answers[33]
    assert a["accounting"] == b["accounting"]
    assert a["n_k"] is None and b["n_k"] is None
    assert set(a) == set(b) and "seconds" not in a and "train_seconds" not in a
    assert a["accounting"]["adjacency"] == "add_remove"
    assert a["accounting"]["sample_rate"] == pytest.approx(8 / COUNT[0])  # B / Ñ, never B / N
    # the ε stated includes the DP count, and dp-accounting agrees it is an upper bound
    acc = a["accounting"]
    reference = pld_epsilon([(COUNT[1], 1.0, 1), (acc["noise_multiplier"], acc["sample_rate"],
                                                  acc["steps"])], acc["delta"], "add_remove")
    assert acc["epsilon"] >= reference
    # nor does what the site publishes to researchers carry N
    doc = public_policy(site_dir)["datasets"]["*"]
    assert "cohort_n" not in doc and doc["accounting"]["adjacency"] == "add_remove"


def test_the_public_policy_gives_the_dp_count_not_n(site):
    site_dir, gov = site
    cohort = generate_cohort(33, seed=1, shape=SHAPE)
    publish(gov, "brain-private", cohort)
    from policies.schema import load_policy
    from sites.runtime.accounting import accounting_for

    rule = load_policy(Site.open(site_dir).policy_file)[0].for_dataset("brain-private")
    terms = accounting_for(gov, gov.dataset("brain-private"), rule)
    assert terms.n == COUNT[0] and terms.adjacency == "add_remove"
    assert 33 not in (terms.n,)


def test_a_plan_that_would_sample_everyone_is_refused_where_n_is_private(site):
    site_dir, gov = site
    cohort = generate_cohort(32, seed=3, shape=SHAPE)
    publish(gov, "brain-small", cohort)
    plan = make_plan(researcher=RESEARCHER, dataset="brain-small").model_copy(
        update={"batch_size": 48})  # ≥ Ñ = 40: q would be 1
    approve(gov, plan)
    out = run(gov, plan, cohort)
    assert out["ok"] is False and out["code"] == FailureCode.POLICY.value
    assert "largest batch allowed here is 39" in out["error"]
    assert gov.runs() == []  # refused before anything touched the data


def test_replace_one_is_stated_where_n_is_public(site):
    site_dir, gov = site
    cohort = generate_cohort(32, seed=4, shape=SHAPE)
    gov.register_dataset("brain-mri-pet", cohort.cohort_id, cohort.n, "test", actor="test",
                         volume_shape=cohort.volume_shape)
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    out = run(gov, plan, cohort)
    assert out["ok"], out
    acc = out["accounting"]
    assert acc["adjacency"] == "replace_one" and acc["accountant"] == "pld"
    assert out["n_k"] == 32 and acc["count_noise"] is None
    reference = pld_epsilon([(acc["noise_multiplier"], acc["sample_rate"], acc["steps"])],
                            acc["delta"], "replace_one")
    assert acc["epsilon"] >= reference
    assert [r.adjacency for r in gov.runs()] == ["replace_one"]


#: sqrt(5 − brightest voxel): NaN for a subject with a voxel above 5 (red team, issue 15)
PEAK = '''
class Peak(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        peak = x.amax(dim=(1, 2, 3, 4)).reshape(-1, 1)
        return self.head(torch.sqrt(5.0 - peak))
'''


def test_a_subject_whose_loss_is_not_finite_does_not_decide_the_release(site):
    site_dir, gov = site
    outcomes = {}
    for present in (False, True):
        cohort = generate_cohort(32, seed=5, shape=SHAPE)
        for m in cohort.volumes:
            cohort.volumes[m] = np.clip(cohort.volumes[m], -4.0, 4.0)
        if present:  # every subject has the bright voxel: each is sampled in every run
            for m in cohort.volumes:
                cohort.volumes[m][:, 0, 0, 0] = 10.0
        name = f"brain-peak-{int(present)}"
        publish(gov, name, cohort)
        plan = make_plan(researcher=RESEARCHER, dataset=name, source=PEAK, class_name="Peak")
        approve(gov, plan)
        outcomes[present] = run(gov, plan, cohort)
    assert outcomes[False]["ok"] and outcomes[True]["ok"], outcomes
    # with every gradient dropped, the update is the noise alone: finite, released
    assert all(np.isfinite(v).all() for v in outcomes[True]["params"].values())


#: a convolution whose dilation is 0: traced and validated, fails on every forward pass
FAILS_IN_TRAINING = '''
class Fails(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 2, 3, dilation=0, padding=1)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3, 4)))
'''


def test_a_run_that_fails_is_charged_and_counts_as_a_round(site):
    site_dir, gov = site
    cohort = generate_cohort(32, seed=6, shape=SHAPE)
    publish(gov, "brain-fails", cohort)
    plan = make_plan(researcher=RESEARCHER, dataset="brain-fails", rounds=2,
                     source=FAILS_IN_TRAINING, class_name="Fails")
    approve(gov, plan)
    first = run(gov, plan, cohort)
    assert first["ok"] is False and first["code"] == FailureCode.MODEL.value, first
    assert "charged to the plan's privacy budget" in first["error"]
    assert "round 1 of 2" in first["error"]
    [failed] = gov.runs(plan.plan_hash)
    assert failed.status == "failed" and failed.epsilon > 0
    assert gov.ledger_history(RESEARCHER, "brain-fails") == [failed]
    run(gov, plan, cohort)
    third = run(gov, plan, cohort)
    assert third["code"] == FailureCode.ROUNDS_EXHAUSTED.value  # two failures, two rounds
    from sites.review.ledger import ledger

    [entry] = ledger(site_dir, RESEARCHER, "brain-fails")
    assert entry.spent == pytest.approx(privacy.Accounting(
        "rdp", "add_remove", n=COUNT[0], count_noise=COUNT[1]).epsilon(
        [r.noise for r in gov.runs(plan.plan_hash)], entry.delta))
    assert entry.plans[0].rounds_charged == 2 and entry.plans[0].rounds_failed == 2


def _terms(site_dir, gov, name):
    from policies.schema import load_policy
    from sites.runtime.accounting import accounting_for

    rule = load_policy(Site.open(site_dir).policy_file)[0].for_dataset(name)
    return accounting_for(gov, gov.dataset(name), rule, RESEARCHER)


def test_a_dataset_published_with_n_public_stays_replace_one_when_the_policy_hides_n(site):
    """Its description (and syft's copy) state N: hiding N later cannot make an add/remove
    claim true again (red team, issue 15)."""
    site_dir, gov = site
    cohort = generate_cohort(32, seed=7, shape=SHAPE)
    gov.register_dataset("brain-was-public", cohort.cohort_id, cohort.n, "32 subjects",
                         actor="test", volume_shape=cohort.volume_shape)  # no count: N public
    terms = _terms(site_dir, gov, "brain-was-public")  # the policy's "*" rule hides N
    assert terms.adjacency == "replace_one" and terms.n == 32 and terms.accountant == "pld"


def test_every_dp_count_ever_drawn_for_a_dataset_is_charged(site):
    """Published again, a dataset gets a new DP count; the old one was released through q
    already, so both are in every ledger there (red team, issue 15)."""
    site_dir, gov = site
    first = generate_cohort(32, seed=8, shape=SHAPE)
    publish(gov, "brain-again", first, count=(37, 10.0))
    assert _terms(site_dir, gov, "brain-again").prefix == ((10.0, 1.0, 1),)
    second = generate_cohort(33, seed=9, shape=SHAPE)
    publish(gov, "brain-again", second, count=(29, 5.0))
    terms = _terms(site_dir, gov, "brain-again")
    assert terms.n == 29 and terms.prefix == ((10.0, 1.0, 1), (5.0, 1.0, 1))
    assert terms.epsilon([], 1e-5) >= pld_epsilon(list(terms.prefix), 1e-5, "add_remove")
