"""The site's own discriminator of each GAN plan: kept between rounds, never released.

A GAN plan (`synthesize` with `adversarial`) federates its generator only. Each site's
discriminator is trained at the site, by DP-SGD like the generator, and lives here
between rounds: `state/discriminators/<plan hash>.npz` in the site folder (folder 0700,
file 0600, written atomically, read without pickle). It is deleted when the plan ends
(its last round, released or not, or the data owner's revocation), and with the site;
`sweep` (at site start and on each steward turn) deletes any that a plan can no longer
use: no approval, every round run, or its researcher's record gone.

Must never hand a discriminator to anything a researcher can read: no syft object, no
result, no log line holds one; only the runtime reads it back, into the next round's
training process.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

FOLDER = Path("state") / "discriminators"
log = logging.getLogger("medsyft.site")


def _path(site_folder: Path, plan_hash: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", plan_hash):
        raise ValueError("not a plan hash")
    return Path(site_folder) / FOLDER / f"{plan_hash}.npz"


def load(site_folder: Path, plan_hash: str) -> dict[str, torch.Tensor] | None:
    """The plan's discriminator as its last round here left it (a round that trained and
    was then refused at release keeps its D too: that round was charged), or None."""
    path = _path(site_folder, plan_hash)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["__names__"]]
        return {name: torch.from_numpy(z[f"p{i}"].copy()) for i, name in enumerate(names)}


def save(site_folder: Path, plan_hash: str, params: dict[str, torch.Tensor]) -> Path:
    """Keep the plan's discriminator for its next round (replacing the last one)."""
    path = _path(site_folder, plan_hash)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        names = sorted(params)
        np.savez(f, __names__=np.array(names),
                 **{f"p{i}": params[k].detach().cpu().numpy() for i, k in enumerate(names)})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def forget(site_folder: Path, plan_hash: str) -> bool:
    """Delete the plan's discriminator; True if there was one."""
    path = _path(site_folder, plan_hash)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def kept(site_folder: Path) -> list[str]:
    """Plan hashes whose discriminator the site keeps now."""
    folder = Path(site_folder) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.npz") if re.fullmatch(r"[0-9a-f]{64}", p.stem))


def _plan_rounds(gov, plan_hash: str) -> int | None:  # noqa: ANN001
    """The plan's rounds if it may still run here, else None."""
    plan = gov.decided_plan(plan_hash) if gov.approval(plan_hash) is not None else None
    if plan is None:
        return None
    from sites.governance.registry import Registry

    if Registry(gov).by_email(str(plan.get("researcher", ""))) is None:
        return None  # the plan's researcher has no record (any more): it cannot run
    return int(plan["rounds"])


def sweep(site_folder: Path, gov, at_start: bool = False) -> list[str]:  # noqa: ANN001
    """Delete every kept discriminator whose plan cannot run another round here: not (or
    no longer) approved, its researcher's record gone, or every round begun. A plan with a
    round running is left to that round. `at_start` (no round can be running): also
    delete half-written files a crash left. Returns the plan hashes deleted."""
    folder = Path(site_folder) / FOLDER
    if not folder.is_dir():
        return []
    if at_start:
        for tmp in folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
    deleted = []
    for plan_hash in kept(site_folder):
        try:  # one odd entry (a folder where a file belongs, a malformed record) is
            # logged and left; it never stops the sweep, the steward or the site's start
            runs = gov.runs(plan_hash)
            if any(r.status == "running" for r in runs):
                continue
            rounds = _plan_rounds(gov, plan_hash)
            begun = sum(1 for r in runs if r.status in ("released", "failed", "aborted"))
            if rounds is None or begun >= rounds:
                forget(site_folder, plan_hash)
                deleted.append(plan_hash)
        except Exception:  # noqa: BLE001
            log.exception("discriminator of plan %s: could not sweep it", plan_hash[:12])
    return deleted
