"""Plan tasks: each task's targets and site-owned losses, and older plans keep their hash."""

import hashlib
import json

import pytest
from pydantic import ValidationError

from policies.contract.plan import TrainingPlan
from policies.verdict import Facts, review_plan
from tests.support.plans import make_plan


def _with(**update) -> dict:
    data = make_plan().model_dump(mode="json")
    data.update(update)
    return data


def test_a_classifier_plan_hashes_as_it_did_before_tasks_existed():
    plan = make_plan()
    data = plan.model_dump(mode="json")
    del data["task"], data["adversarial"], data["augment"]  # a plan from before them
    before = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert plan.canonical_json() == before
    assert plan.plan_hash == hashlib.sha256(before.encode()).hexdigest()
    assert TrainingPlan.model_validate_json(before) == plan


def test_a_segmentation_plan_hashes_its_task():
    seg = TrainingPlan.model_validate(_with(task="segment", target="mask", loss="dice"))
    assert '"task":"segment"' in seg.canonical_json()
    assert TrainingPlan.model_validate_json(seg.canonical_json()) == seg


@pytest.mark.parametrize("update,message", [
    ({"task": "segment", "target": "label", "loss": "dice"}, "trains towards mask"),
    ({"task": "segment", "target": "mask", "loss": "l1"}, "dice, dice_ce"),
    ({"task": "synthesize", "target": "pet", "loss": "l1"}, "pet is also an input"),
    ({"task": "synthesize", "target": "mask", "loss": "l1", "inputs": ["mri"]},
     "mri or pet"),
    ({"task": "classify", "target": "label", "loss": "dice"}, "bce_with_logits"),
])
def test_a_task_takes_only_its_targets_and_losses(update, message):
    with pytest.raises(ValidationError, match=message):
        TrainingPlan.model_validate(_with(**update))


def test_the_verdict_names_the_task_and_refuses_a_mask_the_dataset_lacks(tmp_path):
    from datetime import date

    from policies.schema import load_policy

    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(open("tests/policies/integration.yaml").read())
    policy, _ = load_policy(policy_file)
    seg = TrainingPlan.model_validate(_with(task="segment", target="mask", loss="dice_ce",
                                            inputs=["mri"]))
    facts = Facts(researcher="ada@lovelace-institute.org", today=date.today(),
                  noise_multiplier=2.0, n_parameters=10, has_mask=False)
    lines = {line.rule: line for line in review_plan(policy, seg, facts)}
    assert lines["training.task"].status == "pass"
    assert lines["dataset.target"].failed and not lines["dataset.target"].overridable
    facts = facts.model_copy(update={"has_mask": True})
    assert "dataset.target" not in {line.rule for line in review_plan(policy, seg, facts)}
    # a data owner may allow only some tasks on a dataset
    text = policy_file.read_text()
    assert "max_rounds" in text
    policy_file.write_text(text.replace("max_rounds:", "tasks: [classify]\n      max_rounds:", 1))
    policy, _ = load_policy(policy_file)
    line = {line.rule: line for line in review_plan(policy, seg, facts)}["training.task"]
    assert line.failed and "classify" in line.message


@pytest.mark.parametrize("name,task,loss", [("segment.yaml", "segment", "dice_ce"),
                                            ("synthesize.yaml", "synthesize", "ssim_l1")])
def test_the_shipped_example_plans_load_and_their_networks_fit_their_loss(name, task, loss):
    from policies.contract.model_code import build_model
    from policies.contract.plan import load_plan
    from tests.support.graphs import graph_of

    plan = load_plan(f"researcher/examples/{name}")
    assert (plan.task, plan.loss) == (task, loss)
    model = build_model(plan.model)
    _, facts = graph_of(model, [1, plan.in_channels, 16, 16, 16], loss=plan.loss)
    assert facts.output_shape[2:] == [16, 16, 16]
