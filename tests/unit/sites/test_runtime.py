"""The trusted runtime, called in-process as the syft template calls it (real child process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.synthetic import generate_cohort, generate_mock
from policies.contract.errors import Refused
from policies.contract.wire import FailureCode
from sites import runtime
from sites.governance.registry import Registry
from sites.governance.store import Governance
from sites.runtime.release import release_filter
from tests.support.jobs import RESEARCHER, run_child, weights_for, write_job
from tests.support.plans import make_plan

SHAPE = (8, 8, 8)


@pytest.fixture()
def site(site_dir, monkeypatch):
    monkeypatch.setenv(runtime.SITE_DIR_ENV, str(site_dir))
    cohort = generate_cohort(32, seed=5, shape=SHAPE)
    gov = Governance(site_dir)
    gov.register_dataset("brain-mri-pet", cohort.cohort_id, cohort.n, "test", actor="test")
    Registry(gov).add(user_id="0" * 32, verify_key="ab" * 32, email=RESEARCHER, name="Ada",
                      institution="Lovelace Institute", actor="test")
    return site_dir, gov, cohort


def approve(gov: Governance, plan) -> None:
    gov.record_decision(request_id="r-" + plan.plan_hash[:8], plan_hash=plan.plan_hash,
                        researcher=plan.researcher, dataset=plan.dataset, decision="approved",
                        policy_hash="p", reviewer="dpo", actor="test", note="", method="manual",
                        plan_json=plan.canonical_json())


def test_mock_call_returns_at_once_and_spends_nothing(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    mock = generate_mock(8, SHAPE).to_asset()
    out = runtime.execute_round(plan.canonical_json(), mock, weights_for(plan))
    assert out["ok"] is False and out["mock"] is True
    assert "params" not in out
    assert gov.runs() == []


def test_unapproved_plan_is_refused_without_training(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out == {"medsyft": 1, "ok": False, "code": "not_approved", "mock": False,
                   "error": "plan is not approved at this site"}
    assert gov.runs() == []


def test_approved_plan_runs_its_rounds_then_stops(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, rounds=2)
    approve(gov, plan)
    w0 = weights_for(plan)
    first = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), w0)
    assert first["ok"], first
    assert set(first["params"]) == set(w0)
    assert first["n_k"] == cohort.n and first["round"] == 1
    second = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), first["params"])
    assert second["ok"] and second["round"] == 2
    assert second["accounting"]["epsilon"] > first["accounting"]["epsilon"] > 0
    assert second["accounting"]["epsilon"] <= plan.dp.target_epsilon
    assert second["accounting"]["steps"] == 2 * first["accounting"]["steps"]
    third = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), second["params"])
    assert third["ok"] is False and "all 2 rounds" in third["error"]
    assert third["code"] == "rounds_exhausted"
    assert [r.status for r in gov.runs(plan.plan_hash)] == ["released", "released"]
    events = [e["event"] for e in gov.audit_entries()]
    assert events.count("run.released") == 2 and "run.refused" in events


LEAKY = '''
class Leaky(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(in_channels, 1)

    def forward(self, x):
        print("PRIVATE-PRINT", x)
        raise ValueError(f"PRIVATE-RAISE {x}")
'''

BROKEN = '''
class Broken(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def test_model_errors_reach_the_researcher_only_as_a_category(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=BROKEN, class_name="Broken")
    approve(gov, plan)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out == {"medsyft": 1, "ok": False, "code": "model", "mock": False,
                   "error": "model forward raised"}
    assert "cannot be multiplied" in (site_dir / "logs" / "training.log").read_text()
    assert [r.status for r in gov.runs(plan.plan_hash)] == ["failed"]  # not counted as a round


def test_training_child_keeps_prints_and_tracebacks_in_the_site_log(site, tmp_path):
    """Even code that escaped review: what it prints or raises never reaches the result."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=LEAKY, class_name="Leaky")
    run_dir = tmp_path / "run"
    write_job(run_dir, plan, cohort)
    status = run_child(site_dir, run_dir)
    assert not status.ok and status.category == "forward"
    text = (site_dir / "logs" / "training.log").read_text()
    assert "PRIVATE-RAISE" in text and "PRIVATE-PRINT" in text  # the data owner keeps them
    assert not (run_dir / "private.pt").exists()  # removed once loaded
    assert "PRIVATE" not in (run_dir / "status.json").read_text()


LIAR = '''
class Liar(nn.Module):
    def __init__(self, in_channels=2, width=1300):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.wide = nn.Linear(width, width)
        self.head = nn.Linear(4, 1)

    def parameters(self, recurse=True):
        return []

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        return []

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        return []

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.head(x.mean(dim=(2, 3, 4))) + self.wide.bias[:1] * 0
'''


@pytest.mark.parametrize("width,category", [(1300, "too_large"), (8, "weights_mismatch")])
def test_training_child_counts_what_it_trains_not_what_the_model_reports(site, tmp_path, width,
                                                                         category):
    """As if review had been fooled: a model whose parameters() and named_parameters() say
    it is small is still counted by what the site trains (1.69 M here, cap 1 M), and
    weights for only the layers it admits to do not fit."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=LIAR, class_name="Liar")
    plan = plan.model_copy(update={"model": plan.model.model_copy(
        update={"kwargs": {"in_channels": 2, "width": width}})})
    admitted = {k: v for k, v in weights_for(plan).items() if not k.startswith("wide.")}
    run_dir = tmp_path / "run"
    write_job(run_dir, plan, cohort, weights=admitted, max_parameters=10**6)
    status = run_child(site_dir, run_dir)
    assert not status.ok and status.category == category


def test_weights_beyond_the_parameter_cap_are_refused_before_any_child(site):
    site_dir, gov, cohort = site
    policy = site_dir / "policy.yaml"
    policy.write_text(policy.read_text().replace("max_rounds: 10",
                                                 "max_rounds: 10\n      max_parameters: 50"))
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["error"] == "model has more parameters than the site's policy allows"


def test_a_researcher_the_site_no_longer_knows_cannot_run(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    Registry(gov).update(RESEARCHER, actor="test", new_email="ada.k@lovelace-institute.org")
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert "no record of the plan's researcher" in out["error"]
    assert gov.runs() == []


def test_code_the_policy_forbids_is_refused_at_run_time_too(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=LEAKY, class_name="Leaky")
    approve(gov, plan)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["ok"] is False and "model_code" in out["error"]
    assert gov.runs(plan.plan_hash) == []


def test_weights_that_do_not_fit_the_model_are_refused(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    w = weights_for(plan)
    w["head.weight"] = np.zeros((2, 4), dtype=np.float32)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), w)
    assert out["error"] == "weights do not match the model"


def test_non_finite_weights_are_refused_before_training(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    w = weights_for(plan)
    w["head.bias"] = np.array([np.nan], dtype=np.float32)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), w)
    assert out["ok"] is False and "non-finite" in out["error"]
    assert gov.runs() == []


BATCHNORM = '''
class WithBN(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.bn = nn.BatchNorm3d(in_channels)
        self.head = nn.Linear(in_channels, 1)

    def forward(self, x):
        return self.head(self.bn(x).mean(dim=(2, 3, 4)))
'''


def test_batchnorm_is_refused(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=BATCHNORM, class_name="WithBN")
    approve(gov, plan)
    weights = weights_for(make_plan())  # build_model itself refuses BatchNorm
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights)
    assert "BatchNorm" in out["error"]


def test_plan_approved_for_another_researcher_is_refused(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    other = plan.model_copy(update={"researcher": "eve@lovelace-institute.org"})
    out = runtime.execute_round(other.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["error"] == "plan is not approved at this site"


def test_release_filter_drops_anything_but_the_expected_parameters():
    start = {"w": torch.zeros(2, 2)}
    ok = release_filter({"params": {"w": torch.ones(2, 2)}}, start)
    assert set(ok) == {"w"}
    for bad in ({"params": {"w": torch.ones(2, 2)}, "extra": 1},
                {"params": {"w": torch.ones(2, 2), "buf": torch.ones(1)}},
                {"params": {"w": torch.ones(3, 2)}},
                {"params": {"w": torch.ones(2, 2, dtype=torch.float64)}},
                {"params": {"w": torch.full((2, 2), float("inf"))}}):
        with pytest.raises(Refused) as exc:
            release_filter(bad, start)
        assert exc.value.code == FailureCode.RELEASE
