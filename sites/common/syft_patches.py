"""Behaviour-preserving speed fixes to syft 0.9.5 internals, for sites and researchers.

syft 0.9.5 walks every service result to stamp the server id and caller key on
each syft object inside it (`attach_attribute_to_syft_object`). The walk treats
any `Sequence` as a container, so the `bytes` of a blob-storage read (the
weights going into a round and the result coming back) are walked one byte at a
time: 2.5 to 4.6 s per 40 MB read on 2 cores, several reads per round. A byte or
a character can never be a syft object, so skipping `str`/`bytes` leaves the
walk's effect exactly as it was.

Two more costs grow with the weights, each found by profiling a 40 MB round:

* `Server.handle_api_call_with_unsigned_result` logs `f"API Call: {api_call}"`
  whatever the log level, and `SyftAPICall.__repr__` formats every argument:
  the whole weights payload turned into text on every call (0.4 s per 40 MB).
  The repr here names the path and the arguments' types only, which also keeps
  argument values out of any log.
* Storing an action object in blob storage serialises it twice: once to learn
  its size (`can_upload_to_blob_storage`), then again to store it (0.6 s per
  40 MB). The size check here keeps the bytes it made when the object goes to
  blob storage (per thread, with the object they came from), and `serialize`
  in syft's action_object module, whose only call is the very next statement,
  hands them back for that same object; any call clears them.

Applied once, at server start, by `sites.operator.server_main`, and in the researcher's
process by `Federation.connect` (the upload side of the double serialisation).
A patch here must never change what syft authorises, stores or returns; it may
only skip work whose result is known. Each patch checks that the function it
replaces is the one it was written against and otherwise leaves syft alone (and
says so in the log).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("medsyft.site")

_FLAT = (str, bytes, bytearray, memoryview)


def attach_attribute_to_syft_object(result: Any, attr_dict: dict[str, Any]) -> None:
    """syft 0.9.5's walk (types/syft_object.py), minus the walk over characters and bytes."""
    from syft.types.result import Err, Ok
    from syft.types.syft_object import SyftBaseObject

    if isinstance(result, _FLAT):
        return
    iterator: Any
    if isinstance(result, Ok):
        iterator = (result.ok(),)
    elif isinstance(result, Err):
        iterator = (result.err(),)
    elif isinstance(result, Mapping):
        iterator = result.values()
    elif isinstance(result, Sequence):
        iterator = result
    else:
        iterator = (result,)
    for obj in iterator:
        if isinstance(obj, SyftBaseObject):
            for name, value in attr_dict.items():
                setattr(obj, name, value)
            for field in obj.model_fields:
                attach_attribute_to_syft_object(getattr(obj, field), attr_dict)


def api_call_repr(self: Any) -> str:
    """`SyftAPICall` as text without its argument values (syft formats them all)."""
    args = ", ".join(type(a).__name__ for a in self.args)
    kwargs = ", ".join(f"{k}: {type(v).__name__}" for k, v in self.kwargs.items())
    return (f"SyftAPICall(path={self.path}, args=[{args}], kwargs={{{kwargs}}}, "
            f"blocking={self.blocking})")


_last_serialized = threading.local()
_SERIALIZE_PARAMS = ["obj", "to_proto", "to_bytes", "for_hashing"]
_MB = 1024 * 1024


def can_upload_keeping_bytes(data: Any, metadata: Any) -> bool:
    """syft 0.9.5's `can_upload_to_blob_storage` (service/blob_storage/util.py), unwrapped.

    Same size rule and same error. When the answer is yes, the caller's very next
    step is to serialise `data` for the store, so the bytes are kept for it; when
    it is no, nothing is kept.
    """
    from syft.serde.serialize import _serialize
    from syft.service.blob_storage.util import min_size_for_blob_storage_upload
    from syft.types.errors import SyftException

    _last_serialized.pair = None
    try:
        serialized = _serialize(data, to_bytes=True)
    except Exception as e:
        data_type = type(data)
        exc = TypeError(
            f"Failed to serialize data of type '{data_type.__module__}.{data_type.__name__}'."
            f" Data type not supported. Detailed error: {e}")
        raise SyftException.from_exception(exc, public_message=str(exc)) from e
    big = sys.getsizeof(serialized) / _MB >= min_size_for_blob_storage_upload(metadata)
    if big:
        _last_serialized.pair = (data, serialized)
    return big


def _reusing(serialize: Callable[..., Any]) -> Callable[..., Any]:
    def serialize_reusing_size_check(obj: Any, to_proto: bool = True, to_bytes: bool = False,
                                     for_hashing: bool = False) -> Any:
        pair = getattr(_last_serialized, "pair", None)
        _last_serialized.pair = None
        if to_bytes and not for_hashing and pair is not None and pair[0] is obj:
            return pair[1]
        return serialize(obj, to_proto=to_proto, to_bytes=to_bytes, for_hashing=for_hashing)

    return serialize_reusing_size_check


def _patch_repr() -> list[str]:
    from syft.client.api import SyftAPICall

    if SyftAPICall.__repr__ is api_call_repr:
        return []
    if SyftAPICall.__repr__.__qualname__ != "SyftAPICall.__repr__":
        log.warning("SyftAPICall.__repr__ is not the function expected: left alone")
        return []
    SyftAPICall.__repr__ = api_call_repr  # type: ignore[method-assign]
    return ["syft.client.api.SyftAPICall.__repr__"]


def _patch_double_serialization() -> list[str]:
    import inspect

    from syft.service.action import action_object
    from syft.types.result import as_result

    current = action_object.can_upload_to_blob_storage
    if getattr(current, "medsyft_patch", False):
        return []
    serialize = action_object.serialize
    if (getattr(current, "__qualname__", "") != "can_upload_to_blob_storage"
            or getattr(serialize, "__qualname__", "") != "_serialize"
            or list(inspect.signature(serialize).parameters) != _SERIALIZE_PARAMS):
        log.warning("syft's blob size check or serialize is not the function expected: "
                    "left alone")
        return []
    from syft.types.errors import SyftException

    patched = as_result(SyftException)(can_upload_keeping_bytes)
    patched.medsyft_patch = True  # type: ignore[attr-defined]
    action_object.can_upload_to_blob_storage = patched
    action_object.serialize = _reusing(serialize)
    return ["syft.service.action.action_object.can_upload_to_blob_storage",
            "syft.service.action.action_object.serialize"]


#: (module, attribute) pairs that hold syft's walk; the recursion goes through the first.
_TARGETS = (("syft.types.syft_object", "attach_attribute_to_syft_object"),
            ("syft.service.service", "attach_attribute_to_syft_object"))


def apply() -> list[str]:
    """Install the patches; returns what was patched (empty if syft is not 0.9.5)."""
    import importlib

    import syft

    if syft.__version__ != "0.9.5":
        log.warning("syft %s is not 0.9.5: speed patches not applied", syft.__version__)
        return []
    done = []
    for module_name, attr in _TARGETS:
        module = importlib.import_module(module_name)
        current = getattr(module, attr, None)
        if current is attach_attribute_to_syft_object:
            continue
        if getattr(current, "__qualname__", "") != attr:
            log.warning("%s.%s is not the function expected: left alone", module_name, attr)
            continue
        setattr(module, attr, attach_attribute_to_syft_object)
        done.append(f"{module_name}.{attr}")
    return done + _patch_repr() + _patch_double_serialization()
