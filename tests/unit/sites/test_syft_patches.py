"""The syft 0.9.5 speed patches change nothing but the time syft takes (and its call repr)."""

from __future__ import annotations

import importlib
import types

import pytest

from sites.common import syft_patches
from sites.common.syft_client import syft


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


@pytest.fixture
def patched_syft():
    """syft with every patch applied, restored afterwards."""
    syft()
    from syft.client.api import SyftAPICall
    from syft.service.action import action_object

    svc = importlib.import_module("syft.service.service")
    obj = importlib.import_module("syft.types.syft_object")
    before = (svc.attach_attribute_to_syft_object, obj.attach_attribute_to_syft_object,
              SyftAPICall.__repr__, action_object.can_upload_to_blob_storage,
              action_object.serialize)
    try:
        syft_patches.apply()
        yield
    finally:
        (svc.attach_attribute_to_syft_object, obj.attach_attribute_to_syft_object,
         SyftAPICall.__repr__, action_object.can_upload_to_blob_storage,
         action_object.serialize) = before


def _api_call(**kwargs):
    from syft.client.api import SyftAPICall
    from syft.types.uid import UID

    return SyftAPICall(server_uid=UID(), path="code.call", args=[], kwargs=kwargs)


def test_syft_logs_every_argument_of_an_api_call_and_the_patched_repr_does_not():
    syft()
    from syft.client.api import SyftAPICall

    call = _api_call(weights={"w": "SECRET-VALUE-7f3a"}, uid=3)
    if SyftAPICall.__repr__ is syft_patches.api_call_repr:
        pytest.skip("patched in this process already")
    assert "SECRET-VALUE-7f3a" in repr(call)  # syft 0.9.5 logs this f-string at every call
    text = syft_patches.api_call_repr(call)
    assert "SECRET-VALUE-7f3a" not in text
    assert "code.call" in text and "weights: dict" in text and "uid: int" in text


def test_size_check_bytes_are_reused_only_for_the_same_object(patched_syft):
    import numpy as np
    from syft.serde.serialize import _serialize
    from syft.service.action import action_object

    meta = types.SimpleNamespace(min_size_blob_storage_mb=1)
    data = {"w": np.random.default_rng(1).standard_normal(300_000).astype(np.float32)}
    assert action_object.can_upload_to_blob_storage(data, meta).unwrap() is True
    kept = syft_patches._last_serialized.pair[1]
    fresh = _serialize(data, to_bytes=True)
    reused = action_object.serialize(data, to_bytes=True)
    assert reused is kept and reused == fresh and len(fresh) > 2**20
    again = action_object.serialize(data, to_bytes=True)  # the kept bytes are handed out once
    assert again == fresh and again is not kept

    action_object.can_upload_to_blob_storage(data, meta)
    other = {"w": np.ones(10, dtype=np.float32)}
    assert action_object.serialize(other, to_bytes=True) == _serialize(other, to_bytes=True)
    assert syft_patches._last_serialized.pair is None  # cleared by the call above


def test_nothing_is_kept_for_an_object_that_stays_out_of_blob_storage(patched_syft):
    """Kept bytes could go stale if the object changed before its next store."""
    import numpy as np
    from syft.serde.serialize import _serialize
    from syft.service.action import action_object

    meta = types.SimpleNamespace(min_size_blob_storage_mb=1)
    small = {"w": np.ones(10, dtype=np.float32)}
    assert action_object.can_upload_to_blob_storage(small, meta).unwrap() is False
    assert syft_patches._last_serialized.pair is None
    small["w"] = np.zeros(3, dtype=np.float32)  # changed in place
    assert action_object.serialize(small, to_bytes=True) == _serialize(small, to_bytes=True)


def test_size_check_answers_and_errors_as_syft_does(patched_syft):
    import numpy as np
    from syft.service.action import action_object
    from syft.service.blob_storage import util as blob_util  # syft's own, unpatched
    from syft.types.errors import SyftException

    meta = types.SimpleNamespace(min_size_blob_storage_mb=1)
    with pytest.raises(SyftException, match="Failed to serialize data of type") as ours:
        action_object.can_upload_to_blob_storage(object(), meta).unwrap()
    with pytest.raises(SyftException) as theirs:
        blob_util.can_upload_to_blob_storage(object(), meta).unwrap()
    assert ours.value.public_message == theirs.value.public_message
    for n in (10, 300_000):
        data = {"w": np.random.default_rng(2).standard_normal(n).astype(np.float32)}
        assert (action_object.can_upload_to_blob_storage(data, meta).unwrap()
                == blob_util.can_upload_to_blob_storage(data, meta).unwrap())


def test_blob_stored_object_round_trips_through_a_patched_datasite(patched_syft):
    import numpy as np
    import syft as sy

    server = sy.orchestra.launch(name="medsyft-patch-test", reset=True, dev_mode=False)
    try:
        client = server.login(email="info@openmined.org", password="changethis")
        data = {"w": np.random.default_rng(0).standard_normal(600_000).astype(np.float32),
                "b": np.arange(5, dtype=np.float32)}
        ptr = sy.ActionObject.from_obj(data).send(client)
        assert ptr.syft_action_saved_to_blob_store  # the > 1 MB path, size check included
        got = ptr.get()
        assert set(got) == set(data)
        for k in data:
            np.testing.assert_array_equal(got[k], data[k])
    finally:
        server.land()


def test_apply_installs_once_and_the_recursion_goes_through_the_patch(patched_syft):
    from syft.client.api import SyftAPICall
    from syft.service.action import action_object

    svc = importlib.import_module("syft.service.service")
    obj = importlib.import_module("syft.types.syft_object")
    assert svc.attach_attribute_to_syft_object is syft_patches.attach_attribute_to_syft_object
    assert obj.attach_attribute_to_syft_object is syft_patches.attach_attribute_to_syft_object
    assert SyftAPICall.__repr__ is syft_patches.api_call_repr
    assert action_object.can_upload_to_blob_storage.medsyft_patch
    assert action_object.serialize.__name__ == "serialize_reusing_size_check"
    assert syft_patches.apply() == []  # idempotent: nothing patched twice
