from pathlib import Path

import pytest

from policies.checks import check_plan
from policies.schema import PolicyError, load_policy

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["st-agnes", "riverside", "northgate"])
def test_example_policies_are_valid(name):
    policy, digest = load_policy(ROOT / "policies" / f"{name}.yaml")
    assert policy.version == 1 and len(digest) == 64


def test_misspelt_key_is_an_error_naming_the_line(tmp_path):
    text = (ROOT / "policies" / "st-agnes.yaml").read_text().replace(
        "max_rounds:", "max_round:")
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "max_round:" in ln)
    assert f"{f}:{line}:" in str(exc.value)
    assert "max_round" in str(exc.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\ndatasets:\n  a: [unclosed\n")
    with pytest.raises(PolicyError, match=r"p\.yaml:\d+: not valid YAML"):
        load_policy(f)


def test_checks_name_each_failing_rule():
    policy, _ = load_policy(ROOT / "policies" / "riverside.yaml")
    results = check_plan(policy, dataset="brain-mri-pet", researcher="eve@elsewhere.org",
                         epsilon=20.0, delta=1e-5, rounds=50)
    failing = {r.rule for r in results if r.status == "fail"}
    assert failing == {"access.researcher", "privacy.epsilon_per_plan", "training.max_rounds"}
    ok = check_plan(policy, dataset="brain-mri-pet", researcher="ada@lovelace-institute.org",
                    epsilon=8.0, delta=1e-5, rounds=5)
    assert all(r.status == "pass" for r in ok)


def test_unknown_dataset_fails():
    policy, _ = load_policy(ROOT / "policies" / "st-agnes.yaml")
    results = check_plan(policy, dataset="other", researcher="a@lovelace-institute.org",
                         epsilon=1, delta=1e-5, rounds=1)
    assert [r.rule for r in results if r.status == "fail"] == ["dataset"]
