"""The trusted runtime, called in-process as the syft template calls it (real child process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.synthetic import generate_cohort, generate_mock
from policies.contract.errors import Refused
from policies.contract.model_code import build_model
from policies.contract.wire import WIRE_VERSION, FailureCode
from sites import runtime
from sites.governance.registry import Registry
from sites.governance.store import Governance
from sites.graph.export import trace
from sites.runtime.release import release_filter
from tests.support.jobs import RESEARCHER, make_job, run_job, weights_for
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


def approve(gov: Governance, plan, graph_digest: str | None = None) -> None:
    gov.record_decision(request_id="r-" + plan.plan_hash[:8], plan_hash=plan.plan_hash,
                        researcher=plan.researcher, dataset=plan.dataset, decision="approved",
                        policy_hash="p", reviewer="dpo", actor="test", note="", method="manual",
                        plan_json=plan.canonical_json(), graph_digest=graph_digest)


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
    assert out == {"medsyft": WIRE_VERSION, "ok": False, "code": "not_approved", "mock": False,
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


def test_a_model_that_fails_fails_in_the_tracer_on_zeros_before_any_run(site):
    """The model's own words come back (the tracer held nothing private); no run starts."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=BROKEN, class_name="Broken")
    approve(gov, plan)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["ok"] is False and out["code"] == "model"
    assert "cannot be traced" in out["error"] and "same reduction dim" in out["error"]
    assert gov.runs(plan.plan_hash) == []  # nothing ran, nothing is spent


def test_the_sealed_training_process_trains_the_graph_and_writes_only_parameters(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    status, output = run_job(site_dir, make_job(plan, cohort), cohort)
    assert status.ok and status.device == "cpu" and status.train_seconds > 0
    assert set(output) == {"params"} and set(output["params"]) == set(weights_for(plan))
    log = (site_dir / "logs" / "training.log").read_text()
    assert '"seccomp":true' in log and '"root_dropped":true' in log


def test_the_training_process_validates_the_graph_again(site):
    """A graph that reached the job without the runtime's check (defence in depth)."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    good = make_job(plan, cohort)
    tampered = good.graph_json.replace("aten.relu.default", "aten.relu_.default")
    status, _ = run_job(site_dir, make_job(plan, cohort, graph_json=tampered), cohort)
    assert not status.ok and status.category == "graph"
    status, _ = run_job(site_dir, make_job(plan, cohort, digest="0" * 64), cohort)
    assert not status.ok and status.category == "internal"  # not the graph it was told


def test_the_training_process_refuses_weights_that_do_not_fit_the_graph(site):
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    weights = weights_for(plan)
    weights["head.weight"] = np.zeros((2, 4), dtype=np.float32)
    status, _ = run_job(site_dir, make_job(plan, cohort, weights=weights), cohort)
    assert not status.ok and status.category == "weights_mismatch"


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


def test_a_model_that_lies_about_its_parameters_is_refused_before_any_run(site):
    """parameters() and named_parameters() overridden to say it is small: the trace does not
    take the model's word, and nothing trains."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, source=LIAR, class_name="Liar")
    approve(gov, plan)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["ok"] is False and out["code"] in ("model", "policy"), out
    assert gov.runs(plan.plan_hash) == []
    with pytest.raises(Refused, match="cannot be traced"):  # and without the review's help
        trace(build_model(plan.model), [1, 2, *SHAPE])


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


def test_a_graph_other_than_the_one_approved_does_not_run(site):
    """A retrace (torch upgrade, lost cache) runs the researcher's code again, which may
    give another graph than the reviewers saw (red team, issue 14)."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER, name="pinned")
    approve(gov, plan, graph_digest="0" * 64)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), weights_for(plan))
    assert out["ok"] is False and "differs from the one approved" in out["error"]
    assert gov.runs() == []


def test_start_weights_near_the_end_of_float32_are_refused(site):
    """Whether w + update overflows to inf would depend on the data: refused up front."""
    site_dir, gov, cohort = site
    plan = make_plan(researcher=RESEARCHER)
    approve(gov, plan)
    w = weights_for(plan)
    w["head.bias"] = np.array([3e38], dtype=np.float32)
    out = runtime.execute_round(plan.canonical_json(), cohort.to_asset(), w)
    assert out["ok"] is False and "beyond" in out["error"]
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
