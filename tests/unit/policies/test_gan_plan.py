"""GAN plans: the adversarial section, its policy word, and an ε that composes both
networks' updates, checked against dp-accounting and Opacus (never against the project's
own accountant)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from policies.contract import privacy
from policies.contract.plan import TrainingPlan, load_plan
from policies.schema import SitePolicy
from policies.verdict import Facts, review_plan
from tests.support.plans import make_plan
from tests.support.reference import pld_epsilon, reference_epsilon

EXAMPLES = Path(__file__).resolve().parents[3] / "researcher" / "examples"
DISC = {"source": "class D(nn.Module):\n    pass\n", "class_name": "D"}


def _synth(**update) -> TrainingPlan:
    data = make_plan(rounds=3).model_dump(mode="json")
    data.update(task="synthesize", target="pet", loss="l1", inputs=["mri"], batch_size=48,
                local_epochs=2)
    data.update(update)
    return TrainingPlan.model_validate(data)


def test_the_example_gan_plan_reads_its_discriminator_from_its_file():
    plan = load_plan(EXAMPLES / "gan.yaml")
    assert plan.adversarial is not None and plan.task_word == "gan"
    assert "class PatchDiscriminator3D" in plan.adversarial.discriminator.source
    assert plan.updates_per_step == 2


def test_only_a_synthesis_plan_can_be_adversarial():
    data = make_plan().model_dump(mode="json")
    data["adversarial"] = {"discriminator": DISC, "weight": 0.1}
    with pytest.raises(ValidationError, match="only a synthesize plan"):
        TrainingPlan.model_validate(data)


def test_a_plain_synthesis_plan_keeps_its_hash_and_a_gan_hashes_its_discriminator():
    plain = _synth()
    assert "adversarial" not in plain.canonical_json()
    gan = _synth(adversarial={"discriminator": DISC, "weight": 0.1})
    assert '"adversarial":{' in gan.canonical_json() and gan.plan_hash != plain.plan_hash
    other = _synth(adversarial={"discriminator": {**DISC, "source": DISC["source"] + "\n"},
                                "weight": 0.1})
    assert other.plan_hash != gan.plan_hash  # the reviewed discriminator is bound too
    assert TrainingPlan.model_validate_json(gan.canonical_json()) == gan


def test_a_policy_without_gan_refuses_a_gan_and_still_allows_synthesis():
    policy = SitePolicy.model_validate({
        "version": 1, "reviewers": ["dpo"], "datasets": {"brain-mri-pet": {
            "access": {"domains": ["*"]},
            "privacy": {"delta_max": 1e-5, "epsilon_per_plan": 8, "epsilon_total": 50},
            "training": {"max_rounds": 10, "tasks": ["classify", "synthesize"]}}}})
    facts = Facts(researcher="a@b.org", today=date.today(), cohort_n=400,
                  noise_multiplier=2.0, n_parameters=10)
    gan = _synth(adversarial={"discriminator": DISC, "weight": 0.1})
    by_rule = {line.rule: line for line in review_plan(policy, gan, facts)}
    assert by_rule["training.task"].failed and "gan" in str(by_rule["training.task"].seen)
    by_rule = {line.rule: line for line in review_plan(policy, _synth(), facts)}
    assert not by_rule["training.task"].failed


@pytest.mark.parametrize("adjacency,accountant", [("replace_one", "pld"),
                                                  ("add_remove", "rdp")])
def test_a_gan_round_is_charged_for_both_networks_updates(adjacency, accountant):
    """Each iteration is a discriminator update and a generator update, each a Poisson-
    subsampled Gaussian mechanism: ε at the σ the site derives must be what dp-accounting
    (or Opacus) gives for 2 × iterations compositions, and the generator's alone would
    claim less than is spent."""
    acc = privacy.Accounting(accountant=accountant, adjacency=adjacency, n=400,
                             count_noise=2.0 if adjacency == "add_remove" else None)
    gan = _synth(adversarial={"discriminator": DISC, "weight": 0.1})
    noise = privacy.noise_for(gan, acc)
    plain = privacy.noise_for(_synth(), acc)
    assert noise.updates == 2 and noise.iterations == plain.iterations
    assert noise.steps == 2 * plain.steps
    assert noise.noise_multiplier > plain.noise_multiplier  # more noise for twice the reads
    history = [(noise.noise_multiplier, noise.sample_rate, noise.steps * gan.rounds)]
    prefix = [(2.0, 1.0, 1)] if adjacency == "add_remove" else []
    if adjacency == "replace_one":
        eps = pld_epsilon(history, gan.dp.delta, adjacency)
        generator_only = pld_epsilon([(noise.noise_multiplier, noise.sample_rate,
                                       noise.iterations * gan.rounds)], gan.dp.delta, adjacency)
    else:
        eps = reference_epsilon(prefix + history, gan.dp.delta)
        generator_only = reference_epsilon(prefix + [(noise.noise_multiplier, noise.sample_rate,
                                                      noise.iterations * gan.rounds)],
                                           gan.dp.delta)
    assert gan.dp.target_epsilon - 0.05 <= eps <= gan.dp.target_epsilon + 0.02
    assert generator_only < eps - 0.5
    # the ledger's ε of the plan is the reference's
    assert acc.epsilon(history, gan.dp.delta) == pytest.approx(eps, abs=0.02)


def test_the_discriminators_source_is_reviewed_like_the_generators():
    """The discriminator is researcher code as well: the review's model-code findings
    cover it (named as the discriminator's lines), never only the generator's."""
    policy = SitePolicy.model_validate({
        "version": 1, "reviewers": ["dpo"], "datasets": {"brain-mri-pet": {
            "access": {"domains": ["*"]},
            "privacy": {"delta_max": 1e-5, "epsilon_per_plan": 8, "epsilon_total": 50},
            "training": {"max_rounds": 10}}}})
    facts = Facts(researcher="a@b.org", today=date.today(), cohort_n=400,
                  noise_multiplier=2.0, n_parameters=10)
    example = load_plan(EXAMPLES / "gan.yaml")
    clean = [c for c in review_plan(policy, example, facts) if c.rule.startswith("model_code")]
    assert [c.rule for c in clean] == ["model_code"] and not clean[0].failed
    d = example.adversarial.discriminator
    hostile = d.model_copy(update={"source": "import os\n" + d.source})
    plan = example.model_copy(update={"adversarial": example.adversarial.model_copy(
        update={"discriminator": hostile})})
    lines = [c for c in review_plan(policy, plan, facts) if c.rule == "model_code.import"]
    assert lines and lines[0].failed and lines[0].seen == "discriminator line 1"
