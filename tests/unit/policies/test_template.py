"""The submitted syft function must be exactly the template for its embedded plan."""

import inspect

import pytest

from policies.contract.template import (
    TEMPLATE,
    TemplateMismatch,
    build_function,
    extract_plan,
    render_source,
)
from tests.support.plans import make_plan


def test_round_trip_recovers_the_plan():
    plan = make_plan(researcher="ada@lovelace-institute.org")
    assert extract_plan(render_source(plan)) == plan


def test_built_function_has_source_syft_can_read():
    plan = make_plan()
    fn = build_function(plan)
    assert fn.__name__ == plan.function_name
    assert inspect.getsource(fn) == render_source(plan)


@pytest.mark.parametrize("mutate", [
    lambda s: s.replace("return execute_round", "import os\n    return execute_round"),
    lambda s: s.replace("from sites.runtime import execute_round",
                        "from sites.runtime import _execute as execute_round"),
    lambda s: s.replace("weights=weights", "weights=data"),
    lambda s: s + "\nprint('extra')\n",
    lambda s: s.replace('"rounds":2', '"rounds":3'),  # plan changed, name (hash) not
    lambda s: s.replace("def medsyft_", "def other_"),
])
def test_any_change_is_refused(mutate):
    source = render_source(make_plan())
    with pytest.raises(TemplateMismatch):
        extract_plan(mutate(source))


def test_non_canonical_plan_json_is_refused():
    plan = make_plan()
    source = TEMPLATE.format(func_name=plan.function_name, plan_json=plan.model_dump_json())
    assert source != render_source(plan)
    with pytest.raises(TemplateMismatch):
        extract_plan(source)


def test_each_plan_version_has_its_own_function_name():
    assert make_plan(version=1).function_name != make_plan(version=2).function_name
    assert make_plan(rounds=2).function_name != make_plan(rounds=3).function_name
