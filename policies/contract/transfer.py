"""The weights side channel: what a round's weights look like on the wire, defined once.

syft carries only a `WeightsRef` (the SHA-256 of the global weights, their size and the
round) into a round, and the result carries the SHA-256 of the released weights; the
bytes travel over the site's own HTTP endpoint (`sites.runtime.weights_api`) as one
**safetensors** file: an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. No pickle; the layout can be
checked against the approved plan from the header alone, before any tensor byte is read.

Every request on the endpoint is signed with the researcher's syft signing key
(Ed25519) over `signed_message`: method, path, digest, plan hash, round, time, a nonce
and the site's name. No new secret exists: the site checks the signature with the verify key it
recorded for the account (`sites.governance.registry`).

Must never hold site logic (what is approved, who may fetch what): that is the site's.
Everything parsed here comes from the other side and is untrusted: `check_header`
bounds every size before it allocates.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import struct
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.contract.errors import MedsyftError

#: Path prefix of the endpoint on the site's syft port.
PREFIX = "/medsyft/v1"
#: What a signature is over, first line: a signature for anything else never verifies here.
CONTEXT = b"medsyft-transfer-v1"
#: Largest clock difference accepted between researcher and site (seconds).
MAX_SKEW_S = 120
#: The safetensors header of a plan's weights: JSON of about 100 bytes per tensor.
MAX_HEADER_BYTES = 1 << 20
#: Every weight on the wire is float32 (what the graph's parameters are).
DTYPE = "F32"
HEADERS = ("X-Medsyft-Key", "X-Medsyft-Time", "X-Medsyft-Nonce", "X-Medsyft-Signature")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NONCE = re.compile(r"^[0-9a-f]{32}$")


class TransferRefused(MedsyftError):
    """A transfer the other side refused or that failed a check; `code` names the reason
    (`unsigned`, `bad_signature`, `stale`, `replayed`, `too_large`, `wrong_names`, ...)."""

    def __init__(self, code: str, message: str, retry: bool = False) -> None:
        super().__init__(f"{message} ({code})", retry=retry)
        self.code = code


class WeightsRef(BaseModel):
    """What syft carries into a round instead of the weights: which upload to train from."""

    model_config = ConfigDict(extra="forbid")

    medsyft_transfer: Literal[1] = 1
    sha256: str = Field(pattern=HEX64.pattern)
    size: int = Field(gt=8, description="bytes of the safetensors file")
    round: int = Field(ge=1)

    def to_wire(self) -> dict:
        return self.model_dump()

    @staticmethod
    def is_ref(obj: object) -> bool:
        """True if `obj` claims to be a reference (it may still be malformed)."""
        return isinstance(obj, dict) and "medsyft_transfer" in obj


def upload_path(plan_hash: str, round_no: int, digest: str) -> str:
    return f"{PREFIX}/weights/{plan_hash}/{int(round_no)}/{digest}"


def release_path(plan_hash: str, round_no: int, digest: str) -> str:
    return f"{PREFIX}/releases/{plan_hash}/{int(round_no)}/{digest}"


def signed_message(method: str, path: str, digest: str, plan_hash: str, round_no: int,
                   at: int, nonce: str, site: str) -> bytes:
    """The bytes a request's signature is over (one field per line, nothing left out):
    `site` is the site it is meant for, so that no other site of the federation (which may
    have approved the same plan) accepts it (red team, issue 18)."""
    fields = [method.upper(), path, digest, plan_hash, str(int(round_no)), str(int(at)), nonce,
              site]
    return CONTEXT + b"\n" + "\n".join(fields).encode()


def sign_headers(signing_key: object, verify_key_hex: str, method: str, path: str,
                 digest: str, plan_hash: str, round_no: int, *, site: str,
                 at: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers of a signed request.

    Args:
        signing_key: a `nacl.signing.SigningKey` (the syft account's, `client.credentials`).
        verify_key_hex: its verify key as syft writes it (hex).
        site: the name of the site the request is for.
        at, nonce: the request's time and nonce (fresh ones by default; tests pin them).
    """
    at = int(time.time()) if at is None else int(at)
    nonce = secrets.token_hex(16) if nonce is None else nonce
    sig = signing_key.sign(  # type: ignore[attr-defined]
        signed_message(method, path, digest, plan_hash, round_no, at, nonce, site)).signature
    return dict(zip(HEADERS, (verify_key_hex, str(at), nonce, sig.hex()), strict=True))


def verify_signature(verify_key_hex: str, signature_hex: str, message: bytes) -> bool:
    """True iff the signature is the key's over `message` (False for any malformed input)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(bytes.fromhex(verify_key_hex)).verify(message, bytes.fromhex(signature_hex))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def encode(params: dict[str, np.ndarray]) -> bytes:
    """The canonical safetensors bytes of `params` (same arrays, same bytes: the digest of
    a set of weights is the SHA-256 of these bytes)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in params.items()})


def digest(blob: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(blob).hexdigest()


def decode(blob: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file (copies; no code runs: the format has none)."""
    from safetensors.numpy import load

    try:
        return {k: np.array(v) for k, v in load(blob if isinstance(blob, bytes)
                                                else bytes(blob)).items()}
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise TransferRefused("malformed", f"not a valid safetensors file: {exc}") from None


def header_length(prefix: bytes) -> int:
    """The JSON header's length from the file's first 8 bytes, bounded."""
    if len(prefix) < 8:
        raise TransferRefused("truncated", "the body ends before the safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n < 2 or n > MAX_HEADER_BYTES:
        raise TransferRefused("malformed", f"safetensors header of {n} bytes (at most "
                                           f"{MAX_HEADER_BYTES})")
    return n


def check_header(header: bytes, layouts: list[dict[str, tuple[int, ...]]]) -> int:
    """Check a safetensors header against the layouts the plan allows; returns the size of
    the data that must follow it.

    Args:
        header: the JSON header (untrusted), its length already bounded.
        layouts: the name → shape maps that are acceptable (a GAN plan's first round may
            add its discriminator's initial parameters).

    Raises:
        TransferRefused: `malformed` (not JSON, not safetensors), `wrong_names`,
            `wrong_shape`, `wrong_dtype`, or `malformed` offsets (gaps, overlaps).
    """
    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):  # parsers disagree on which one wins
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        doc = json.loads(header.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransferRefused("malformed", "the safetensors header is not JSON (or repeats "
                                           "a key)") from None
    if not isinstance(doc, dict):
        raise TransferRefused("malformed", "the safetensors header is not a JSON object")
    if "__metadata__" in doc:  # nothing of the researcher's rides along with the weights
        raise TransferRefused("malformed", "the safetensors header carries __metadata__")
    names = set(doc)
    layout = next((lay for lay in layouts if set(lay) == names), None)
    if layout is None:
        expected = min(layouts, key=lambda lay: len(set(lay) ^ names))
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        raise TransferRefused("wrong_names", "the tensors are not the plan's parameters"
                              + (f"; missing {', '.join(missing[:3])}" if missing else "")
                              + (f"; unexpected {', '.join(extra[:3])}" if extra else ""))
    spans = []
    for name in sorted(names):
        entry = doc[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise TransferRefused("malformed", f"tensor {name[:80]}: not a safetensors entry")
        if entry["dtype"] != DTYPE:
            raise TransferRefused("wrong_dtype", f"tensor {name[:80]} is {str(entry['dtype'])[:8]}"
                                                 f", not {DTYPE}")
        shape = entry["shape"]
        if not (isinstance(shape, list)
                and all(type(d) is int for d in shape)):  # not 2.0, not True
            raise TransferRefused("malformed", f"tensor {name[:80]}: its shape is not a list "
                                               "of integers")
        if tuple(shape) != tuple(layout[name]):
            raise TransferRefused("wrong_shape", f"tensor {name[:80]} has shape "
                                                 f"{str(shape)[:60]}, the plan's is "
                                                 f"{list(layout[name])}")
        off = entry["data_offsets"]
        if not (isinstance(off, list) and len(off) == 2 and all(type(o) is int for o in off)):
            raise TransferRefused("malformed", f"tensor {name[:80]}: bad data offsets")
        size = 4 * int(np.prod(layout[name], dtype=np.int64))
        if off[1] - off[0] != size:
            raise TransferRefused("malformed", f"tensor {name[:80]}: data offsets do not "
                                               "match its shape")
        spans.append((off[0], off[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise TransferRefused("malformed", "tensor data has gaps or overlaps")
        end = stop
    return end
