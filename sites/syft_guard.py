"""The site's guard around syft 0.9.5: what a researcher's syft traffic may do at all.

`sites.syft_patches` only skips work; this module changes what syft allows, and
only ever by refusing more. Installed by `sites.server_main` before the server
serves its first call; if syft is not the version the guard was written
against, the site refuses to start rather than run unguarded. Five parts:

* **Safe typing aliases** (serde): syft 0.9.5 rebuilds a serialized
  `typing._GenericAlias` / `_UnionGenericAlias` by calling whatever
  `module.function` the sender names with the arguments the sender gives
  (`deserialize_generic_alias`); every route deserialises its body before
  any check, so `{"path": "os.system", "command": ...}` ran a shell in the
  server with no account at all. Here only `typing.<name>` for the typing
  constructors in `TYPING_ALIASES`, with only the alias fields, is rebuilt;
  anything else fails to deserialise.

* **API gate** (`Server.handle_api_call_with_unsigned_result`): a call from any
  role below data owner goes on only if `sites.researcher_api.refusal` allows
  it (the methods the medsyft client uses, each with its argument rule;
  blocking calls to this server only). syft's own checks still run after it.
* **Submission check** (`UserCodeService._submit`): user code from a
  researcher whose input or output policy is not the template's built-in pair
  (`MixedInputPolicy`, `OutputPolicyExecuteOnce`): a custom policy class, its
  code, or a stored policy's UID; that names a worker pool; that takes a
  `datasite` argument (nested jobs); or whose source exceeds any plan's size,
  is refused before syft stores it, so it can never be approved or run.
* **No policy code**: syft's loader of custom policy classes
  (`execute_policy_code`) refuses, so policy code never runs in this process,
  even for code stored before the guard or approved through raw syft.
* **Template-only execution**: the only function syft may execute here is the
  medsyft plan template with the built-in policies (`execute_byte_code` as the
  action service calls it); the template itself runs nothing but
  `sites.runtime.execute_round`, which checks the governance approval.

It must never log argument values or private data; refusals name the method
and the rule only.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

log = logging.getLogger("medsyft.site")

#: Larger than any template a valid plan renders to (the model source is at most 100,000
#: characters; JSON and repr escaping at most multiply it by 7), far below memory trouble.
MAX_SUBMITTED_CODE = 1_000_000
GUARDED_SYFT = "0.9.5"


class GuardNotApplied(RuntimeError):
    """syft is not the version this guard was written against: the site must not start."""


def _syft_exception(message: str) -> Exception:
    from syft.types.errors import SyftException

    return SyftException(public_message=message)


def _is_researcher(role: Any) -> bool:
    from syft.service.user.user_roles import ServiceRole

    return role is None or role.value < ServiceRole.DATA_OWNER.value


# -- safe typing aliases ---------------------------------------------------------------------
#: The typing constructors syft serialises as generic aliases (List[int] -> "typing.List").
TYPING_ALIASES = frozenset({
    "List", "Dict", "Tuple", "Set", "FrozenSet", "Type", "Optional", "Union", "Sequence",
    "Mapping", "MutableMapping", "MutableSequence", "Iterable", "Iterator", "Collection",
    "DefaultDict", "OrderedDict", "Deque", "Counter", "ChainMap", "AbstractSet",
    "MutableSet", "Generator", "AsyncIterator", "AsyncIterable", "Awaitable", "Coroutine",
    "ClassVar", "Final", "Callable"})
_ALIAS_FIELDS = frozenset({"path", "__origin__", "__args__", "_paramspec_tvars"})


def alias_problem(fields: Any) -> str | None:
    """Why a serialized generic alias may not be rebuilt, or None."""
    if not isinstance(fields, dict) or not set(fields) <= _ALIAS_FIELDS:
        return "a typing alias with fields other than origin and arguments"
    path = fields.get("path")
    module, _, name = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    if module != "typing" or name not in TYPING_ALIASES:
        return "a typing alias that names something other than a typing constructor"
    return None


def _safe_alias(original: Any) -> Any:
    @functools.wraps(original)
    def deserialize_generic_alias_safely(type_blob: bytes) -> Any:
        from syft.serde.deserialize import _deserialize

        problem = alias_problem(_deserialize(type_blob, from_bytes=True))
        if problem is not None:
            log.warning("refused to deserialise %s", problem)
            raise _syft_exception(f"refused by the medsyft site: {problem}")
        return original(type_blob)

    deserialize_generic_alias_safely.medsyft_guard = True  # type: ignore[attr-defined]
    return deserialize_generic_alias_safely


def guard_deserialization() -> list[str]:
    """Only the safe typing-alias deserialiser, for any process that reads syft bytes from
    elsewhere (the researcher client reads every site's answers)."""
    return _guard_aliases()


def _guard_aliases() -> list[str]:
    from syft.serde import recursive_primitives
    from syft.types.syft_object_registry import SyftObjectRegistry

    original = recursive_primitives.deserialize_generic_alias
    if getattr(original, "medsyft_guard", False):
        return []
    if getattr(original, "__qualname__", "") != "deserialize_generic_alias":
        raise GuardNotApplied("syft's generic-alias deserialiser is not the one the guard was "
                              "written against; the site does not start unguarded")
    safe = _safe_alias(original)
    done = []
    registry = SyftObjectRegistry.__object_serialization_registry__
    for name, versions in registry.items():
        for version, entry in list(versions.items()):
            if any(part is original for part in entry):
                versions[version] = tuple(safe if part is original else part for part in entry)
                done.append(f"serde {name} v{version}")
    if {d.split()[1] for d in done} != {"_GenericAlias", "_UnionGenericAlias"}:
        raise GuardNotApplied("syft's generic-alias registrations are not the ones the guard "
                              "was written against; the site does not start unguarded")
    recursive_primitives.deserialize_generic_alias = safe
    return done


# -- API gate ------------------------------------------------------------------------------
def _gate(original: Any) -> Any:
    @functools.wraps(original)
    def handle_api_call_guarded(self: Any, api_call: Any, *args: Any, **kwargs: Any) -> Any:
        from syft.service.response import SyftError

        from sites.researcher_api import refusal

        credentials = api_call.credentials
        role = self.get_role_for_credentials(credentials=credentials)
        if _is_researcher(role):
            call = getattr(api_call, "message", api_call)  # signed: the inner SyftAPICall
            try:
                reason = refusal(self, credentials, role, call)
            except Exception as exc:  # a malformed call: refuse, name only its type
                reason = f"{getattr(call, 'path', '?')}: malformed call ({type(exc).__name__})"
            if reason is not None:
                log.warning("refused a researcher call: %s", reason)
                return SyftError(message=f"refused by the medsyft site: {reason}")
        return original(self, api_call, *args, **kwargs)

    handle_api_call_guarded.medsyft_guard = True  # type: ignore[attr-defined]
    return handle_api_call_guarded


# -- submission check ----------------------------------------------------------------------
def submission_problem(submit_code: Any) -> str | None:
    """Why a researcher's SubmitUserCode is refused before syft stores it, or None."""
    from syft.service.policy.policy import MixedInputPolicy, OutputPolicyExecuteOnce

    if type(submit_code).__name__ != "SubmitUserCode":
        return "only new code can be submitted"
    if not isinstance(submit_code.code, str) or len(submit_code.code) > MAX_SUBMITTED_CODE:
        return "the submitted code is larger than any medsyft plan"
    if submit_code.input_policy_type is not MixedInputPolicy:
        return ("the input policy is not syft's built-in MixedInputPolicy (custom policies "
                "never run on a medsyft site)")
    if submit_code.output_policy_type is not OutputPolicyExecuteOnce:
        return ("the output policy is not syft's built-in OutputPolicyExecuteOnce (custom "
                "policies never run on a medsyft site)")
    if submit_code.worker_pool_name is not None:
        return "a plan does not choose a worker pool"
    if "datasite" in list(submit_code.input_kwargs or []):
        return "a plan does not launch nested jobs (no datasite argument)"
    return None


def _submit_guard(original: Any) -> Any:
    from syft.types.errors import SyftException
    from syft.types.result import as_result

    def submit_guarded(self: Any, context: Any, submit_code: Any,
                       exists_ok: bool = False) -> Any:
        if _is_researcher(getattr(context, "role", None)):
            problem = submission_problem(submit_code)
            if problem is not None:
                log.warning("refused a code submission: %s", problem)
                raise SyftException(public_message=f"refused by the medsyft site: {problem}")
        return original(self, context, submit_code, exists_ok=exists_ok).unwrap()

    guarded = as_result(SyftException)(submit_guarded)
    guarded.medsyft_guard = True  # type: ignore[attr-defined]
    return guarded


# -- no policy code ------------------------------------------------------------------------
def execute_policy_code_refused(user_policy: Any) -> Any:
    """Stands in for syft's `execute_policy_code`: custom policy code never runs here."""
    raise _syft_exception("refused by the medsyft site: custom policy code never runs here")


execute_policy_code_refused.medsyft_guard = True  # type: ignore[attr-defined]


# -- template-only execution ---------------------------------------------------------------
def execution_problem(code_item: Any) -> str | None:
    """Why syft may not execute this user code on a medsyft site, or None."""
    from syft.service.policy.policy import MixedInputPolicy, OutputPolicyExecuteOnce

    from researcher.template import TemplateMismatch, extract_plan

    if code_item.input_policy_type is not MixedInputPolicy or \
            code_item.output_policy_type is not OutputPolicyExecuteOnce:
        return "the code's policies are not the medsyft template's"
    raw = code_item.raw_code
    if not isinstance(raw, str) or len(raw) > MAX_SUBMITTED_CODE:
        return "the code is not a medsyft plan"
    try:
        plan = extract_plan(raw)
    except TemplateMismatch as exc:
        return f"the code is not the medsyft template ({exc})"
    if plan.function_name != code_item.service_func_name:
        return "the code's function name is not its plan's"
    return None


def _execute_guard(original: Any) -> Any:
    @functools.wraps(original)
    def execute_byte_code_guarded(code_item: Any, kwargs: Any, context: Any) -> Any:
        problem = execution_problem(code_item)
        if problem is not None:
            log.error("refused to execute user code %s: %s",
                      str(getattr(code_item, "id", "?"))[:8], problem)
            raise _syft_exception(f"refused by the medsyft site: {problem}")
        return original(code_item, kwargs, context)

    execute_byte_code_guarded.medsyft_guard = True  # type: ignore[attr-defined]
    return execute_byte_code_guarded


# -- install -------------------------------------------------------------------------------
def _replace(module_name: str, owner: Any, attr: str, make: Any, expected: str) -> str:
    current = getattr(owner, attr)
    if getattr(current, "medsyft_guard", False):
        return ""
    if getattr(current, "__qualname__", "").split(".")[-1] != expected and \
            getattr(getattr(current, "__wrapped__", None), "__qualname__", "") != expected:
        raise GuardNotApplied(f"{module_name}.{attr} is not the syft function the guard was "
                              "written against; the site does not start unguarded")
    setattr(owner, attr, make(current) if make is not None else execute_policy_code_refused)
    return f"{module_name}.{attr}"


def apply() -> list[str]:
    """Install the guard in this (server) process; returns what was guarded."""
    import syft

    if syft.__version__ != GUARDED_SYFT:
        raise GuardNotApplied(f"syft {syft.__version__} is not {GUARDED_SYFT}: the request "
                              "guard cannot be installed and the site does not start")
    from syft.server.server import Server
    from syft.service.code.user_code_service import UserCodeService

    action_service = importlib.import_module("syft.service.action.action_service")
    policy = importlib.import_module("syft.service.policy.policy")
    done = _guard_aliases() + [
        _replace("syft.server.server.Server", Server, "handle_api_call_with_unsigned_result",
                 _gate, "handle_api_call_with_unsigned_result"),
        _replace("syft.service.code.user_code_service.UserCodeService", UserCodeService,
                 "_submit", _submit_guard, "_submit"),
        _replace("syft.service.policy.policy", policy, "execute_policy_code", None,
                 "execute_policy_code"),
        _replace("syft.service.action.action_service", action_service, "execute_byte_code",
                 _execute_guard, "execute_byte_code"),
    ]
    return [d for d in done if d]
