"""The syft service methods a researcher may call on a medsyft site, each with its rule.

syft 0.9.5 lets a data scientist reach about a hundred service methods (the
list comes from syft's own registry: `syft_methods_for_researchers`). Several
read other users' objects (`user.view` returns another account's email, role
and institution; `output.get_by_user_code_id` another researcher's execution
records), several change the caller's identity (`user.update` edits email,
institution and even the verify key), and most are of no use to a medsyft
researcher (jobs, logs, workers, projects, networks, sync). On a medsyft site a
researcher (any role below data owner) may call only the methods in `RULES`:
exactly what the medsyft client uses, each with an argument rule where syft's
own check is not enough. Everything else is refused by `sites.common.syft_guard`,
which asks `refusal()` before syft sees the call.

This module decides only from the call and the site's own records; it never
allows anything syft itself would refuse (syft's checks still run after it),
and a refusal names the method but never echoes argument values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sites.review.public_endpoint import ENDPOINT_PATH

#: Keyword arguments the syft client adds to every call; not the researcher's input.
TRANSPORT_KWARGS = frozenset({"communication_protocol"})


@dataclass(frozen=True)
class Rule:
    """Why a researcher needs the method, and an optional argument check."""

    why: str
    check: Callable[[Any, Any, Any], str | None] | None = None


def _arg(call: Any, name: str, position: int = 0) -> Any:
    if name in call.kwargs:
        return call.kwargs[name]
    if len(call.args) > position:
        return call.args[position]
    return None


def _uid(value: Any) -> Any:
    """A UID (or LineageID) as the plain UID syft stores objects under."""
    return getattr(value, "id", value) if type(value).__name__ == "LineageID" else value


def _caller_user_id(server: Any, credentials: Any) -> Any:
    return server.services.user.get_by_verify_key(credentials).unwrap().id


def _own_password_only(server: Any, credentials: Any, call: Any) -> str | None:
    """`user.update` only to set the caller's own password: identity is the site's record."""
    fields = set(call.kwargs) - TRANSPORT_KWARGS - {"uid"}
    if call.args or fields != {"password"}:
        return ("a researcher can change only their own password here; name, email, "
                "institution and role are kept by the site's data owner")
    if call.kwargs.get("uid") != _caller_user_id(server, credentials):
        return "a researcher can change only their own password"
    return None


def _published_asset(server: Any, credentials: Any, call: Any) -> str | None:
    """Mocks are public only for the site's published assets."""
    uid = _uid(_arg(call, "uid"))
    root = server.verify_key
    for ds in server.services.dataset.stash.get_all(root).unwrap():
        if any(asset.action_id == uid for asset in ds.asset_list):
            return None
    return "mocks are served only for the site's published datasets"


def _writes_blob(server: Any, credentials: Any, blob_id: Any) -> bool:
    """Whether the caller may write this blob storage entry (they allocated it)."""
    from syft.service.action.action_permissions import ActionObjectWRITE

    return server.services.blob_storage.stash.has_permission(
        ActionObjectWRITE(uid=_uid(blob_id), credentials=credentials))


def _new_object(server: Any, credentials: Any, call: Any) -> str | None:
    """A researcher uploads new plain objects (the round's weights): never over an existing
    id, never a twin (syft makes a twin's mock blob readable by everyone, whichever blob it
    names), never pointing at blob storage the caller did not allocate."""
    from syft.service.action.action_object import ActionObject

    obj = _arg(call, "action_object")
    if not isinstance(obj, ActionObject):
        return "an upload is one plain object (no twins)"
    uid = _uid(getattr(obj, "id", None))
    if uid is None:
        return "an upload needs an object with an id"
    if server.services.action.stash.exists(credentials=server.verify_key, uid=uid):
        return "an upload may not replace an object that already exists"
    blob_id = obj.syft_blob_storage_entry_id
    if blob_id is not None and not _writes_blob(server, credentials, blob_id):
        return "an upload may only name blob storage its uploader allocated"
    return None


#: Largest single upload a researcher may ask room for (weights are capped at 2 GiB).
MAX_UPLOAD_BYTES = 4 * 1024**3


def _plain_allocation(server: Any, credentials: Any, call: Any) -> str | None:
    """Room for the client's own serialised upload: no file-name extensions (syft appends
    them to the stored file's path), a size within the upload cap."""
    entry = _arg(call, "obj")
    if type(entry).__name__ != "CreateBlobStorageEntry":
        return "room is asked for with a blob storage entry"
    if entry.extensions:
        return "an upload has no file-name extensions"
    if not isinstance(entry.file_size, int) or not 0 < entry.file_size <= MAX_UPLOAD_BYTES:
        return f"an upload is between 1 byte and {MAX_UPLOAD_BYTES // 1024**3} GiB"
    return None


def _own_blob(server: Any, credentials: Any, call: Any) -> str | None:
    """Writing into blob storage: only into an entry the caller allocated (syft itself asks
    only for read permission, which every published mock's blob gives everyone)."""
    if not _writes_blob(server, credentials, _arg(call, "uid")):
        return "one can write only into blob storage one allocated"
    return None


def _readable(server: Any, credentials: Any, call: Any) -> str | None:
    """Asked only about objects the caller may read (else it is an existence oracle)."""
    from syft.service.action.action_permissions import ActionObjectREAD

    uid = _uid(_arg(call, "uid"))
    if uid is None or not server.services.action.stash.has_permission(
            ActionObjectREAD(uid=uid, credentials=credentials)):
        return "only the caller's own objects can be asked about"
    return None


LINKS = frozenset({("UserCodeService", "UserCode"),
                   ("UserCodeStatusService", "UserCodeStatusCollection")})


def _own_code_link(server: Any, credentials: Any, call: Any) -> str | None:
    """The client resolves the code behind its own requests and that code's status (where a
    denial's reason is); nothing else."""
    link = _arg(call, "linked_obj")
    service = getattr(getattr(link, "service_type", None), "__name__", "")
    kind = getattr(getattr(link, "object_type", None), "__name__", "")
    if (service, kind) not in LINKS:
        return "only the code (and status) of the caller's own requests can be resolved"
    return None


def _request_refresh(server: Any, credentials: Any, call: Any) -> str | None:
    """The client refreshes its own requests; no other object type."""
    kind = _arg(call, "object_type", 1)
    if getattr(kind, "__name__", "") != "Request" or getattr(kind, "__module__", "") != \
            "syft.service.request.request":
        return "only the caller's own requests can be refreshed"
    return None


#: Requests one researcher may have waiting for a decision at once (a flood of requests would
#: otherwise lengthen every review turn of the site's steward for everybody).
MAX_PENDING_REQUESTS = 10


def _pending_cap(server: Any, credentials: Any, call: Any) -> str | None:
    from syft.service.context import AuthedServiceContext
    from syft.service.user.user_roles import ServiceRole

    context = AuthedServiceContext(server=server, credentials=credentials,
                                   role=ServiceRole.DATA_SCIENTIST)
    waiting = len(server.services.request.get_all_pending(context))  # the caller's own
    if waiting >= MAX_PENDING_REQUESTS:
        return (f"{waiting} of your requests are still awaiting review on this site; wait "
                "for decisions before sending more")
    return None


def _policy_endpoint(server: Any, credentials: Any, call: Any) -> str | None:
    if _arg(call, "path") != ENDPOINT_PATH:
        return f"the only endpoint a researcher may call here is {ENDPOINT_PATH}"
    return None


OWN = "syft answers only with the caller's own objects (tested against a second researcher)"

RULES: dict[str, Rule] = {
    "metadata.get_metadata": Rule("the site's public metadata (name, id, version)"),
    "user.get_current_user": Rule("the caller's own account"),
    "user.update": Rule("change one's own password", _own_password_only),
    "dataset.get_all": Rule("the site's published datasets (descriptions, public mocks)"),
    "action.get_mock": Rule("a published dataset's synthetic mock", _published_asset),
    "action.set": Rule("upload the round's weights as a new object", _new_object),
    "action.get": Rule("read a round's result; " + OWN),
    "action.has_storage_permission": Rule("the client checks its result's storage",
                                          _readable),
    "blob_storage.allocate": Rule("room for a large upload (weights over 1 MB)",
                                  _plain_allocation),
    "blob_storage.write_to_disk": Rule("write one's own large upload", _own_blob),
    "blob_storage.read": Rule("read one's own large result; " + OWN),
    "code.request_code_execution": Rule("submit a plan as the medsyft template (the "
                                        "submission check refuses anything else), at most "
                                        f"{MAX_PENDING_REQUESTS} awaiting review",
                                        _pending_cap),
    "code.get_all": Rule("the caller's own submitted code; " + OWN),
    "code.call": Rule("run a round of an approved plan; " + OWN),
    "request.get_all": Rule("the caller's own requests and their status; " + OWN),
    "notifications.resolve_object": Rule("the code and status behind the caller's own "
                                         "requests; " + OWN, _own_code_link),
    "migration._get_object": Rule("refresh the caller's own requests; " + OWN,
                                  _request_refresh),
    "api.call_public": Rule("the site's public policy", _policy_endpoint),
}

#: What an unauthenticated guest may call: nothing (sign-up is off; `sites.common.syft_guard`
#: refuses a guest's call before reading it).
GUEST_RULES: frozenset[str] = frozenset()


def refusal(server: Any, credentials: Any, role: Any, call: Any) -> str | None:
    """Why a call from a role below data owner is refused, or None when it may go on."""
    from syft.service.user.user_roles import ServiceRole

    path = str(call.path)
    if not call.blocking:
        return f"{path}: researchers' calls run blocking on a medsyft site (no job queue)"
    if call.server_uid != server.id:
        return f"{path}: calls are not forwarded to other servers"
    if role == ServiceRole.GUEST and path not in GUEST_RULES:
        return f"{path} is not available without an account on a medsyft site"
    rule = RULES.get(path)
    if rule is None:
        return f"{path} is not available to researchers on a medsyft site"
    if rule.check is not None:
        reason = rule.check(server, credentials, call)
        if reason:
            return f"{path}: {reason}"
    return None


def syft_methods_for_researchers() -> list[str]:
    """Every service method syft 0.9.5 itself lets a data scientist call."""
    from syft.service.service import UserServiceConfigRegistry
    from syft.service.user.user_roles import ServiceRole

    registry = UserServiceConfigRegistry.from_role(ServiceRole.DATA_SCIENTIST)
    return sorted(registry.get_registered_configs())
