"""Hard checks on a whole syft request: it is exactly what the medsyft client sends for a plan.

The client submits one `UserCode` made by `policies.contract.template` with
`sy.syft_function(input_policy=sy.MixedInputPolicy(client=..., data=asset,
weights=dict))` and syft's default output policy. The site approves that
request, not a function that happens to match: everything a researcher can
set on the request is compared with what the client produces, and anything
else is a hard failure that no override can pass (custom policy classes or
their code, other built-in policies or arguments, extra or renamed inputs, a
worker pool, nested code, pre-set policy state, more than one change, a
change aimed at another object, a requester that is not the code's owner).

Pure comparison of syft objects as the admin client reads them; nothing is
executed and no private value is touched. Messages name the field that differs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from policies.verdict import CheckResult

INPUTS = ("data", "weights")


@dataclass(frozen=True)
class SiteIdentity:
    """This datasite as a request must name it in its input policy."""

    server_id: str
    verify_key: str


def _hard(rule: str, problem: str | None, seen: str, limit: str) -> CheckResult:
    return CheckResult(rule=rule, status="pass" if problem is None else "fail", seen=seen,
                       limit=limit, message=problem or "", overridable=False)


def _hex(uid: Any) -> str:
    return str(getattr(uid, "no_dash", uid)).replace("-", "")


def _changes_problem(req: Any, code: Any) -> str | None:
    from syft.service.code.user_code import UserCodeStatus
    from syft.service.request.request import UserCodeStatusChange

    changes = list(req.changes or [])
    if len(changes) != 1:
        return f"the request carries {len(changes)} changes; a plan request carries one"
    change = changes[0]
    if type(change) is not UserCodeStatusChange:
        return f"the change is a {type(change).__name__}, not a code status change"
    if change.value != UserCodeStatus.APPROVED or change.nested_solved or not change.match_type:
        return "the change does not ask for plain approval of the code"
    if _hex(change.linked_user_code.object_uid) != _hex(code.id):
        return "the change points at other code than the request's"
    if _hex(change.linked_obj.object_uid) != _hex(code.status_link.object_uid):
        return "the change points at another status than the code's"
    if str(req.requesting_user_verify_key) != str(code.user_verify_key):
        return "the requester is not the account that submitted the code"
    return None


def _signature_problem(code: Any) -> str | None:
    params = list(code.signature.parameters.values())
    if [p.name for p in params] != list(INPUTS) or list(code.input_kwargs or []) != list(INPUTS):
        return f"the function must take exactly ({', '.join(INPUTS)})"
    for p in params:
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or \
                p.default is not inspect.Parameter.empty or \
                p.annotation is not inspect.Parameter.empty:
            return f"argument {p.name} has a default, annotation or unusual kind"
    if code.uses_datasite or code.nested_codes:
        return "the code launches nested jobs"
    return None


def _input_policy(code: Any, site: SiteIdentity, assets: dict[str, str]
                  ) -> tuple[str | None, str | None]:
    """(problem, dataset) for the input policy: exactly {data: a published asset,
    weights: a dict the researcher owns}, for this site."""
    from syft.client.api import ServerIdentity
    from syft.service.policy.policy import Matches, MixedInputPolicy, UserOwned

    if code.input_policy_type is not MixedInputPolicy:
        return (f"input policy is {getattr(code.input_policy_type, '__name__', 'custom')}, "
                "not syft's MixedInputPolicy"), None
    if code.input_policy_state:
        return "the input policy arrives with state already set", None
    kwargs = code.input_policy_init_kwargs or {}
    if len(kwargs) != 1:
        return "the input policy must name this one site", None
    identity, rules = next(iter(kwargs.items()))
    if type(identity) is not ServerIdentity or _hex(identity.server_id) != site.server_id \
            or str(identity.verify_key) != site.verify_key:
        return "the input policy names another server", None
    if not isinstance(rules, dict) or set(rules) != set(INPUTS):
        return f"the input policy must pin exactly {', '.join(INPUTS)}", None
    data, weights = rules["data"], rules["weights"]
    if type(data) is not Matches or data.kw != "data" or not data.requires_input:
        return "input data is not pinned to a dataset", None
    dataset = assets.get(_hex(data.val))
    if dataset is None:
        return "input data is not one of this site's published datasets", None
    if type(weights) is not UserOwned or weights.kw != "weights" or weights.type is not dict \
            or not weights.requires_input:
        return "input weights are not a dict owned by the researcher", dataset
    return None, dataset


def _output_policy(code: Any) -> str | None:
    from syft.service.policy.policy import OutputPolicyExecuteOnce
    from syft.types.uid import UID

    if code.output_policy_type is not OutputPolicyExecuteOnce:
        return (f"output policy is {getattr(code.output_policy_type, '__name__', 'custom')}, "
                "not syft's default OutputPolicyExecuteOnce")
    if code.output_policy_state:
        return "the output policy arrives with state already set"
    kwargs = code.output_policy_init_kwargs or {}
    if set(kwargs) != {"id"} or type(kwargs["id"]) is not UID:
        return "the output policy has arguments the template never sets"
    return None


def _fields_problem(code: Any) -> str | None:
    from syft.service.worker.utils import DEFAULT_WORKER_POOL_NAME

    if code.worker_pool_name not in (None, DEFAULT_WORKER_POOL_NAME):
        return "the code names a worker pool"
    side = getattr(code.origin_server_side_type, "value", "")
    if side != "high":
        return "the code was not submitted to this (high-side) site"
    return None


def request_checks(req: Any, code: Any, site: SiteIdentity, assets: dict[str, str]
                   ) -> tuple[list[CheckResult], str | None]:
    """The hard checks on everything around the function, and the pinned dataset."""
    input_problem, dataset = _input_policy(code, site, assets)
    checks = [
        _hard("request.changes", _changes_problem(req, code), "request", "one approval of "
              "this code, asked by its owner"),
        _hard("code.signature", _signature_problem(code), "function arguments",
              "(data, weights), no nested jobs"),
        _hard("inputs", input_problem, str(dataset), "a published dataset + a weights dict"),
        _hard("code.output_policy", _output_policy(code), "output policy",
              "syft's default, no arguments"),
        _hard("code.fields", _fields_problem(code), "other code fields",
              "as the medsyft client sets them"),
    ]
    return checks, dataset
