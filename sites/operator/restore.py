"""`medsyft site restore FILE SITE_DIR`: bring a site back from its backup, and prove
that nothing was lost.

The archive is opened with the site's backup key from the keyring (same machine, or a
new one given the same keyring). Everything is unpacked into a hidden folder beside
SITE_DIR first; only regular files with plain relative names are accepted. Then every
file's SHA-256 must equal the manifest's (the file is named otherwise), syft's absolute
blob paths are rewritten for the new folder, and the restored site must show what the
backup recorded: the audit chain verifies and ends at the recorded head, the ledger per
(researcher, dataset) is the same, every dataset's private asset loads (through syft's
serde) and holds the cohort the governance database registered, the syft accounts are
all there. Only then does the folder take its name and the secrets go to the keyring;
the restore is recorded in the restored audit log.

Must never start a site, overwrite a folder that holds anything, replace a different
secret in the keyring, or print private data (errors name files, never contents).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tarfile
import time
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field, ValidationError

from policies.contract.errors import format_errors
from sites.common import keychain
from sites.governance import schema
from sites.governance.store import DB_FILE, Governance
from sites.operator import archive_crypto, syft_store
from sites.operator.archive_crypto import ArchiveDamaged
from sites.operator.backup import (
    BACKUP_KEY,
    MANIFEST,
    SECRETS,
    SIGNATURE,
    SITE_SECRETS,
    SKIP_SUFFIX,
    SKIP_TOP,
    WATERMARK,
    BackupManifest,
    DatasetLine,
    LedgerLine,
    audit_head,
    backup_key,
    dataset_lines,
    ledger_lines,
)
from sites.operator.config import load_site, save_site
from sites.operator.lifecycle import SiteError, _read_pid, site_service

MAX_SMALL = 16 * 1024 * 1024  # manifest and secrets are read into memory, never larger


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class RestoreReport(BaseModel):
    archive: str
    site: str
    site_dir: str
    backup_created_at: float
    files: int
    bytes: int
    blob_paths_rewritten: int
    secrets: str = Field(description="'from the archive' or 'already in the keyring'")
    schema_revision: str | None
    upgrade_needed: bool
    audit_entries: int
    ledger: list[LedgerLine]
    datasets: list[DatasetLine]
    checks: list[Check]
    signature: str = Field(description="what vouches for the archive's manifest")
    older_than_newest_backup: bool
    stale_restores_removed: int
    ok: bool
    seconds: float


def _safe_name(name: str, archive: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts)
            or "\\" in name or "\0" in name):
        raise ArchiveDamaged(f"{archive}: member {name!r} has an unsafe path")
    return p


def _make_dirs(root: Path, folder: Path) -> None:
    """Create `folder` and every missing parent below `root`, each mode 0700 (mkdir's
    `parents=True` would give the parents the umask's mode)."""
    here = root
    for part in folder.relative_to(root).parts:
        here = here / part
        if not here.is_dir():
            here.mkdir(mode=0o700)


def _unpack(reader: archive_crypto.DecryptingReader, staging: Path, archive: str
            ) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    """Unpack regular files into `staging`; returns ({path: (sha256, size)}, {name: bytes}
    for the manifest and secrets, kept in memory)."""
    files: dict[str, tuple[str, int]] = {}
    small: dict[str, bytes] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            name = _safe_name(member.name, archive)
            key = name.as_posix()
            if not member.isreg():
                raise ArchiveDamaged(f"{archive}: member {key} is not a regular file")
            if key in files or key in small:
                raise ArchiveDamaged(f"{archive}: member {key} appears twice")
            if name.parts[0] in SKIP_TOP or name.name.endswith(SKIP_SUFFIX):
                raise ArchiveDamaged(f"{archive}: member {key} is never part of a backup")
            src = tar.extractfile(member)
            assert src is not None
            if key in (MANIFEST, SECRETS, SIGNATURE):
                if member.size > MAX_SMALL:
                    raise ArchiveDamaged(f"{archive}: member {key} is too large")
                small[key] = src.read()
                continue
            target = staging.joinpath(*name.parts)
            _make_dirs(staging, target.parent)
            sha = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    out.write(chunk)
            files[key] = (sha.hexdigest(), member.size)
    reader.finish()
    return files, small


def _manifest(small: dict[str, bytes], archive: str) -> BackupManifest:
    if MANIFEST not in small:
        raise ArchiveDamaged(f"{archive} holds no manifest (cut short when it was made?)")
    try:
        return BackupManifest.model_validate_json(small[MANIFEST])
    except ValidationError as e:
        raise ArchiveDamaged(f"{archive}: {MANIFEST}: {format_errors(e)}") from None


def _check_sums(manifest: BackupManifest, files: dict[str, tuple[str, int]],
                small: dict[str, bytes], archive: str) -> None:
    listed = {f.path: f for f in manifest.files}
    got = dict(files)
    if SECRETS in small:
        got[SECRETS] = (hashlib.sha256(small[SECRETS]).hexdigest(), len(small[SECRETS]))
    for path, entry in listed.items():
        if path not in got:
            raise ArchiveDamaged(f"{archive}: {path} is listed in the manifest but missing")
        if got[path] != (entry.sha256, entry.size):
            raise ArchiveDamaged(f"{archive}: {path} does not match its SHA-256 in the "
                                 "manifest (altered)")
    extra = sorted(set(got) - set(listed))
    if extra:
        raise ArchiveDamaged(f"{archive}: {extra[0]} is not listed in the manifest")


def _check_signature(manifest_bytes: bytes, signature: bytes | None, site: str,
                     verify_key: str | None, opened_with_identity: bool, archive: str) -> str:
    """Check the manifest's Ed25519 signature against the site's verify key: the one given,
    else the one of the signing key in the keyring. An archive opened with an age identity
    must pass it (anyone can seal an archive for a public recipient); one opened with the
    keyring's backup key is authentic already, and is checked when a key is at hand."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import SigningKey, VerifyKey

    if verify_key is None:
        signing = keychain.get_secret(site_service(site), "signing-key")
        if signing is not None:
            verify_key = SigningKey(bytes.fromhex(signing)).verify_key.encode().hex()
    if verify_key is None:
        if opened_with_identity:
            raise SiteError(f"{archive} was opened with an age identity, which anyone who "
                            "knows its public key could have sealed it for: give the site's "
                            "verify key (--verify-key, printed by `site backup`) so the "
                            "archive is checked against it")
        return "not checked (no verify key; the backup key authenticates the archive)"
    if signature is None:
        raise ArchiveDamaged(f"{archive} carries no signature of its manifest")
    try:
        VerifyKey(bytes.fromhex(verify_key)).verify(manifest_bytes, signature)
    except (BadSignatureError, ValueError):
        raise ArchiveDamaged(f"{archive}: its manifest is not signed by verify key "
                             f"{verify_key[:16]}… (another site's archive, or forged)") from None
    return f"signed by verify key {verify_key[:16]}…"


def _check_identity(manifest: BackupManifest, cfg, staging: Path, site: str,
                    has_secrets: bool, archive: str) -> None:
    """Header, manifest, site.yaml and the governance database name one site."""
    import sqlite3

    if cfg.name != site or manifest.site != site:
        raise ArchiveDamaged(f"{archive}: the header names site {site}, the manifest "
                             f"{manifest.site}, site.yaml {cfg.name}")
    if cfg.server_uid != manifest.server_uid:
        raise ArchiveDamaged(f"{archive}: site.yaml's server id differs from the manifest's")
    con = sqlite3.connect(f"file:{staging / DB_FILE}?mode=ro", uri=True)
    try:
        has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE name='site_meta'"
                               ).fetchone()
        row = con.execute("SELECT value FROM site_meta WHERE key='server_uid'").fetchone() \
            if has_meta else None
    finally:
        con.close()
    if row is not None and row[0] != manifest.server_uid:
        raise ArchiveDamaged(f"{archive}: the governance database belongs to server "
                             f"{row[0]}, not {manifest.server_uid}")
    if has_secrets != manifest.secrets_included:
        said = "included" if manifest.secrets_included else "not included"
        raise ArchiveDamaged(f"{archive}: secrets {'present' if has_secrets else 'absent'}, "
                             f"the manifest says {said}")
    p = PurePosixPath(manifest.storage)
    if not manifest.storage or p.is_absolute() or ".." in p.parts:
        raise ArchiveDamaged(f"{archive}: storage {manifest.storage!r} is not a folder inside "
                             "the site")


def _check_rollback(site: str, manifest: BackupManifest, allow_older: bool) -> bool:
    """True when a newer backup of this site is on record in the keyring (and
    `allow_older` lets it through); refused otherwise."""
    raw = keychain.get_secret(site_service(site), WATERMARK)
    if raw is None:
        return False
    try:
        newest = float(json.loads(raw)["created_at"])
    except (ValueError, KeyError, TypeError):
        return False
    if manifest.created_at >= newest - 1e-6:
        return False
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest))
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest.created_at))
    if not allow_older:
        raise SiteError(f"this backup of {site} was made {made}, but a newer one was made "
                        f"{when}: restoring it would forget every approval, ledger charge "
                        "and audit entry since. Give --allow-older if that is what you mean "
                        "(it is recorded)")
    return True


def _sweep_stale(site_dir: Path) -> int:
    """Remove what restores killed mid-way left beside `site_dir` (decrypted files)."""
    swept = 0
    for stale in site_dir.parent.glob(f".{site_dir.name}.restoring-*"):
        try:
            pid = int(stale.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
            continue  # that restore is still running
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(stale, ignore_errors=True)
        swept += 1
    return swept


def _place_secrets(site: str, small: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """Which secrets go to the keyring once every check has passed (none is written
    here); refuses a keyring that holds different ones for this site."""
    service = site_service(site)
    wanted: dict[str, str] = {}
    if SECRETS in small:
        carried = json.loads(small[SECRETS])
        for k in SITE_SECRETS:
            have = keychain.get_secret(service, k)
            if have is None:
                wanted[k] = carried[k]
            elif not secrets.compare_digest(have, carried[k]):
                raise SiteError(f"the keyring already holds a different {k} for site {site}:"
                                " refusing to replace it (another site of that name lives "
                                "here?)")
        return "from the archive", wanted
    missing = [k for k in SITE_SECRETS if keychain.get_secret(service, k) is None]
    if missing:
        raise SiteError(f"the keyring holds no {', '.join(missing)} for site {site}, and "
                        "the archive carries none: restore with the keyring the site used, "
                        "or from a backup made with --include-secrets")
    return "already in the keyring", wanted


def _verify(staging: Path, manifest: BackupManifest) -> tuple[list[Check], bool,
                                                             list[LedgerLine]]:
    checks: list[Check] = []
    db = staging / DB_FILE
    n, head, ok, message = audit_head(db)
    checks.append(Check(name="audit chain", ok=ok, detail=message))
    same = (n, head) == (manifest.audit_entries, manifest.audit_head)
    checks.append(Check(name="audit head", ok=same, detail=(
        f"entry #{n} {head[:16]}" + ("" if same else f", the backup recorded entry "
                                     f"#{manifest.audit_entries} {manifest.audit_head[:16]}"))))
    st = schema.state(db)
    upgrade = st.known and not st.up_to_date
    ledgers: list[LedgerLine] = []
    if upgrade:
        checks.append(Check(name="ledger", ok=True, detail=(
            f"schema {st.current} is older than this code's {schema.head()}: compared "
            "after `medsyft site upgrade`")))
    elif not st.known:
        checks.append(Check(name="schema", ok=False, detail=(
            f"schema {st.current} is newer than this code: restore with the release that "
            "made the backup")))
    else:
        ledgers = ledger_lines(staging)
        same = ledgers == manifest.ledger
        checks.append(Check(name="ledger", ok=same, detail=(
            f"{len(ledgers)} ledger(s) equal to the backup's" if same else
            "the ledger differs from the one the backup recorded")))
    restored = dataset_lines(db)
    checks.append(Check(name="datasets", ok=restored == manifest.datasets, detail=(
        f"{len(restored)} registered, as in the backup" if restored == manifest.datasets
        else "the registered datasets differ from the backup's")))
    _, cfg = load_site(staging)
    storage_rel = Path(manifest.storage)
    syft_db = syft_store.database(staging / storage_rel, cfg.server_uid)
    if syft_db.exists():
        users = syft_store.count_users(syft_db)
        checks.append(Check(name="syft accounts", ok=users == manifest.syft_users,
                            detail=f"{users} account(s), the backup recorded "
                                   f"{manifest.syft_users}"))
        loaded = syft_store.load_assets(
            syft_db, syft_store.blob_dir(staging / storage_rel, cfg.server_uid))
    else:
        checks.append(Check(name="syft store", ok=False, detail=f"{syft_db.name} is missing"))
        loaded = []
    registered = {d.name: d.cohort_id for d in manifest.datasets}
    seen = set()
    for a in loaded:
        good = a.problem is None and registered.get(a.dataset) == a.cohort_id
        seen.add(a.dataset)
        checks.append(Check(name=f"asset {a.dataset}/{a.asset}", ok=good, detail=(
            "loads, and holds the registered cohort" if good else a.problem or
            "holds another cohort than the governance database registered")))
    for name in sorted(set(registered) - seen):
        checks.append(Check(name=f"dataset {name}", ok=False,
                            detail="registered in governance, absent from syft's store"))
    return checks, upgrade, ledgers


def restore_site(archive: Path, site_dir: Path, identity: Path | None = None,
                 verify_key: str | None = None, allow_older: bool = False) -> RestoreReport:
    """Restore `archive` into the new or empty `site_dir`; opened with the keyring's
    backup key of its site, or with the age identities in the file `identity` (then
    checked against the site's `verify_key`). An archive older than the newest backup on
    record is refused unless `allow_older`."""
    started = time.monotonic()
    archive, site_dir = archive.resolve(), site_dir.resolve()
    name = str(archive)
    if site_dir.exists():
        if (site_dir / "site.yaml").exists() and _read_pid(site_dir) is not None:
            raise SiteError(f"a site is running in {site_dir}: stop it first")
        if not site_dir.is_dir() or any(site_dir.iterdir()):
            raise SiteError(f"{site_dir} is not an empty folder: restore into a new one")
    keychain.check_backend()
    swept = _sweep_stale(site_dir)
    identities = archive_crypto.read_identities(identity) if identity else None
    with open(archive, "rb") as f:
        header, aad = archive_crypto.read_header(f, name)
        site = str(header.get("site", ""))
        if identities:
            key = archive_crypto.archive_key(header, name, identities=identities)
        else:
            ring = backup_key(site, create=False)
            if ring is None:
                needs = (header.get("wrapped") or {}).get("keyring", {}).get("key_id")
                raise SiteError(
                    f"the keyring holds no {BACKUP_KEY} for site {site!r} (the archive needs "
                    f"key {needs}): restore on a machine with that site's keyring"
                    + (", or give --identity (it was also sealed for "
                       f"{', '.join(header['recipients'])})" if header.get("recipients")
                       else ""))
            key = archive_crypto.archive_key(header, name, keyring_key=ring)
        reader = archive_crypto.DecryptingReader(f, key, header, aad, name)
        del key
        staging = (site_dir.parent /
                   f".{site_dir.name}.restoring-{os.getpid()}-{secrets.token_hex(4)}")
        staging.mkdir(mode=0o700, parents=True)
        try:
            files, small = _unpack(reader, staging, name)
            manifest = _manifest(small, name)
            signed = _check_signature(small[MANIFEST], small.get(SIGNATURE), site,
                                      verify_key, bool(identities), name)
            _check_sums(manifest, files, small, name)
            _, cfg = load_site(staging)
            _check_identity(manifest, cfg, staging, site, SECRETS in small, name)
            older = _check_rollback(site, manifest, allow_older)
            how, to_write = _place_secrets(site, small)
            small.clear()
            if cfg.storage != manifest.storage:  # an absolute path: made relative here
                save_site(staging, cfg.model_copy(update={"storage": manifest.storage}))
                _, cfg = load_site(staging)
            storage = site_dir / manifest.storage
            rewritten = 0
            syft_db = syft_store.database(staging / manifest.storage, cfg.server_uid)
            if syft_db.exists():
                rewritten = syft_store.rewrite_blob_paths(
                    syft_db, syft_store.blob_dir(storage, cfg.server_uid))
            checks, upgrade, ledgers = _verify(staging, manifest)
            ok = all(c.ok for c in checks)
            if not ok:
                failed = next(c for c in checks if not c.ok)
                raise SiteError(f"restore of {name} refused: {failed.name}: {failed.detail}")
            for sub in ("logs", "run", "runs", "storage"):
                (staging / sub).mkdir(exist_ok=True, mode=0o700)
            if site_dir.exists():
                site_dir.rmdir()
            os.replace(staging, site_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    for k, v in to_write.items():
        keychain.set_secret(site_service(site), k, v)
    to_write.clear()
    if not upgrade:
        Governance(site_dir).audit("operator", "site.restored", site, archive=name,
                                   backup_created_at=manifest.created_at,
                                   older_than_newest_backup=older,
                                   audit_head=manifest.audit_head,
                                   opened_with="identity" if identities else "keyring")
    return RestoreReport(archive=name, site=site, site_dir=str(site_dir),
                         backup_created_at=manifest.created_at, files=len(files),
                         bytes=reader.position, blob_paths_rewritten=rewritten, secrets=how,
                         schema_revision=manifest.schema_revision, upgrade_needed=upgrade,
                         audit_entries=manifest.audit_entries, ledger=ledgers,
                         datasets=manifest.datasets, checks=checks, signature=signed,
                         older_than_newest_backup=older, stale_restores_removed=swept,
                         ok=True,
                         seconds=round(time.monotonic() - started, 2))
