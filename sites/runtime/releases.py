"""The site's own copy of every set of weights it released, for the data owner's audit.

`medsyft console audit-privacy` attacks what a plan released; the researcher already
holds these weights, so the copy reveals nothing new, but it lives in the site folder
only (`releases/<plan hash>/round-NNNN.npz`, mode 0600, written atomically), is read
without pickle, and is deleted with the site. The file is the canonical safetensors
encoding (`policies.contract.transfer.encode`): its SHA-256 is the digest the round's
result and the audit carry, and the weights endpoint serves it byte for byte to the
researcher whose round released it (`release-NNNN.safetensors`; sites from before the
side channel kept `round-NNNN.npz`, still read).

Must never store anything but released parameters (the release filter's output).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from policies.contract import transfer

FOLDER = "releases"


def _plan_dir(site_folder: Path, plan_hash: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", plan_hash):
        raise ValueError("not a plan hash")
    return Path(site_folder) / FOLDER / plan_hash


def keep(site_folder: Path, plan_hash: str, round_no: int,
         params: dict[str, np.ndarray]) -> tuple[Path, str, int]:
    """Write round `round_no`'s released parameters; returns the file, its SHA-256 and size."""
    folder = _plan_dir(site_folder, plan_hash)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"round-{int(round_no):04d}.safetensors"
    blob = transfer.encode(params)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path, transfer.digest(blob), len(blob)


def path_of(site_folder: Path, plan_hash: str, round_no: int) -> Path | None:
    """The safetensors file of that round's release, or None."""
    path = _plan_dir(site_folder, plan_hash) / f"round-{int(round_no):04d}.safetensors"
    return path if path.is_file() else None


def rounds_kept(site_folder: Path, plan_hash: str) -> list[int]:
    """Round numbers whose released weights the site keeps, ascending."""
    folder = _plan_dir(site_folder, plan_hash)
    if not folder.is_dir():
        return []
    return sorted({int(m.group(1)) for p in folder.iterdir()
                   if (m := re.fullmatch(r"round-(\d{4})\.(?:npz|safetensors)", p.name))})


def load(site_folder: Path, plan_hash: str, round_no: int) -> dict[str, np.ndarray]:
    """The parameters released in that round (no pickle)."""
    path = path_of(site_folder, plan_hash, round_no)
    if path is not None:
        return transfer.decode(path.read_bytes())
    path = _plan_dir(site_folder, plan_hash) / f"round-{int(round_no):04d}.npz"
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["__names__"]]
        return {name: z[f"p{i}"].copy() for i, name in enumerate(names)}
