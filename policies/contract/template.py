"""The one fixed syft function template that carries a plan to a site.

The researcher client renders it; the site parses what was submitted, takes the
embedded plan out and renders the template again: the submission is accepted
only if both syntax trees are identical. So after approval nothing but the
global weights can vary between rounds. The function body only calls the site
runtime; it must never grow logic of its own.
"""

from __future__ import annotations

import ast
import linecache
from collections.abc import Callable

from pydantic import ValidationError

from policies.contract.errors import MedsyftError
from policies.contract.parsing import TooComplex, bounded_parse
from policies.contract.plan import TrainingPlan

TEMPLATE = '''def {func_name}(data, weights):
    from sites.runtime import execute_round
    return execute_round(plan_json={plan_json!r}, data=data, weights=weights)
'''


#: The template's syntax tree is 8 levels deep; nothing deeper can be it.
TEMPLATE_DEPTH = 16


class TemplateMismatch(MedsyftError, ValueError):
    """The submitted code is not exactly the medsyft template for its plan."""


def render_source(plan: TrainingPlan) -> str:
    """The syft function's source for `plan`: the fixed template with the plan's function
    name and canonical JSON filled in (nothing of the researcher's is code in it)."""
    return TEMPLATE.format(func_name=plan.function_name, plan_json=plan.canonical_json())


def build_function(plan: TrainingPlan) -> Callable:
    """A real function object whose source `inspect.getsource` can find (for syft)."""
    source = render_source(plan)
    filename = f"<medsyft-plan-{plan.plan_hash[:16]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own template
    return namespace[plan.function_name]


def _dump(tree: ast.AST) -> str:
    return ast.dump(tree, annotate_fields=True, include_attributes=False)


def extract_plan(source: str) -> TrainingPlan:
    """Parse submitted code, return its plan if and only if it is exactly the template.

    Args:
        source: the code of a syft request (untrusted; never executed here).

    Returns:
        The plan embedded in it.

    Raises:
        TemplateMismatch: the code is not the template rendered for its own plan (any
            other statement, name or literal), or the embedded plan is invalid.
    """
    try:
        tree = bounded_parse(source, max_depth=TEMPLATE_DEPTH)
    except SyntaxError as exc:
        raise TemplateMismatch(f"submitted code does not parse: {exc.msg}") from None
    except TooComplex as exc:  # the template is a few levels deep: this is not it
        raise TemplateMismatch(f"submitted code is {exc}, unlike the template") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise TemplateMismatch("submitted code is not a single function definition")
    plan_json = None
    for node in ast.walk(tree.body[0]):
        if isinstance(node, ast.keyword) and node.arg == "plan_json":
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                plan_json = node.value.value
    if plan_json is None:
        raise TemplateMismatch("submitted code carries no plan literal")
    try:
        plan = TrainingPlan.model_validate_json(plan_json)
    except ValidationError as exc:
        raise TemplateMismatch(f"embedded plan is invalid: {exc.error_count()} error(s)") from None
    expected = ast.parse(render_source(plan))
    if _dump(tree) != _dump(expected):
        raise TemplateMismatch("submitted code differs from the medsyft template for its plan")
    return plan
