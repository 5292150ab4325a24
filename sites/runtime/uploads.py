"""Global weights a researcher uploaded for a round, waiting for the round that uses them.

The weights endpoint (`sites.runtime.weights_api`) writes each upload here while it
streams (`transfers/<plan hash>/<digest>.<nonce>.part`, mode 0600) and renames it to
`<digest>-r<round>.safetensors` only once every byte arrived and their SHA-256 is the digest the
researcher signed; the round that names that digest (`WeightsRef`) reads it and deletes
it when it ends. A plan keeps at most `PER_PLAN` uploads (the oldest go first); what no
round claimed is deleted after `MAX_AGE_S`, and half-written files at the site's start.

Must never hold anything but what a researcher sent (nothing private is ever written
here), and never hand the runtime a file whose bytes are not the signed digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from policies.contract import transfer

log = logging.getLogger("medsyft.runtime")

FOLDER = "transfers"
#: Uploads kept per plan: a round and its retry, with room for one more in flight.
PER_PLAN = 3
#: An upload no round has claimed within this long is deleted.
MAX_AGE_S = 6 * 3600


def _plan_dir(site_folder: Path, plan_hash: str) -> Path:
    if not transfer.HEX64.fullmatch(plan_hash):
        raise ValueError("not a plan hash")
    return Path(site_folder) / FOLDER / plan_hash


def path_of(site_folder: Path, plan_hash: str, digest: str, round_no: int) -> Path:
    """Where the upload signed for (plan, round, digest) is kept: a round's `WeightsRef`
    finds only the upload signed for that very round."""
    if not transfer.HEX64.fullmatch(digest):
        raise ValueError("not a digest")
    return _plan_dir(site_folder, plan_hash) / f"{digest}-r{int(round_no)}.safetensors"


class Upload:
    """One upload being written: `write` each chunk, then `finish` or `abort`."""

    def __init__(self, site_folder: Path, plan_hash: str, digest: str, round_no: int,
                 nonce: str) -> None:
        self.final = path_of(site_folder, plan_hash, digest, round_no)
        self.final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not transfer.NONCE.fullmatch(nonce):
            raise ValueError("not a nonce")
        self.part = self.final.parent / f"{digest}.{nonce}.part"
        self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = hashlib.sha256()
        self.digest = digest
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(chunk)

    def finish(self) -> Path:
        """Keep the upload if its bytes are the digest and safetensors' own parser reads
        them (the endpoint's header check is not the only judge); else delete it, refuse."""
        os.close(self._fd)
        self._fd = -1
        if self._hash.hexdigest() != self.digest:
            self.part.unlink(missing_ok=True)
            raise transfer.TransferRefused("digest_mismatch",
                                           "the bytes received are not the signed digest")
        try:
            from safetensors import safe_open

            with safe_open(str(self.part), framework="numpy") as f:
                f.keys()
        except Exception:  # noqa: BLE001 - safetensors' own error type
            self.part.unlink(missing_ok=True)
            raise transfer.TransferRefused("malformed", "not a valid safetensors file"
                                           ) from None
        os.replace(self.part, self.final)
        _trim(self.final.parent)
        return self.final

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part.unlink(missing_ok=True)


def _trim(folder: Path) -> None:
    kept = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    for old in kept[:-PER_PLAN]:
        old.unlink(missing_ok=True)


def load(site_folder: Path, plan_hash: str, digest: str, round_no: int, size: int
         ) -> dict[str, np.ndarray] | None:
    """The arrays of the plan's upload signed for this round with this digest and size,
    checked again against the digest (a file changed on disk is refused), or None if there
    is none."""
    path = path_of(site_folder, plan_hash, digest, round_no)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(blob) != size:
        return None
    if transfer.digest(blob) != digest:
        log.error("upload %s of plan %s does not match its digest: deleted", digest[:12],
                  plan_hash[:12])
        path.unlink(missing_ok=True)
        return None
    try:
        return transfer.decode(blob)
    except transfer.TransferRefused:
        log.error("upload %s of plan %s does not decode: deleted", digest[:12], plan_hash[:12])
        path.unlink(missing_ok=True)
        return None


def forget(site_folder: Path, plan_hash: str, digest: str, round_no: int) -> None:
    path_of(site_folder, plan_hash, digest, round_no).unlink(missing_ok=True)


def sweep(site_folder: Path, at_start: bool = False, now: float | None = None) -> int:
    """Delete uploads older than `MAX_AGE_S` (and, at the site's start, every half-written
    one); returns how many files went."""
    root = Path(site_folder) / FOLDER
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    gone = 0
    for folder in root.iterdir():
        if not (folder.is_dir() and re.fullmatch(r"[0-9a-f]{64}", folder.name)):
            continue
        for f in folder.iterdir():
            try:
                stale = now - f.stat().st_mtime > MAX_AGE_S
                if stale or (at_start and f.suffix == ".part"):
                    f.unlink()
                    gone += 1
            except OSError:
                continue
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass
    return gone
