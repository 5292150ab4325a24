"""The weights side channel's wire (`policies.contract.transfer`): canonical bytes, the
header check against a plan's layout, and what a signature binds."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from nacl.signing import SigningKey

from policies.contract import transfer
from policies.contract.transfer import TransferRefused

LAYOUT = {"conv.weight": (4, 2, 3, 3, 3), "conv.bias": (4,), "head.weight": (1, 4)}


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in LAYOUT.items()}


def _split(blob: bytes) -> tuple[bytes, int]:
    n = struct.unpack("<Q", blob[:8])[0]
    return blob[8:8 + n], n


def test_the_same_weights_give_the_same_bytes_whatever_their_order():
    params = _params()
    reordered = dict(reversed(list(params.items())))
    assert transfer.encode(params) == transfer.encode(reordered)
    assert transfer.digest(transfer.encode(params)) != transfer.digest(
        transfer.encode(_params(1)))
    back = transfer.decode(transfer.encode(params))
    assert all(back[k].tobytes() == params[k].tobytes() for k in params)


def test_the_header_check_accepts_the_plans_layout_and_says_how_much_data_follows():
    blob = transfer.encode(_params())
    header, n = _split(blob)
    assert transfer.header_length(blob[:8]) == n
    assert transfer.check_header(header, [LAYOUT]) == len(blob) - 8 - n


@pytest.mark.parametrize("mutate, code", [
    (lambda h: h.pop("conv.bias"), "wrong_names"),
    (lambda h: h.__setitem__("extra", h["conv.bias"]), "wrong_names"),
    (lambda h: h["conv.bias"].__setitem__("shape", [5]), "wrong_shape"),
    (lambda h: h["conv.bias"].__setitem__("dtype", "F64"), "wrong_dtype"),
    (lambda h: h["conv.bias"].__setitem__("shape", [4.0]), "malformed"),
    (lambda h: h["head.weight"].__setitem__("shape", [True, 4]), "malformed"),
    (lambda h: h.__setitem__("__metadata__", {"a": "b"}), "malformed"),
    (lambda h: h["conv.bias"].__setitem__("data_offsets", [4, 20]), "malformed"),
    (lambda h: h["conv.bias"].__setitem__("data_offsets", [0.0, 16.0]), "malformed"),
    (lambda h: h["conv.bias"].__setitem__("extra", 1), "malformed"),
])
def test_a_header_that_is_not_the_plans_weights_is_refused_with_its_reason(mutate, code):
    header, _ = _split(transfer.encode(_params()))
    doc = json.loads(header)
    mutate(doc)
    with pytest.raises(TransferRefused) as err:
        transfer.check_header(json.dumps(doc).encode(), [LAYOUT])
    assert err.value.code == code


def test_a_header_that_repeats_a_key_or_is_not_json_is_refused():
    header, _ = _split(transfer.encode(_params()))
    twice = header.rstrip()[:-1] + b', "conv.bias": ' + json.dumps(
        json.loads(header)["conv.bias"]).encode() + b"}"
    for bad in (twice, b"[1, 2]", b"\xff\xfe", b"{" * 100_000):
        with pytest.raises(TransferRefused) as err:
            transfer.check_header(bad, [LAYOUT])
        assert err.value.code == "malformed"
    for prefix in (b"\x01\x02", struct.pack("<Q", 1), struct.pack("<Q", 1 << 40)):
        with pytest.raises(TransferRefused):
            transfer.header_length(prefix)


def test_a_signature_binds_every_field_of_the_request():
    key = SigningKey.generate()
    vk = key.verify_key.encode().hex()
    fields = dict(method="PUT", path="/medsyft/v1/weights/" + "a" * 64 + "/1/" + "b" * 64,
                  digest="b" * 64, plan_hash="a" * 64, round_no=1, at=1_700_000_000,
                  nonce="c" * 32, site="juliet")
    headers = transfer.sign_headers(key, vk, fields["method"], fields["path"],
                                    fields["digest"], fields["plan_hash"], fields["round_no"],
                                    site=fields["site"], at=fields["at"], nonce=fields["nonce"])
    sig = headers["X-Medsyft-Signature"]
    assert transfer.verify_signature(vk, sig, transfer.signed_message(**fields))
    for name, other in [("method", "GET"), ("path", "/x"), ("digest", "d" * 64),
                        ("plan_hash", "e" * 64), ("round_no", 2), ("at", 1_700_000_001),
                        ("nonce", "f" * 32), ("site", "romeo")]:
        changed = {**fields, name: other}
        assert not transfer.verify_signature(vk, sig, transfer.signed_message(**changed)), name
    stranger = SigningKey.generate().verify_key.encode().hex()
    assert not transfer.verify_signature(stranger, sig, transfer.signed_message(**fields))
    assert not transfer.verify_signature("zz", sig, transfer.signed_message(**fields))
