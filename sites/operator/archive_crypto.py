"""The encrypted container of a site backup: a header in clear, then the archive in
AES-256-GCM chunks (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár,
as in Tink's streaming AEAD), so a backup of many gigabytes of imaging is encrypted
and checked without holding it in memory.

Layout::

    MAGIC (8 bytes) | header length (4, big-endian) | header (JSON, UTF-8) | chunk 0 | ...

Each archive has its own random 32-byte archive key A. The header carries A wrapped for
whoever may open the archive: under the site's backup key K from the keyring
(AES-256-GCM, K's id beside it), and with `--recipient` also for age X25519 recipients
(`pyrage`, the age format: the matching identity can be kept offline, away from the
server). The header also holds a fresh 32-byte salt and a 7-byte nonce prefix, and is
authenticated as every chunk's associated data. The file key is
``HKDF-SHA256(A, salt, info)`` and chunk ``i`` of at most ``chunk_size`` plaintext bytes is
sealed under the nonce ``prefix ‖ i (4 bytes) ‖ last (1 byte)``. A changed byte fails
that chunk's tag, a reordered or dropped chunk fails its counter, a truncated file
fails because no chunk carries the last flag, and a header edit fails every chunk.

Must never write plaintext anywhere, and never put a key or plaintext in an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from policies.contract.errors import MedsyftError

MAGIC = b"MEDSYBK\x01"
INFO = b"medsyft site backup v1"
CHUNK = 1 << 20
TAG = 16
MAX_HEADER = 64 * 1024
WRAP_AAD = b"medsyft backup: archive key v1\0"


class ArchiveDamaged(MedsyftError, ValueError):
    """The archive is not one of ours, was altered, or is cut short."""


def key_id(key: bytes) -> str:
    """A short public name of a backup key (what the header records)."""
    return hashlib.sha256(b"medsyft backup key id\0" + key).hexdigest()[:16]


class CannotOpen(MedsyftError, ValueError):
    """Neither the keyring's backup key nor a given identity opens the archive."""


def parse_recipients(values: list[str]) -> list:
    """age X25519 recipients (`age1…`), each checked; errors name the value."""
    from pyrage import RecipientError, x25519

    out = []
    for v in values:
        try:
            out.append(x25519.Recipient.from_str(v.strip()))
        except RecipientError:
            raise CannotOpen(f"recipient {v.strip()[:80]!r} is not an age X25519 public "
                             "key (age1…)") from None
    return out


def read_identities(path: Path) -> list:
    """The age identities (`AGE-SECRET-KEY-1…` lines) of a file only its owner can read."""
    import stat

    from pyrage import IdentityError, x25519

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise CannotOpen(f"identity file {path} must be a regular file only its owner can "
                         f"read ({e.strerror}; a symlink is refused)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CannotOpen(f"identity file {path} must be a regular file only its owner "
                             f"can read (chmod 600 {path})")
        raw = f.read(1 << 20)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # never the bytes: they are part of a secret key
        raise CannotOpen(f"identity file {path} is not UTF-8 text") from None
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(x25519.Identity.from_str(line))
        except IdentityError:
            raise CannotOpen(f"identity file {path}, line {n}: not an age X25519 identity "
                             "(AGE-SECRET-KEY-1…)") from None
    if not found:
        raise CannotOpen(f"identity file {path} holds no age identity")
    return found


def archive_key(header: dict, name: str, keyring_key: bytes | None = None,
                identities: list | None = None) -> bytes:
    """Unwrap the archive key: with the identities when given, else with the keyring's
    backup key."""
    wrapped = header.get("wrapped") or {}
    if identities:
        import pyrage

        if "age" not in wrapped:
            raise CannotOpen(f"{name} was made without an age recipient: open it with the "
                             "site's backup key from the keyring")
        try:
            key = pyrage.decrypt(base64.b64decode(wrapped["age"]), identities)
        except (pyrage.DecryptError, ValueError):
            raise CannotOpen(f"no identity given opens {name} (its recipients: "
                             f"{', '.join(header.get('recipients', []))})") from None
        if len(key) != 32:
            raise ArchiveDamaged(f"{name}: its wrapped key is not one of ours")
        return key
    ring = wrapped.get("keyring")
    if keyring_key is None or ring is None:
        raise CannotOpen(f"{name}: no key to open it (the keyring holds no backup key of "
                         "its site; an archive made with --recipient opens with --identity)")
    if ring.get("key_id") != key_id(keyring_key):
        raise CannotOpen(f"{name} was made with backup key {ring.get('key_id')}, the keyring "
                         f"holds key {key_id(keyring_key)}")
    try:
        key = AESGCM(keyring_key).decrypt(bytes.fromhex(ring["nonce"]),
                                          bytes.fromhex(ring["sealed"]),
                                          WRAP_AAD + str(header.get("site", "")).encode())
    except (InvalidTag, ValueError, KeyError):
        raise ArchiveDamaged(f"{name}: its wrapped archive key was altered") from None
    return key


def _file_key(key: bytes, salt: bytes) -> AESGCM:
    if len(key) != 32:
        raise ValueError("an archive key is 32 bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(key)
    return AESGCM(okm)


def _nonce(prefix: bytes, i: int, last: bool) -> bytes:
    if i >= 1 << 32:
        raise ValueError("archive too large for one key derivation (4 PiB)")
    return prefix + struct.pack(">IB", i, 1 if last else 0)


def read_header(f: BinaryIO, name: str) -> tuple[dict, bytes]:
    """(header, its raw bytes) from the start of an archive; `name` goes in errors."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ArchiveDamaged(f"{name} is not a medsyft site backup (wrong first bytes)")
    raw_len = f.read(4)
    if len(raw_len) != 4:
        raise ArchiveDamaged(f"{name} is cut short inside its header")
    (n,) = struct.unpack(">I", raw_len)
    if n > MAX_HEADER:
        raise ArchiveDamaged(f"{name}: header of {n} bytes is not one of ours")
    raw = f.read(n)
    try:
        header = json.loads(raw)
        salt = bytes.fromhex(header["salt"])
        prefix = bytes.fromhex(header["nonce_prefix"])
        size, fmt = header["chunk_size"], header["format"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArchiveDamaged(f"{name}: its header does not parse ({type(e).__name__})") from None
    if fmt != 1 or type(fmt) is not int:
        raise ArchiveDamaged(f"{name}: archive format {fmt!r} is not one this release reads")
    if type(size) is not int or size != CHUNK:
        raise ArchiveDamaged(f"{name}: chunk size {size!r} is not one of ours")
    if len(salt) != 32 or len(prefix) != 7:
        raise ArchiveDamaged(f"{name}: its header's salt or nonce prefix has the wrong length")
    return header, MAGIC + raw_len + raw


class EncryptingWriter:
    """A write-only file object: what is written goes out sealed in chunks to `out`."""

    def __init__(self, out: BinaryIO, key: bytes | None, header: dict,
                 recipients: list | None = None) -> None:
        """`key`: the site's backup key (the archive key is wrapped under it);
        `recipients`: age recipients it is also wrapped for. At least one of them."""
        if key is None and not recipients:
            raise ValueError("an archive needs a backup key or a recipient")
        self._out = out
        archive = os.urandom(32)
        salt, self._prefix = os.urandom(32), os.urandom(7)
        wrapped: dict = {}
        if key is not None:
            nonce = os.urandom(12)
            wrapped["keyring"] = {"key_id": key_id(key), "nonce": nonce.hex(), "sealed": (
                AESGCM(key).encrypt(nonce, archive,
                                    WRAP_AAD + str(header.get("site", "")).encode()).hex())}
        if recipients:
            import pyrage

            wrapped["age"] = base64.b64encode(pyrage.encrypt(archive, recipients)).decode()
        header = dict(header, format=1, wrapped=wrapped, salt=salt.hex(),
                      recipients=[str(r) for r in recipients or []],
                      nonce_prefix=self._prefix.hex(), chunk_size=CHUNK)
        raw = json.dumps(header, sort_keys=True).encode()
        self._aad = MAGIC + struct.pack(">I", len(raw)) + raw
        out.write(self._aad)
        self._aead = _file_key(archive, salt)
        self._buf = bytearray()
        self._i = 0
        self.header = header
        self.closed = False

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte back for the last chunk
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def _seal(self, chunk: bytes, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._prefix, self._i, last), chunk,
                                           self._aad))
        self._i += 1

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buf), last=True)
            self._buf.clear()
            self._out.flush()
            self.closed = True


class DecryptingReader:
    """A read-only file object over an archive's body: every byte it returns has passed
    its chunk's tag; at the end, the last flag must have been seen."""

    def __init__(self, f: BinaryIO, archive: bytes, header: dict, aad: bytes,
                 name: str) -> None:
        """`archive`: the archive key (`archive_key`)."""
        self._f, self._aad, self._name = f, aad, name
        self._prefix = bytes.fromhex(header["nonce_prefix"])
        self._size = int(header["chunk_size"]) + TAG
        self._aead = _file_key(archive, bytes.fromhex(header["salt"]))
        self._pending = f.read(self._size)
        self._plain = b""
        self._i = 0
        self._done = False
        self.position = 0  # plaintext bytes returned so far (for error messages)

    def _next(self) -> None:
        sealed, self._pending = self._pending, self._f.read(self._size)
        last = not self._pending
        if not sealed:
            raise ArchiveDamaged(f"{self._name} is cut short (no closing chunk)")
        try:
            self._plain = self._aead.decrypt(_nonce(self._prefix, self._i, last), sealed,
                                             self._aad)
        except InvalidTag:
            where = "is cut short or altered" if last else "was altered"
            raise ArchiveDamaged(f"{self._name} {where}: chunk {self._i} (near byte "
                                 f"{self._i * (self._size - TAG)} of the archive) fails "
                                 "its authentication tag") from None
        self._i += 1
        self._done = last

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._plain:
                if self._done:
                    break
                self._next()
                continue
            take = len(self._plain) if n < 0 else min(n - len(out), len(self._plain))
            out += self._plain[:take]
            self._plain = self._plain[take:]
        self.position += len(out)
        return bytes(out)

    def finish(self) -> None:
        """Read to the end: the archive is whole only once the last chunk has verified."""
        while self.read(CHUNK):
            pass
        if not self._done:
            raise ArchiveDamaged(f"{self._name} is cut short (no closing chunk)")
