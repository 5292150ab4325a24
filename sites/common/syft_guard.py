"""The site's guard around syft 0.9.5: what a researcher's syft traffic may do at all.

`sites.common.syft_patches` only skips work; this module changes what syft allows, and
only ever by refusing more. Installed by `sites.operator.server_main` before the server
serves its first call; if syft is not the version the guard was written
against, the site refuses to start rather than run unguarded. Seven parts:

* **Deserialisation that fails safely** (serde): an error raised about ten objects
  deep into a body made syft 0.9.5 with pycapnp crash the process (a segmentation
  fault) when the error was freed; every level now releases its error's frames one
  by one, and nothing nests deeper than `MAX_SERDE_DEPTH`. Cap'n Proto reads are
  bounded by the message's own size (syft switched the limit off, so pointers aliasing
  one chunk multiplied a body 8,000 times), chunks are joined linearly, an object may
  carry only the fields its class serialises (a signed call carrying its own cached
  call ran that one, as the data owner whose key signed a replayed answer), and
  untrusted input holds no collection over `MAX_UNTRUSTED_ELEMENTS` (int hashes
  collide at will).
* **Safe typing aliases** (serde): syft 0.9.5 rebuilds a serialized
  `typing._GenericAlias` / `_UnionGenericAlias` by calling whatever
  `module.function` the sender names with the arguments the sender gives
  (`deserialize_generic_alias`); every route deserialises its body before
  any check, so `{"path": "os.system", "command": ...}` ran a shell in the
  server with no account at all. Here only `typing.<name>` for the typing
  constructors in `TYPING_ALIASES`, with only the alias fields, is rebuilt,
  in one pass and at most `MAX_ALIAS_DEPTH` deep; anything else fails to
  deserialise.
* **Untrusted bodies**: a route's body is read before anyone is known, so
  while syft reads it no array, data frame or tensor may be in it (their
  deserialisers decompress as much as the sender says: 66 kB became 2 GB),
  and it must be a signed call or a sign-up form. Arrays in signed calls are
  capped at the weights' size and to plain dtypes. A researcher's call is
  read only once its signature checks out; a guest's not at all.

* **API gate** (`Server.handle_api_call_with_unsigned_result`): a call from any
  role below data owner goes on only if the rule given to `apply`
  (`sites.review.researcher_api.refusal`) allows
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

import contextlib
import functools
import importlib
import logging
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any

from policies.contract.errors import MedsyftError

log = logging.getLogger("medsyft.site")

#: Larger than any template a valid plan renders to (the model source is at most 100,000
#: characters; JSON and repr escaping at most multiply it by 7), far below memory trouble.
MAX_SUBMITTED_CODE = 1_000_000
GUARDED_SYFT = "0.9.5"


class GuardNotApplied(MedsyftError, RuntimeError):
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


_alias_depth = threading.local()
MAX_ALIAS_DEPTH = 16  # List[Dict[str, Optional[int]]] is 4 deep


def deserialize_generic_alias_safely(type_blob: bytes) -> Any:
    """syft's `deserialize_generic_alias`, rebuilt from the one deserialised field dict
    (checking first and then calling syft's would deserialise every nested alias twice per
    level: exponential work for a small body), looking constructors up in `typing` only."""
    from syft.serde.deserialize import _deserialize

    depth = getattr(_alias_depth, "n", 0)
    if depth >= MAX_ALIAS_DEPTH:
        raise _syft_exception("refused by the medsyft site: typing aliases nested too deep")
    _alias_depth.n = depth + 1
    try:
        fields = _deserialize(type_blob, from_bytes=True)
    finally:
        _alias_depth.n = depth
    problem = alias_problem(fields)
    if problem is None and "__args__" not in fields:
        problem = "a typing alias without arguments"
    if problem is not None:
        log.warning("refused to deserialise %s", problem)
        raise _syft_exception(f"refused by the medsyft site: {problem}")
    constructor = getattr(typing, fields["path"].rpartition(".")[2])
    args = fields["__args__"]
    if constructor is typing.Optional:  # as syft does: Optional takes one argument
        args = args[0]
    return constructor[args]  # what syft's call falls back to for every typing constructor


deserialize_generic_alias_safely.medsyft_guard = True  # type: ignore[attr-defined]


def _swap_deserializer(names: set[str], original: Any, replacement: Any) -> list[str]:
    """Put `replacement` where syft's registry holds `original` for these canonical names."""
    from syft.types.syft_object_registry import SyftObjectRegistry

    done = []
    registry = SyftObjectRegistry.__object_serialization_registry__
    for name in sorted(names):
        for version, entry in list(registry.get(name, {}).items()):
            if entry[DESERIALIZE] is not original:
                raise GuardNotApplied(f"syft's deserialiser for {name} is not the one the "
                                      "guard was written against; the site does not start "
                                      "unguarded")
            registry[name][version] = entry[:DESERIALIZE] + (replacement,) + \
                entry[DESERIALIZE + 1:]
            done.append(f"serde {name} v{version}")
    if len(done) < len(names):
        raise GuardNotApplied(f"syft registers {sorted(names)} differently than expected; the "
                              "site does not start unguarded")
    return done


#: Index of the deserialise function in a syft 0.9.5 serde registry entry.
DESERIALIZE = 2


# -- deserialisation that fails safely -------------------------------------------------------
#: How deep one syft object may nest others (a plan request is about 10 deep); deeper
#: bodies would reach Python's recursion limit somewhere inside syft or pycapnp.
MAX_SERDE_DEPTH = 64
_serde_depth = threading.local()


def release_traceback(exc: BaseException) -> None:
    """Clear the frames an exception's traceback holds, one by one, innermost first.

    syft 0.9.5 with pycapnp crashes the whole process (a segmentation fault, not an
    exception) when the traceback of an error raised about ten objects deep into a
    deserialisation is freed: the frames then go in one nested deallocation, which frees
    capnp readers out of order. A body with an unknown type name at the bottom of ten
    nested lists took a site down with no account. Cleared here frame by frame, each
    frame's objects go one at a time."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        frames = []
        tb = current.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            with contextlib.suppress(RuntimeError):  # a frame still running is left alone
                frame.clear()
        current.__traceback__ = None
        pending += [current.__context__, current.__cause__]
        current.__context__ = current.__cause__ = None


#: Set in the researcher's client (`guard_deserialization(answers_untrusted=True)`):
#: every message it reads comes from a site and is read as untrusted input.
_every_message_untrusted = {"on": False}


def _safe_deserializer(original: Any) -> Any:
    @functools.wraps(original)
    def deserialize_safely(*args: Any, **kwargs: Any) -> Any:
        """syft's `_deserialize`, refusing to nest more than `MAX_SERDE_DEPTH` deep and
        handing any error up with its traceback released level by level. In a client,
        each outermost message is read as untrusted input (collection and array caps)."""
        depth = getattr(_serde_depth, "n", 0)
        if depth >= MAX_SERDE_DEPTH:
            raise _syft_exception("refused by the medsyft site: objects nested too deep")
        outermost_untrusted = (depth == 0 and _every_message_untrusted["on"]
                               and not getattr(_reading, "untrusted", False))
        _serde_depth.n = depth + 1
        try:
            with reading_untrusted() if outermost_untrusted else contextlib.nullcontext():
                return original(*args, **kwargs)
        except Exception as exc:
            release_traceback(exc)
            raise exc from None
        finally:
            _serde_depth.n = depth

    deserialize_safely.medsyft_safe_serde = True  # type: ignore[attr-defined]
    return deserialize_safely


#: Most elements one list, set or mapping may have while an unsigned body or a
#: researcher's call is read (Python's int hash is not randomised: a set of 40,000 ints
#: that all hash to 0 froze the server for 22 s, the GIL held).
MAX_UNTRUSTED_ELEMENTS = 4096
_reading = threading.local()  # .untrusted: an unsigned body or a researcher's call


@contextlib.contextmanager
def reading_untrusted() -> Iterator[None]:
    """Read syft bytes as untrusted input in this thread: collections of at most
    `MAX_UNTRUSTED_ELEMENTS` elements, arrays within `MAX_DECOMPRESSED_BYTES` in all."""
    previous = getattr(_reading, "untrusted", False), getattr(_reading, "array_bytes", 0)
    _reading.untrusted, _reading.array_bytes = True, 0
    try:
        yield
    finally:
        _reading.untrusted, _reading.array_bytes = previous


def traversal_limit(blob: bytes) -> int:
    """Cap'n Proto words a message of this size may read: about four times its own size.

    syft 0.9.5 reads with a limit of 2**64 - 1, switching off Cap'n Proto's defence
    against pointers that all point at one chunk: a 340 kB body made the server build
    3.5 GB, a 34 kB one kept a core busy for a minute."""
    return len(blob) // 2 + 8192


class BoundedSchema:
    """A capnp schema whose `from_bytes` reads at most `traversal_limit` words and, while
    untrusted input is read, lists of at most `MAX_UNTRUSTED_ELEMENTS`."""

    medsyft_guard = True

    def __init__(self, schema: Any, counted: str | None) -> None:
        self._schema, self._counted = schema, counted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schema, name)

    @contextlib.contextmanager
    def from_bytes(self, blob: bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["traversal_limit_in_words"] = traversal_limit(blob)
        with self._schema.from_bytes(blob, *args, **kwargs) as message:
            if self._counted and getattr(_reading, "untrusted", False) and \
                    len(getattr(message, self._counted)) > MAX_UNTRUSTED_ELEMENTS:
                log.warning("refused to deserialise a collection of more than %d elements "
                            "from untrusted input", MAX_UNTRUSTED_ELEMENTS)
                raise _syft_exception("refused by the medsyft site: a collection of more "
                                      f"than {MAX_UNTRUSTED_ELEMENTS} elements")
            yield message


def combine_bytes_linearly(capnp_list: Any) -> bytes:
    """syft's `combine_bytes` without its quadratic `+=` (many tiny chunks)."""
    return b"".join(capnp_list)


def _proto_fields_checked(original: Any) -> Any:
    @functools.wraps(original)
    def rs_proto2object_known_fields(proto: Any) -> Any:
        """syft's `rs_proto2object`, refusing fields the registered class does not
        serialise. syft took every field the sender listed: a SignedSyftAPICall carrying
        its own `cached_deseralized_message` ran that call instead of the signed one (a
        server-signed answer replayed this way made anyone the data owner)."""
        from syft.types.syft_object_registry import SyftObjectRegistry

        name, version = proto.canonicalName, getattr(proto, "version", -1)
        if SyftObjectRegistry.has_serde_class(name, version):
            entry = SyftObjectRegistry.get_serde_properties(name, version)
            allowed = entry[ATTRIBUTES]
            if not entry[0] and allowed is not None:
                unknown = {str(f) for f in proto.fieldsName if f != ""} - set(allowed)
                if unknown:
                    log.warning("refused to deserialise %s with fields it does not have",
                                name)
                    raise _syft_exception(f"refused by the medsyft site: {name} has no "
                                          "such field")
        return original(proto)

    rs_proto2object_known_fields.medsyft_guard = True  # type: ignore[attr-defined]
    return rs_proto2object_known_fields


#: Index of the serialised attribute names in a syft 0.9.5 serde registry entry.
ATTRIBUTES = 3


def _guard_capnp() -> list[str]:
    """Bounded reads, linear chunk joins and known fields only, wherever syft holds them."""
    from syft.serde import recursive, recursive_primitives

    done = []
    for module, attr, counted in ((recursive, "recursive_scheme", None),
                                  (recursive_primitives, "iterable_schema", "values"),
                                  (recursive_primitives, "kv_iterable_schema", "keys")):
        if not getattr(getattr(module, attr), "medsyft_guard", False):
            setattr(module, attr, BoundedSchema(getattr(module, attr), counted))
            done.append(f"{module.__name__}.{attr}")
    done.append(_replace("syft.serde.recursive", recursive, "rs_proto2object",
                         _proto_fields_checked, "rs_proto2object"))
    if recursive.combine_bytes is not combine_bytes_linearly:
        done += _rebind_in_syft(recursive.combine_bytes, combine_bytes_linearly)
    return done


def _rebind_in_syft(original: Any, replacement: Any) -> list[str]:
    """Put `replacement` wherever a syft module holds `original`, also where a module
    imported it by name; returns the places."""
    import sys

    done = []
    for name, module in sorted(sys.modules.items()):
        if module is not None and (name == "syft" or name.startswith("syft.")):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, replacement)
                    done.append(f"{name}.{attr}")
    return done


def _guard_serde() -> list[str]:
    """Put the safe `_deserialize` wherever syft holds the function, also in modules that
    imported it by name."""
    from syft.serde import deserialize as serde_deserialize

    original = serde_deserialize._deserialize
    if not _unguarded(original, "medsyft_safe_serde", "_deserialize", "deserialiser"):
        return []
    return _rebind_in_syft(original, _safe_deserializer(original))


def _unguarded(original: Any, marker: str, expected: str, what: str) -> bool:
    """Whether `original` still needs guarding; raises if it is not the syft function the
    guard was written against (the site then does not start)."""
    if getattr(original, marker, False):
        return False
    if getattr(original, "__qualname__", "") != expected:
        raise GuardNotApplied(f"syft's {what} is not the one the guard was written against; "
                              "the site does not start unguarded")
    return True


def guard_deserialization(answers_untrusted: bool = False) -> list[str]:
    """The deserialisation guards for any process that reads syft bytes from elsewhere
    (the researcher client reads every site's answers): errors released safely, nesting
    bounded, safe typing aliases and the cap on decompressed arrays. With
    `answers_untrusted`, every message read is untrusted input: collections of at most
    `MAX_UNTRUSTED_ELEMENTS` and arrays within `MAX_DECOMPRESSED_BYTES` in all."""

    if answers_untrusted:
        _every_message_untrusted["on"] = True

    done = _guard_serde() + _guard_capnp() + _guard_aliases() + _guard_types()
    return [d for d in done if d]


def _guard_aliases() -> list[str]:
    from syft.serde import recursive_primitives

    original = recursive_primitives.deserialize_generic_alias
    if not _unguarded(original, "medsyft_guard", "deserialize_generic_alias",
                      "generic-alias deserialiser"):
        return []
    done = _swap_deserializer({"_GenericAlias", "_UnionGenericAlias"}, original,
                              deserialize_generic_alias_safely)
    recursive_primitives.deserialize_generic_alias = deserialize_generic_alias_safely
    return done


# -- untrusted bodies ----------------------------------------------------------------------------
#: Types whose deserialisers decompress or allocate what the sender says: never in a request
#: body before its signature is checked (a 66 kB body decompressed to 2 GB).
HEAVY_TYPES = frozenset({"numpy_ndarray", "pandas_dataframe", "pandas_series",
                         "torch_tensor"})
#: What the body of each unauthenticated route may be.
BODY_TYPES = frozenset({"SignedSyftAPICall", "UserCreate"})
#: The largest array a signed call may carry once decompressed (weights are capped at 2 GiB).
MAX_DECOMPRESSED_BYTES = 2 * 1024**3 + 64 * 1024**2
_untrusted = threading.local()


#: Types medsyft never sends: refused in any untrusted input, signed or not (a parquet
#: frame allocates the rows it declares: 6.6 kB became 2 GB).
NEVER_UNTRUSTED_TYPES = frozenset({"pandas_dataframe", "pandas_series"})


def _refused_while_untrusted(name: str, original: Any) -> Any:
    def deserialize_unless_untrusted(*args: Any, **kwargs: Any) -> Any:
        if getattr(_untrusted, "active", False):
            log.warning("refused to deserialise %s in an unsigned body", name)
            raise _syft_exception(f"refused by the medsyft site: {name} in an unsigned body")
        if name in NEVER_UNTRUSTED_TYPES and getattr(_reading, "untrusted", False):
            log.warning("refused to deserialise %s from untrusted input", name)
            raise _syft_exception(f"refused by the medsyft site: {name} in untrusted input")
        return original(*args, **kwargs)

    deserialize_unless_untrusted.medsyft_guard = True  # type: ignore[attr-defined]
    return deserialize_unless_untrusted


def _route_deserializer(original: Any) -> Any:
    @functools.wraps(original)
    def deserialize_request_body(*args: Any, **kwargs: Any) -> Any:
        """A route's body is read before anyone is authenticated: no heavy types in it, and
        it must be a signed call (or a sign-up form)."""
        _untrusted.active = True
        try:
            with reading_untrusted():
                obj = original(*args, **kwargs)
        except Exception as exc:
            if "traversal limit" in str(exc):
                log.warning("refused to deserialise a body that reads beyond its own size")
            raise
        finally:
            _untrusted.active = False
        if type(obj).__name__ not in BODY_TYPES:
            raise _syft_exception("refused by the medsyft site: not a signed API call")
        if type(obj).__name__ == "SignedSyftAPICall":  # read only what the signature covers
            obj.cached_deseralized_message = None
        return obj

    deserialize_request_body.medsyft_guard = True  # type: ignore[attr-defined]
    return deserialize_request_body


def arrow_deserialize_capped(original: Any) -> Any:
    @functools.wraps(original)
    def arrow_deserialize_within_cap(numpy_bytes: bytes, decompressed_size: int,
                                     dtype: str) -> Any:
        """syft's `arrow_deserialize`, bounded: the decompressed size within any weights',
        the tensor's own dtype the declared one (syft cast a 128 MiB int8 tensor declared
        complex128 to 2 GiB), and, while untrusted input is read, all arrays of one
        message together within `MAX_DECOMPRESSED_BYTES`."""
        import numpy as np
        import pyarrow as pa
        from syft.util.experimental_flags import ApacheArrowCompression, flags

        if not isinstance(decompressed_size, int) or \
                not 0 <= decompressed_size <= MAX_DECOMPRESSED_BYTES:
            raise _syft_exception("refused by the medsyft site: an array larger than any "
                                  "weights")
        try:
            declared = np.dtype(dtype)
        except TypeError:
            raise _syft_exception("refused by the medsyft site: an unknown dtype") from None
        if declared.hasobject or not 0 < declared.itemsize <= 16:
            raise _syft_exception("refused by the medsyft site: an array of unusual dtype")
        if getattr(_reading, "untrusted", False):
            total = getattr(_reading, "array_bytes", 0) + decompressed_size
            if total > MAX_DECOMPRESSED_BYTES:
                log.warning("refused to deserialise arrays larger in all than any weights")
                raise _syft_exception("refused by the medsyft site: arrays larger in all "
                                      "than any weights")
            _reading.array_bytes = total
        if flags.APACHE_ARROW_COMPRESSION is ApacheArrowCompression.NONE:
            buffer = pa.BufferReader(numpy_bytes).read_buffer()
        else:
            buffer = pa.decompress(numpy_bytes, decompressed_size=decompressed_size,
                                   codec=flags.APACHE_ARROW_COMPRESSION.value)
        array = pa.ipc.read_tensor(buffer).to_numpy()
        if array.dtype != declared:
            raise _syft_exception("refused by the medsyft site: an array whose bytes are not "
                                  "of its declared dtype")
        return array.astype(declared)  # a writable copy, as syft returns it

    arrow_deserialize_within_cap.medsyft_guard = True  # type: ignore[attr-defined]
    return arrow_deserialize_within_cap


def strings_refused_while_untrusted(original: Any) -> Any:
    @functools.wraps(original)
    def numpyutf8toarray_unless_untrusted(input_index: Any) -> Any:
        """syft's string-array decoder, refused for untrusted input: it builds a fixed-width
        array of count × longest string (a 704-byte message became 2 GB) and medsyft never
        sends string arrays."""
        if getattr(_reading, "untrusted", False):
            log.warning("refused to deserialise a string array from untrusted input")
            raise _syft_exception("refused by the medsyft site: a string array in untrusted "
                                  "input")
        return original(input_index)

    numpyutf8toarray_unless_untrusted.medsyft_guard = True  # type: ignore[attr-defined]
    return numpyutf8toarray_unless_untrusted


def _guard_types() -> list[str]:
    """Heavy types refused where they may not be (see `_refused_while_untrusted`), string
    arrays refused in untrusted input, and arrays capped."""
    from syft.serde import arrow
    from syft.types.syft_object_registry import SyftObjectRegistry

    done = []
    registry = SyftObjectRegistry.__object_serialization_registry__
    for name in sorted(HEAVY_TYPES):
        for version, entry in list(registry[name].items()):
            if not getattr(entry[DESERIALIZE], "medsyft_guard", False):
                registry[name][version] = entry[:DESERIALIZE] + (
                    _refused_while_untrusted(name, entry[DESERIALIZE]),) + \
                    entry[DESERIALIZE + 1:]
                done.append(f"serde {name} v{version}")
    done.append(_replace("syft.serde.arrow", arrow, "arrow_deserialize",
                         arrow_deserialize_capped, "arrow_deserialize"))
    done.append(_replace("syft.serde.arrow", arrow, "numpyutf8toarray",
                         strings_refused_while_untrusted, "numpyutf8toarray"))
    return [d for d in done if d]


def _guard_bodies() -> list[str]:
    from syft.server import routes

    done = _guard_serde() + _guard_types()
    done.append(_replace("syft.server.routes", routes, "deserialize", _route_deserializer,
                         "_deserialize"))
    return [d for d in done if d]


# -- API gate -----------------------------------------------------------------------------
#: Calls of one researcher that run one at a time (their rule counts what they store).
SERIALISED_PATHS = frozenset({"code.request_code_execution"})
_locks_guard = threading.Lock()
_submission_locks: dict[str, threading.Lock] = {}


def _submission_lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _submission_locks.setdefault(key, threading.Lock())


#: The rule that says which researcher calls go on (`sites.review.researcher_api.refusal`),
#: given to `apply` by the server: this module serves the client too and must not import
#: the site's review code. Until it is given, every researcher call is refused.
_api_rules: dict[str, Callable[[Any, Any, Any, Any], str | None]] = {
    "refusal": lambda server, credentials, role, call: "the site's API rules are not loaded"}


def _gate(original: Any) -> Any:
    @functools.wraps(original)
    def handle_api_call_guarded(self: Any, api_call: Any, *args: Any, **kwargs: Any) -> Any:
        from syft.service.response import SyftError
        from syft.service.user.user_roles import ServiceRole

        refusal = _api_rules["refusal"]

        credentials = api_call.credentials
        role = self.get_role_for_credentials(credentials=credentials)
        if not _is_researcher(role):  # syft checks the signature first
            if type(api_call).__name__ == "SignedSyftAPICall" and api_call.is_valid and \
                    type(api_call.message).__name__ != "SyftAPICall":  # a replayed answer
                return SyftError(message="refused by the medsyft site: not an API call")
            return original(self, api_call, *args, **kwargs)
        if role == ServiceRole.GUEST:  # no account: nothing to call, nothing read further
            return SyftError(message="refused by the medsyft site: an account is needed")
        if type(api_call).__name__ != "SignedSyftAPICall" or not api_call.is_valid:
            return original(self, api_call, *args, **kwargs)  # syft refuses it, unread
        try:
            with reading_untrusted():  # signed by a researcher: now it may be read, with care
                call = api_call.message
        except Exception as exc:  # refused while read, or malformed: one line, no traceback
            release_traceback(exc)
            reason = getattr(exc, "public_message", "") or "a call it cannot read"
            log.warning("refused a researcher call while reading it: %s", reason[:200])
            return SyftError(message=reason if reason.startswith("refused by the medsyft")
                             else "refused by the medsyft site: a call it cannot read")
        if type(call).__name__ != "SyftAPICall":
            return SyftError(message="refused by the medsyft site: not an API call")
        lock = _submission_lock(str(credentials)) if \
            getattr(call, "path", "") in SERIALISED_PATHS else contextlib.nullcontext()
        with lock:  # the pending-request cap is checked and the request stored in one go
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

    from policies.contract.template import TemplateMismatch, extract_plan

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


def apply(refusal: Callable[[Any, Any, Any, Any], str | None]) -> list[str]:
    """Install the guard in this (server) process; returns what was guarded.

    Args:
        refusal: `(server, credentials, role, call) -> reason or None`, the rule for
            every call from a role below data owner (`sites.review.researcher_api`).

    Raises:
        GuardNotApplied: syft is not the version the guard was written against.
    """
    import syft

    _api_rules["refusal"] = refusal

    if syft.__version__ != GUARDED_SYFT:
        raise GuardNotApplied(f"syft {syft.__version__} is not {GUARDED_SYFT}: the request "
                              "guard cannot be installed and the site does not start")
    from syft.server.server import Server
    from syft.service.code.user_code_service import UserCodeService

    action_service = importlib.import_module("syft.service.action.action_service")
    policy = importlib.import_module("syft.service.policy.policy")
    done = _guard_serde() + _guard_capnp() + _guard_aliases() + _guard_bodies() + [
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
