"""Behaviour-preserving speed fixes to syft 0.9.5 internals, for the site's server process.

syft 0.9.5 walks every service result to stamp the server id and caller key on
each syft object inside it (`attach_attribute_to_syft_object`). The walk treats
any `Sequence` as a container, so the `bytes` of a blob-storage read (the
weights going into a round and the result coming back) are walked one byte at a
time: 2.5 to 4.6 s per 40 MB read on 2 cores, several reads per round. A byte or
a character can never be a syft object, so skipping `str`/`bytes` leaves the
walk's effect exactly as it was.

Applied once, at server start, by `sites.server_main`. A patch here must never
change what syft authorises, stores or returns; it may only skip work whose
result is known. Each patch checks that the function it replaces is the one it
was written against and otherwise leaves syft alone (and says so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
    return done
