"""Property tests: whatever YAML arrives, the loader answers with a policy or a located error."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.schema import PolicyError, SitePolicy, parse_policy

EXAMPLE = (Path(__file__).resolve().parents[3] / "policies" / "riverside.yaml").read_text()
KEYS = ["version", "approval", "approvals_required", "reviewers", "datasets", "access",
        "privacy", "training", "release", "model_code", "epsilon_per_plan", "delta_max",
        "max_rounds", "domains", "batch_size", "min", "max", "*", "brain-mri-pet"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**9),
                    st.floats(allow_nan=True), st.text(max_size=12), st.sampled_from(KEYS))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8),
                                            inner, max_size=5)),
    max_leaves=25)
LOCATED = re.compile(r"^x\.yaml(:\d+)?: ")


def _check(text: str) -> None:
    try:
        result = parse_policy(text, "x.yaml")
    except PolicyError as exc:
        for line in str(exc).splitlines():
            assert LOCATED.match(line), line
        return
    assert isinstance(result, SitePolicy)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents)
def test_any_yaml_document_gives_a_policy_or_a_located_error(doc):
    _check(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_policy_or_a_located_error(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(EXAMPLE) - 1), st.text(max_size=6))
def test_mutated_example_gives_a_policy_or_a_located_error(pos, insert):
    _check(EXAMPLE[:pos] + insert + EXAMPLE[pos:])
