"""The backup container (`sites.operator.archive_crypto`): every way of changing an
archive without the key is refused, and nothing is returned before its chunk verified."""

from __future__ import annotations

import io
import json
import os
import struct

import pytest

from sites.operator import archive_crypto as ac

KEY = bytes(range(32))


def seal(data: bytes, key: bytes | None = KEY, recipients=None) -> bytes:
    out = io.BytesIO()
    w = ac.EncryptingWriter(out, key, {"site": "st-test"}, recipients=recipients)
    for i in range(0, len(data), 7777):  # writes that straddle chunk boundaries
        w.write(data[i:i + 7777])
    w.close()
    return out.getvalue()


def open_(blob: bytes, key: bytes | None = KEY, identities=None) -> bytes:
    f = io.BytesIO(blob)
    header, aad = ac.read_header(f, "x.bak")
    archive = ac.archive_key(header, "x.bak", keyring_key=key, identities=identities)
    r = ac.DecryptingReader(f, archive, header, aad, "x.bak")
    data = r.read()
    r.finish()
    return data


@pytest.mark.parametrize("size", [0, 1, ac.CHUNK, ac.CHUNK + 1, 3 * ac.CHUNK - 5])
def test_round_trip(size):
    data = os.urandom(size)
    assert open_(seal(data)) == data


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    f = io.BytesIO(blob)
    _, aad = ac.read_header(f, "x")
    body = blob[len(aad):]
    n = ac.CHUNK + ac.TAG
    return aad, [body[i:i + n] for i in range(0, len(body), n)]


def test_swapped_chunks_dropped_chunk_and_truncation_are_refused():
    aad, chunks = _chunks(seal(os.urandom(3 * ac.CHUNK + 10)))
    assert len(chunks) == 4
    with pytest.raises(ac.ArchiveDamaged, match="chunk 0"):
        open_(aad + chunks[1] + chunks[0] + b"".join(chunks[2:]))
    with pytest.raises(ac.ArchiveDamaged, match="chunk 1"):
        open_(aad + chunks[0] + b"".join(chunks[2:]))
    with pytest.raises(ac.ArchiveDamaged, match="cut short"):
        open_(aad + b"".join(chunks[:3]))  # whole chunks, the last one missing
    with pytest.raises(ac.ArchiveDamaged, match="cut short"):
        open_(aad + b"".join(chunks)[:-1])


def test_a_header_edit_fails_every_chunk():
    blob = seal(b"private")
    edited = blob.replace(b'"site": "st-test"', b'"site": "st-evil"')
    assert edited != blob
    with pytest.raises(ac.ArchiveDamaged, match="altered"):
        open_(edited)


def test_another_key_is_named_not_tried():
    blob = seal(b"private")
    with pytest.raises(ac.CannotOpen, match="made with backup key"):
        open_(blob, key=bytes(32))


def test_each_archive_has_its_own_key():
    a, b = seal(b"same"), seal(b"same")
    assert _chunks(a)[1] != _chunks(b)[1]


def test_an_age_recipient_opens_it_without_the_keyring(tmp_path):
    from pyrage import x25519

    ident = x25519.Identity.generate()
    other = x25519.Identity.generate()
    blob = seal(b"private imaging", recipients=ac.parse_recipients([str(ident.to_public())]))
    assert open_(blob, key=None, identities=[ident]) == b"private imaging"
    assert open_(blob) == b"private imaging"  # and still with the site's backup key
    with pytest.raises(ac.CannotOpen, match="no identity given opens"):
        open_(blob, key=None, identities=[other])
    with pytest.raises(ac.CannotOpen, match="without an age recipient"):
        open_(seal(b"x"), key=None, identities=[ident])
    only_age = seal(b"y", key=None, recipients=[ident.to_public()])
    with pytest.raises(ac.CannotOpen, match="no key to open it"):
        open_(only_age)


def test_recipients_and_identity_files_are_checked(tmp_path):
    from pyrage import x25519

    with pytest.raises(ac.CannotOpen, match="not an age X25519 public key"):
        ac.parse_recipients(["ssh-rsa AAAA"])
    ident = x25519.Identity.generate()
    f = tmp_path / "id.txt"
    f.write_text(f"# offline key\n{ident}\n")
    f.chmod(0o644)
    with pytest.raises(ac.CannotOpen, match="only its owner can read"):
        ac.read_identities(f)
    f.chmod(0o600)
    assert len(ac.read_identities(f)) == 1
    f.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(ac.CannotOpen, match="line 1"):
        ac.read_identities(f)
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    with pytest.raises(ac.CannotOpen, match="regular file"):
        ac.read_identities(link)


def test_a_header_asking_for_huge_chunks_is_refused():
    blob = seal(b"x")
    f = io.BytesIO(blob)
    header, aad = ac.read_header(f, "x")
    raw = json.dumps(dict(header, chunk_size=1 << 40)).encode()
    forged = ac.MAGIC + struct.pack(">I", len(raw)) + raw + blob[len(aad):]
    with pytest.raises(ac.ArchiveDamaged, match="chunk size"):
        ac.read_header(io.BytesIO(forged), "x")


def test_not_an_archive():
    with pytest.raises(ac.ArchiveDamaged, match="not a medsyft site backup"):
        open_(b"PK\x03\x04 a zip file")


def test_the_plaintext_is_nowhere_in_the_archive():
    data = b"patient-0042 " * 10000
    assert b"patient-0042" not in seal(data)
