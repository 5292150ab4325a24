"""`medsyft site backup SITE_DIR --out FILE`: one encrypted archive of everything a
site needs to come back, taken while it runs.

Order matters on a live site: the databases first, each with SQLite's online backup (a
consistent snapshot under concurrent writers; a file copy of a WAL database is not),
the governance database before syft's, then the files of the site folder (blobs,
releases, site.yaml, the policy, logs). The manifest, last in the archive, records the
SHA-256 of every file, the audit chain's head, the ledger per (researcher, dataset),
the datasets and their cohort ids and the number of syft accounts, all read from the
snapshots; `site restore` proves each of them again. The archive is sealed with the
site's backup key from the keyring (`archive_crypto`), created at the first backup.
The site's keyring secrets go in only with `--include-secrets`.

Must never write an unencrypted copy outside the site folder, nor a secret or private
data to stdout, logs or errors. Never touches the running site's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from nacl.signing import SigningKey
from pydantic import BaseModel, Field

from sites.common import keychain
from sites.governance import audit, schema
from sites.governance.store import DB_FILE
from sites.operator import archive_crypto, syft_store
from sites.operator.config import SITE_FILE, load_site
from sites.operator.lifecycle import SiteError, site_service
from sites.operator.upgrade import snapshot

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # Ed25519, the site's signing key, over manifest.json
SECRETS = "secrets.json"
BACKUP_KEY = "backup-key"
WATERMARK = "last-backup"  # keyring: when the newest backup was made (restore's rollback check)
SITE_SECRETS = ("signing-key", "admin-password")
SKIP_TOP = {"run", "transfers", "backups"}  # pids and sockets, half-uploads, old backups
SKIP_SUFFIX = ("-wal", "-shm", "-journal", ".partial")

Progress = Callable[[int, str], None]  # (bytes archived so far, path being archived)


class ArchivedFile(BaseModel):
    path: str = Field(description="relative to the site folder, '/'-separated")
    sha256: str
    size: int
    kind: Literal["file", "sqlite"] = Field(description="sqlite: an online-backup snapshot")


class LedgerLine(BaseModel):
    researcher: str
    dataset: str
    spent: float
    reserved: float
    rounds: int


class DatasetLine(BaseModel):
    name: str
    cohort_id: str


class BackupManifest(BaseModel):
    """What a backup holds and what its restore must find again."""

    format: int = FORMAT
    site: str
    server_uid: str
    created_at: float
    storage: str = Field("storage", description="syft's storage folder, relative to the site")
    schema_revision: str | None
    audit_entries: int
    audit_head: str = Field(description="hash of the last audit entry (64 zeros: none)")
    ledger: list[LedgerLine]
    datasets: list[DatasetLine]
    syft_users: int
    secrets_included: bool
    files: list[ArchivedFile]
    left_out: list[str] = Field(default_factory=list,
                                description="what the site refers to but is not archived")


class BackupReport(BaseModel):
    archive: str
    site: str
    created_at: float
    key_id: str
    verify_key: str = Field(description="the site's Ed25519 verify key the manifest is "
                                        "signed for (keep it with any age identity)")
    recipients: list[str] = Field(description="age recipients that can open it as well")
    bytes: int
    files: int
    audit_entries: int
    audit_head: str
    ledger: list[LedgerLine]
    datasets: list[DatasetLine]
    secrets_included: bool
    left_out: list[str]
    seconds: float


def backup_key(site: str, create: bool) -> bytes | None:
    """The site's backup key (32 bytes) from the keyring; made on first use if `create`."""
    service = site_service(site)
    value = keychain.get_secret(service, BACKUP_KEY)
    if value is None and create:
        keychain.set_secret(service, BACKUP_KEY, secrets.token_hex(32))
        value = keychain.get_secret(service, BACKUP_KEY)
    return None if value is None else bytes.fromhex(value)


def audit_head(db_file: Path) -> tuple[int, str, bool, str]:
    """(entries, head hash, chain intact, message) of a governance database, read-only."""
    import sqlite3

    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        ok, n, message = audit.verify(con)
        row = con.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        con.close()
    return n, row[0] if row else audit.GENESIS, ok, message


def ledger_lines(site_dir: Path) -> list[LedgerLine]:
    """The ledgers as `console ledger` composes them, in a stable order."""
    from sites.review.ledger import ledger

    return sorted((LedgerLine(researcher=e.researcher, dataset=e.dataset, spent=e.spent,
                              reserved=e.reserved,
                              rounds=sum(p.rounds_charged for p in e.plans))
                   for e in ledger(site_dir)), key=lambda x: (x.researcher, x.dataset))


def dataset_lines(db_file: Path) -> list[DatasetLine]:
    import sqlite3

    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name, cohort_id FROM datasets ORDER BY name").fetchall()
    finally:
        con.close()
    return [DatasetLine(name=r[0], cohort_id=r[1]) for r in rows]


class _Hashing:
    """Reads exactly `size` bytes of `f`, hashing them (what tarfile stores)."""

    def __init__(self, f: BinaryIO, size: int, progress: Callable[[int], None]) -> None:
        self._f, self._left, self._progress = f, size, progress
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        self.sha.update(data)
        self._progress(len(data))
        return data


class _Archive:
    def __init__(self, tar: tarfile.TarFile, progress: Progress | None) -> None:
        self.tar, self.files, self.bytes = tar, [], 0
        self._progress = progress

    def _tick(self, path: str) -> Callable[[int], None]:
        def tick(n: int) -> None:
            self.bytes += n
            if self._progress:
                self._progress(self.bytes, path)
        return tick

    def add_file(self, path: str, source: Path, kind: str = "file") -> str | None:
        """Archive one regular file; returns why it was left out, or None."""
        try:  # never through a symlink swapped in after the walk; never a FIFO's wait
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return "deleted while the backup ran"  # a swept upload, a rotated log
        except OSError as e:
            return f"not opened ({e.strerror}; a symlink is never followed)"
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return "not a regular file"
            if st.st_nlink != 1:
                return "hard-linked to a file elsewhere: not archived"
            size = st.st_size  # a growing log: its first `size` bytes
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = size, 0o600, int(time.time())
            reader = _Hashing(f, size, self._tick(path))
            try:
                self.tar.addfile(info, reader)
            except OSError:
                raise SiteError(f"{source} shrank while it was archived (rotated or "
                                "truncated?): run the backup again") from None
        self.files.append(ArchivedFile(path=path, sha256=reader.sha.hexdigest(), size=size,
                                       kind=kind))
        return None

    def add_bytes(self, path: str, data: bytes, record: bool = True) -> None:
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
        self.tar.addfile(info, io.BytesIO(data))
        if record:
            self.files.append(ArchivedFile(path=path, sha256=hashlib.sha256(data).hexdigest(),
                                           size=len(data), kind="file"))


def _walk(root: Path, skip: set[Path]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in SKIP_TOP]
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        for name in sorted(filenames):
            p = here / name
            if p in skip or name.endswith(SKIP_SUFFIX) or p.is_symlink() or not p.is_file():
                continue
            out.append(p)
    return out


def backup_site(site_dir: Path, out: Path, include_secrets: bool = False,
                progress: Progress | None = None,
                recipients: list[str] | None = None) -> BackupReport:
    """Archive the site (running or not) into `out`, sealed with its backup key and, for
    each age `recipients` (`age1…`), openable with that recipient's identity too."""
    started = time.monotonic()
    site_dir, cfg = load_site(site_dir)
    out = out.resolve()
    if out.exists():
        raise SiteError(f"{out} already exists; refusing to overwrite a file")
    if not out.parent.is_dir():
        raise SiteError(f"{out.parent} is not a folder")
    storage = cfg.path(site_dir, cfg.storage).resolve()
    if not storage.is_relative_to(site_dir):
        raise SiteError(f"storage {storage} lies outside the site folder {site_dir}; "
                        "site backup archives the site folder (move storage inside it)")
    gov_file = site_dir / DB_FILE
    if not gov_file.exists():
        raise SiteError(f"{gov_file} does not exist: not a site that has run")
    age = archive_crypto.parse_recipients(recipients or [])
    keychain.check_backend()
    key = backup_key(cfg.name, create=True)
    assert key is not None
    site_secrets = {}
    if include_secrets:
        for k in SITE_SECRETS:
            site_secrets[k] = keychain.require_secret(site_service(cfg.name), k)
    signer = SigningKey(bytes.fromhex(keychain.require_secret(site_service(cfg.name),
                                                              "signing-key")))
    left_out = [f"{p}: outside the site folder" for p in _external_files(site_dir, cfg)]
    # the snapshots stay inside the site folder (run/ is never archived), mode 0700
    work = Path(tempfile.mkdtemp(prefix="backup-", dir=site_dir / "run"))
    partial = out.with_name(out.name + ".partial")
    try:
        gov_snap = work / "snap" / DB_FILE
        snapshot(gov_file, gov_snap)
        syft_dbs = [p for p in _walk(storage, set()) if syft_store.is_sqlite(p)]
        snaps = {}
        for i, db in enumerate(syft_dbs):
            snaps[db] = work / f"syft-{i}.db"
            snapshot(db, snaps[db])
        # read the facts from a copy of the snapshot (opening one may touch its header)
        facts = work / "facts"
        facts.mkdir()
        shutil.copyfile(gov_snap, facts / DB_FILE)
        for name in (SITE_FILE, "policy.yaml"):
            if (site_dir / name).exists():
                shutil.copyfile(site_dir / name, facts / name)
        n_audit, head, ok, message = audit_head(facts / DB_FILE)
        if not ok:
            raise SiteError(f"the audit chain of {gov_file} does not verify ({message}); "
                            "a backup would preserve a broken record: investigate first")
        revision = schema.state(facts / DB_FILE).current
        ledgers = ledger_lines(facts)
        datasets = dataset_lines(facts / DB_FILE)
        syft_db = syft_store.database(storage, cfg.server_uid)
        if datasets and syft_db not in snaps:
            raise SiteError(f"{syft_db} is missing while {len(datasets)} dataset(s) are "
                            "published: a backup of this site would not restore "
                            "(`medsyft site doctor` says more)")
        users = syft_store.count_users(snaps[syft_db]) if syft_db in snaps else 0
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw:
            writer = archive_crypto.EncryptingWriter(raw, key, {
                "site": cfg.name, "created_at": time.time()}, recipients=age)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                arc = _Archive(tar, progress)
                arc.add_file(DB_FILE, gov_snap, "sqlite")
                for db, snap in snaps.items():
                    arc.add_file(db.relative_to(site_dir).as_posix(), snap, "sqlite")
                skip = {gov_file, *snaps, out, partial}
                for p in _walk(site_dir, skip):
                    why = arc.add_file(p.relative_to(site_dir).as_posix(), p)
                    if why is not None:
                        left_out.append(f"{p.relative_to(site_dir)}: {why}")
                if include_secrets:
                    arc.add_bytes(SECRETS, json.dumps(site_secrets).encode())
                site_secrets.clear()
                created = time.time()
                manifest = BackupManifest(
                    site=cfg.name, server_uid=cfg.server_uid, created_at=created,
                    storage=storage.relative_to(site_dir).as_posix(),
                    schema_revision=revision, audit_entries=n_audit, audit_head=head,
                    ledger=ledgers, datasets=datasets, syft_users=users,
                    secrets_included=include_secrets, files=arc.files, left_out=left_out)
                text = manifest.model_dump_json(indent=1).encode()
                arc.add_bytes(MANIFEST, text, record=False)
                arc.add_bytes(SIGNATURE, signer.sign(text).signature, record=False)
            writer.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, out)
        keychain.set_secret(site_service(cfg.name), WATERMARK, json.dumps(
            {"created_at": created, "audit_entries": n_audit}))
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return BackupReport(archive=str(out), site=cfg.name, created_at=created,
                        verify_key=signer.verify_key.encode().hex(),
                        key_id=archive_crypto.key_id(key),
                        recipients=[str(r) for r in age],
                        bytes=out.stat().st_size, files=len(manifest.files),
                        audit_entries=n_audit, audit_head=head, ledger=ledgers,
                        datasets=datasets, secrets_included=include_secrets,
                        left_out=left_out, seconds=round(time.monotonic() - started, 2))


def _external_files(site_dir: Path, cfg) -> list[Path]:
    """Files site.yaml names that lie outside the site folder (TLS certificates, keys)."""
    out = []
    for rel in (cfg.console.tls_cert, cfg.console.tls_key, cfg.transfer.tls_cert,
                cfg.transfer.tls_key):
        if rel is not None:
            p = cfg.path(site_dir, rel).resolve()
            if not p.is_relative_to(site_dir):
                out.append(p)
    return out

