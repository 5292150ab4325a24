"""The backup container (`sites.operator.archive_crypto`): every way of changing an
archive without the key is refused, and nothing is returned before its chunk verified."""

from __future__ import annotations

import io
import os

import pytest

from sites.operator import archive_crypto as ac

KEY = bytes(range(32))


def seal(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    w = ac.EncryptingWriter(out, key, {"site": "st-test"})
    for i in range(0, len(data), 7777):  # writes that straddle chunk boundaries
        w.write(data[i:i + 7777])
    w.close()
    return out.getvalue()


def open_(blob: bytes, key: bytes = KEY) -> bytes:
    f = io.BytesIO(blob)
    header, aad = ac.read_header(f, "x.bak")
    r = ac.DecryptingReader(f, key, header, aad, "x.bak")
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
    with pytest.raises(ac.ArchiveDamaged, match="made with backup key"):
        open_(blob, key=bytes(32))


def test_not_an_archive():
    with pytest.raises(ac.ArchiveDamaged, match="not a medsyft site backup"):
        open_(b"PK\x03\x04 a zip file")


def test_the_plaintext_is_nowhere_in_the_archive():
    data = b"patient-0042 " * 10000
    assert b"patient-0042" not in seal(data)
