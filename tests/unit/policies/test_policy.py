"""Policy files: examples valid, every error located, unknown and duplicate keys refused."""

from datetime import date
from pathlib import Path

import pytest

from policies.schema import PolicyError, load_policy, parse_policy
from policies.verdict import Facts, review_plan
from tests.support.plans import make_plan

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))


def test_three_different_example_policies_ship():
    policies = {f.stem: load_policy(f)[0] for f in EXAMPLES}
    assert set(policies) >= {"st-agnes", "riverside", "northgate"}
    assert policies["st-agnes"].approvals_required == 2
    assert len({p.model_dump_json() for p in policies.values()}) == len(policies)


def _with(text: str, old: str, new: str, tmp_path: Path) -> Path:
    assert old in text
    f = tmp_path / "p.yaml"
    f.write_text(text.replace(old, new, 1))
    return f


def _line(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_misspelt_key_is_an_error_naming_file_line_and_field(tmp_path):
    text = (ROOT / "policies" / "st-agnes.yaml").read_text()
    f = _with(text, "max_rounds:", "max_round:", tmp_path)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    assert f"{f}:{_line(text, 'max_rounds:')}: datasets.brain-mri-pet.training.max_round: " \
           "unknown key" in str(exc.value)


def test_duplicate_key_is_an_error_not_last_one_wins(tmp_path):
    text = (ROOT / "policies" / "st-agnes.yaml").read_text()
    f = _with(text, "      epsilon_per_plan: 8.0\n",
              "      epsilon_per_plan: 8.0\n      epsilon_per_plan: 80.0\n", tmp_path)
    with pytest.raises(PolicyError, match=r"p\.yaml:\d+: not valid YAML: duplicate key"):
        load_policy(f)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\nreviewers: [a]\ndatasets:\n  a: [unclosed\n")
    with pytest.raises(PolicyError, match=r"p\.yaml:\d+: not valid YAML"):
        load_policy(f)


def test_wrong_type_names_the_field(tmp_path):
    text = (ROOT / "policies" / "riverside.yaml").read_text()
    f = _with(text, "epsilon_per_plan: 10.0", "epsilon_per_plan: lots", tmp_path)
    with pytest.raises(PolicyError, match=r"privacy\.epsilon_per_plan: Input should be"):
        load_policy(f)


@pytest.mark.parametrize("text,field", [
    ("version: 2\nreviewers: [a]\ndatasets: {}\n", "version"),
    ("version: 1\nreviewers: [a]\napprovals_required: 2\ndatasets: {}\n", "(top level)"),
    ("version: 1\nreviewers: []\ndatasets: {}\n", "reviewers"),
    ("[1, 2]\n", "(top level)"),
])
def test_semantic_errors(text, field):
    with pytest.raises(PolicyError, match=field.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(text, "x.yaml")


def _facts(**kw):
    base = dict(researcher="ada@lovelace-institute.org", institution="Lovelace Institute",
                today=date(2026, 1, 1), cohort_n=400, noise_multiplier=1.0, n_parameters=5000)
    return Facts(**(base | kw))


def test_compliant_plan_passes_every_rule():
    policy, _ = load_policy(ROOT / "policies" / "st-agnes.yaml")
    plan = make_plan(rounds=4).model_copy(update={"batch_size": 32})
    lines = review_plan(policy, plan, _facts())
    assert [ln.rule for ln in lines if ln.status != "pass"] == []


def test_public_part_hides_who_is_allowed():
    policy, _ = load_policy(ROOT / "policies" / "st-agnes.yaml")
    public = policy.public()
    text = str(public)
    assert "ada@lovelace-institute.org" not in text and "st-agnes-dpo" not in text
    assert public["datasets"]["brain-mri-pet"]["privacy"]["epsilon_per_plan"] == 8.0
