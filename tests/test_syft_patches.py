"""The syft 0.9.5 speed patches change nothing but the time syft's walk takes."""

from __future__ import annotations

import importlib

import pytest

from sites import syft_patches
from sites.syft_client import syft


class NoIteration(bytes):
    """Bytes that fail the test if anything walks them byte by byte."""

    def __iter__(self):
        raise AssertionError("walked byte by byte")


def _structure(payload: type[bytes] = NoIteration):
    from syft.service.response import SyftSuccess
    from syft.store.blob_storage import SyftObjectRetrieval

    def retrieval(name: str):
        r = SyftObjectRetrieval(syft_object=b"", file_name=name)
        object.__setattr__(r, "syft_object", payload(b"\x01" * 4096))  # as read from disk
        assert type(r.syft_object) is payload
        return r

    top, nested, in_dict = retrieval("top"), retrieval("nested"), retrieval("in-dict")
    outer = [top, SyftSuccess(message="holds one", value=nested), "text", b"raw",
             {"k": in_dict}]
    return outer, [top, outer[1].value, in_dict]  # pydantic stores a copy of `nested`


def _attrs():
    from syft.service.user.user import SyftSigningKey
    from syft.types.uid import UID

    return {"syft_server_location": UID(),
            "syft_client_verify_key": SyftSigningKey.generate().verify_key}


def test_patched_walk_stamps_exactly_the_objects_syft_stamps():
    syft()
    attrs = _attrs()
    want, want_objs = _structure(bytes)
    got, got_objs = _structure(bytes)
    _unpatched_walk()(want, attrs)
    syft_patches.attach_attribute_to_syft_object(got, attrs)
    for a, b in zip(want_objs, got_objs, strict=True):
        for name in attrs:
            assert getattr(a, name) == getattr(b, name)
    assert all(getattr(got_objs[0], n) == v for n, v in attrs.items())  # not vacuous


def _unpatched_walk():
    """syft's own function, from its module source (the module attribute may be patched)."""
    import inspect

    module = importlib.import_module("syft.types.syft_object")
    source = inspect.getsource(module)
    start = source.index("def attach_attribute_to_syft_object")
    end = source.find("\n\n\n", start)
    namespace = dict(module.__dict__)
    exec(source[start:end if end > 0 else None], namespace)  # noqa: S102 - syft's own code, for comparison
    return namespace["attach_attribute_to_syft_object"]


def test_syft_walks_bytes_one_by_one_and_the_patch_does_not():
    syft()
    structure, _ = _structure()
    with pytest.raises(AssertionError, match="byte by byte"):
        _unpatched_walk()(structure, _attrs())
    syft_patches.attach_attribute_to_syft_object(structure, _attrs())


def test_apply_installs_once_and_the_recursion_goes_through_the_patch():
    syft()
    svc = importlib.import_module("syft.service.service")
    obj = importlib.import_module("syft.types.syft_object")
    before = (svc.attach_attribute_to_syft_object, obj.attach_attribute_to_syft_object)
    try:
        first = syft_patches.apply()
        assert svc.attach_attribute_to_syft_object is syft_patches.attach_attribute_to_syft_object
        assert obj.attach_attribute_to_syft_object is syft_patches.attach_attribute_to_syft_object
        assert syft_patches.apply() == []  # idempotent
        assert set(first) <= {f"{m}.{a}" for m, a in syft_patches._TARGETS}
    finally:
        svc.attach_attribute_to_syft_object, obj.attach_attribute_to_syft_object = before
