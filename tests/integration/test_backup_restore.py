"""Backup and restore of a real site (issue 20): a backup taken during a running round
restores into a new folder with its datasets, approvals, ledger, audit chain and
researcher account, and a new round runs there; a tampered archive is refused, naming
the file."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import pytest
from typer.testing import CliRunner

from researcher.federation import Federation, initial_weights
from sites.common import keychain
from sites.common.keyring_backends import MemoryKeyring
from sites.entrypoint import app
from sites.governance.store import Governance
from sites.operator import archive_crypto, lifecycle
from sites.operator.archive_crypto import ArchiveDamaged
from sites.operator.backup import WATERMARK, backup_key, backup_site
from sites.operator.config import load_site
from sites.operator.restore import restore_site
from tests.support.plans import make_plan
from tests.support.sites import one_site

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "backup-site-pw-42"
NAME = "bk-hospital"
DATASET = "brain-mri-pet"


@pytest.fixture(autouse=True)
def _newest_backup_on_record_kept(memory_keyring):
    """A test that makes a newer backup of the site would make every later restore of
    the module's archives a rollback: put the record back as it was."""
    service = lifecycle.site_service(NAME)
    before = memory_keyring.get_password(service, WATERMARK)
    yield
    if before is None:
        if memory_keyring.get_password(service, WATERMARK) is not None:
            memory_keyring.delete_password(service, WATERMARK)
    else:
        memory_keyring.set_password(service, WATERMARK, before)


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory, memory_keyring, repo_root):
    """A site that ran one round, backed up while its second round runs, then stopped."""
    root = tmp_path_factory.mktemp("backup")
    with one_site(root, NAME, repo_root / "tests" / "policies" / "ledger.yaml", EMAIL,
                  PASSWORD, n=48, seed=11, shape=(16, 16, 16)) as env:  # > 1 MB: a blob
        fed, d = env["fed"], env["dir"]
        plan = make_plan(name="kept", rounds=4, epsilon=3.0).model_copy(
            update={"batch_size": 4, "local_epochs": 4})
        fed.submit(plan)
        deadline = time.monotonic() + 180
        while fed.status(plan)[NAME].status != "approved":
            assert time.monotonic() < deadline, "never approved"
            time.sleep(1.0)
        bound = fed.bind(plan)
        fed.run_site_round(NAME, bound, initial_weights(bound))
        gov = Governance(d)
        second = threading.Thread(
            target=lambda: fed.run_site_round(NAME, bound, initial_weights(bound)),
            daemon=True)
        second.start()
        while not [r for r in gov.runs(bound.plan_hash) if r.status == "running"]:
            assert time.monotonic() < deadline, "second round never started"
            time.sleep(0.02)
        archive = root / "site.medsyft-backup"
        report = backup_site(d, archive)
        second.join(timeout=120)
        with_secrets = root / "with-secrets.medsyft-backup"
        ran = CliRunner().invoke(app, ["site", "backup", str(d), "--out", str(with_secrets),
                                       "--include-secrets", "--json"])
        assert ran.exit_code == 0, ran.output
        assert json.loads(ran.stdout)["secrets_included"] is True
    yield {"root": root, "dir": d, "archive": archive, "report": report, "plan": plan,
           "bound": bound, "config": env["config"],
           "with_secrets": with_secrets, "keyring": memory_keyring}


def test_a_backup_during_a_round_restores_whole_and_a_new_round_runs(backed_up):
    b = backed_up
    assert b["report"].datasets and len(b["report"].ledger) == 1
    assert b["report"].ledger[0].reserved > 0  # the backup really was taken mid-round
    target = b["root"] / "restored"
    # a second backup was made after this one (the fixture's): a rollback must be asked for
    refused = CliRunner().invoke(app, ["site", "restore", str(b["archive"]), str(target)])
    assert refused.exit_code == 1 and "--allow-older" in refused.output
    assert not target.exists()
    ran = CliRunner().invoke(app, ["site", "restore", str(b["archive"]), str(target),
                                   "--allow-older", "--json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.stdout)
    assert report["older_than_newest_backup"] is True
    assert report["signature"].startswith("signed by verify key")
    assert report["ok"] and all(c["ok"] for c in report["checks"])
    names = {c["name"] for c in report["checks"]}
    assert {"audit chain", "audit head", "ledger", "syft accounts", "datasets",
            f"asset {DATASET}/cohort"} <= names
    assert report["blob_paths_rewritten"] >= 1  # syft's absolute paths now point here
    assert report["ledger"] == [line.model_dump() for line in b["report"].ledger]

    import stat

    opened = [p for p in [target, *target.rglob("*")]
              if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)]
    assert opened == []  # imaging and ledgers: the site's user only
    gov = Governance(target)
    assert gov.dataset(DATASET)["cohort_id"] == b["report"].datasets[0].cohort_id
    assert gov.approval(b["bound"].plan_hash) is not None  # the approval came back
    entries = gov.audit_entries()
    events = [e["event"] for e in entries]
    assert events[-1] == "site.restored"
    assert entries[-1]["details"]["older_than_newest_backup"] is True
    assert len(events) == b["report"].audit_entries + 1
    verified = CliRunner().invoke(app, ["console", "audit", "--verify", "--site", str(target)])
    assert verified.exit_code == 0, verified.output

    # the original's files out of reach: the restored site must read its own blobs
    (b["dir"] / "storage").rename(b["dir"] / "storage.elsewhere")
    lifecycle.up(target)  # same ports and keyring as the original, which is stopped
    try:
        runs = gov.runs(b["bound"].plan_hash)
        assert [r.status for r in runs] == ["released", "aborted"]  # mid-round at backup
        fed = Federation(b["config"]).connect()  # the researcher's account is there
        assert fed.status(b["plan"])[NAME].status == "approved"
        result = fed.run_site_round(NAME, b["bound"], initial_weights(b["bound"]))
        assert result.round == 3
        assert gov.verify_audit()[0]
    finally:
        lifecycle.down(target)
        (b["dir"] / "storage.elsewhere").rename(b["dir"] / "storage")


def _members(archive, key):
    """(header, [(TarInfo, bytes)]) of an archive, decrypted with the site's key."""
    with open(archive, "rb") as f:
        header, aad = archive_crypto.read_header(f, "a")
        inner = archive_crypto.archive_key(header, "a", keyring_key=key)
        reader = archive_crypto.DecryptingReader(f, inner, header, aad, "a")
        out = []
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for m in tar:
                out.append((m, tar.extractfile(m).read()))
    return header, out


def _reseal(path, key, members, site=NAME):
    with open(path, "wb") as raw:
        writer = archive_crypto.EncryptingWriter(raw, key, {"site": site})
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        writer.close()


def _refused(archive, target, match):
    with pytest.raises(ArchiveDamaged, match=match):
        restore_site(archive, target)
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}.restoring-*"))  # nothing left


def test_a_flipped_byte_is_refused_naming_the_archive(backed_up, tmp_path):
    data = bytearray(backed_up["archive"].read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "flipped.medsyft-backup"
    bad.write_bytes(bytes(data))
    _refused(bad, tmp_path / "r1", f"{bad}.*was altered: chunk")


def test_a_cut_short_archive_is_refused(backed_up, tmp_path):
    data = backed_up["archive"].read_bytes()
    bad = tmp_path / "short.medsyft-backup"
    bad.write_bytes(data[:len(data) - 100])
    _refused(bad, tmp_path / "r2", "cut short")


def test_a_file_altered_by_someone_holding_the_key_is_named(backed_up, tmp_path):
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["archive"], key)
    changed = [(m, d + b"\n# approval: auto for everyone\n" if m.name == "policy.yaml"
                else d) for m, d in members]
    bad = tmp_path / "resealed.medsyft-backup"
    _reseal(bad, key, changed)
    _refused(bad, tmp_path / "r3", "policy.yaml does not match its SHA-256")


@pytest.mark.parametrize("evil", ["../escaped.txt", "/etc/evil", "runs/../../x"])
def test_a_member_with_an_unsafe_path_is_refused(backed_up, tmp_path, evil):
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["archive"], key)
    members.insert(1, (tarfile.TarInfo(evil), b"x"))
    bad = tmp_path / "evil.medsyft-backup"
    _reseal(bad, key, members)
    _refused(bad, tmp_path / "r4", "unsafe path")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_link_member_is_refused(backed_up, tmp_path):
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["archive"], key)
    link = tarfile.TarInfo("policy-link.yaml")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members.insert(1, (link, b""))
    bad = tmp_path / "link.medsyft-backup"
    _reseal(bad, key, members)
    _refused(bad, tmp_path / "r5", "not a regular file")


def test_restore_refuses_a_folder_that_holds_anything_and_a_running_site(backed_up, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    with pytest.raises(lifecycle.SiteError, match="not an empty folder"):
        restore_site(backed_up["archive"], full)
    assert (full / "notes.txt").read_text() == "keep me"


def test_secrets_travel_only_with_include_secrets(backed_up, tmp_path):
    original = backed_up["keyring"]
    service = lifecycle.site_service(NAME)
    fresh = MemoryKeyring()  # a new machine's keyring, given only the backup key
    fresh.set_password(service, "backup-key", original.get_password(service, "backup-key"))
    keychain.use_backend(fresh)
    try:
        with pytest.raises(lifecycle.SiteError, match="holds no signing-key, admin-password"):
            restore_site(backed_up["archive"], tmp_path / "no-secrets")
        assert not (tmp_path / "no-secrets").exists()
        report = restore_site(backed_up["with_secrets"], tmp_path / "carried")
        assert report.secrets == "from the archive"
        for k in ("signing-key", "admin-password"):
            assert fresh.get_password(service, k) == original.get_password(service, k)
    finally:
        keychain.use_backend(original)


def test_an_offline_age_identity_restores_on_a_machine_without_the_keyring(backed_up,
                                                                          tmp_path):
    from pyrage import x25519

    ident = x25519.Identity.generate()
    (tmp_path / "offline.key").write_text(f"{ident}\n")
    (tmp_path / "offline.key").chmod(0o600)
    archive = tmp_path / "for-age.medsyft-backup"
    original = backed_up["keyring"]
    backed = backup_site(backed_up["dir"], archive, include_secrets=True,
                         recipients=[str(ident.to_public())])
    assert backed.recipients == [str(ident.to_public())]
    fresh = MemoryKeyring()  # a new machine: not even the backup key
    keychain.use_backend(fresh)
    try:
        with pytest.raises(lifecycle.SiteError, match="or give --identity"):
            restore_site(archive, tmp_path / "nokey")
        args = ["site", "restore", str(archive), str(tmp_path / "r"),
                "--identity", str(tmp_path / "offline.key"), "--json"]
        ran = CliRunner().invoke(app, args)  # anyone can seal for a public recipient
        assert ran.exit_code == 1 and "--verify-key" in ran.output
        ran = CliRunner().invoke(app, args + ["--verify-key", backed.verify_key])
        assert ran.exit_code == 0, ran.output
        assert json.loads(ran.stdout)["ok"] is True
        service = lifecycle.site_service(NAME)
        assert fresh.get_password(service, "signing-key") == original.get_password(
            service, "signing-key")
    finally:
        keychain.use_backend(original)


def test_a_keyring_without_the_backup_key_cannot_open_it(backed_up, tmp_path):
    original = backed_up["keyring"]
    keychain.use_backend(MemoryKeyring())
    try:
        with pytest.raises(lifecycle.SiteError, match="holds no backup-key"):
            restore_site(backed_up["archive"], tmp_path / "r6")
    finally:
        keychain.use_backend(original)


def test_the_archive_holds_no_secret_or_pixel_in_clear(backed_up):
    data = backed_up["with_secrets"].read_bytes()
    service = lifecycle.site_service(NAME)
    for k in ("signing-key", "admin-password", "backup-key"):
        secret = backed_up["keyring"].get_password(service, k)
        assert secret.encode() not in data
    _, cfg = load_site(backed_up["dir"])
    for clear in (b"policy.yaml", b"SQLite format 3", cfg.server_uid.encode(),
                  EMAIL.encode()):
        assert clear not in data


def test_a_site_whose_syft_store_is_gone_is_not_backed_up(backed_up, tmp_path):
    d = backed_up["dir"]
    (d / "storage").rename(d / "storage.gone")
    try:
        with pytest.raises(lifecycle.SiteError, match="would not restore"):
            backup_site(d, tmp_path / "x.medsyft-backup")
        assert not (tmp_path / "x.medsyft-backup").exists()
    finally:
        (d / "storage.gone").rename(d / "storage")


def _resign(members, signer):
    """The members with the manifest's sums made to match and the manifest signed by
    `signer` (or unsigned): all an attacker who knows no key of the site can do."""
    import hashlib

    from sites.operator.backup import BackupManifest

    files = {m.name: d for m, d in members}
    manifest = BackupManifest.model_validate_json(files["manifest.json"])
    for f in manifest.files:
        f.sha256 = hashlib.sha256(files[f.path]).hexdigest()
        f.size = len(files[f.path])
    text = manifest.model_dump_json(indent=1).encode()
    out = []
    for m, d in members:
        if m.name == "manifest.sig":
            continue
        out.append((m, text if m.name == "manifest.json" else d))
    if signer is not None:
        out.append((tarfile.TarInfo("manifest.sig"), signer.sign(text).signature))
    return out


@pytest.mark.parametrize("signed", ["by another key", "not at all"])
def test_an_archive_forged_for_the_public_age_recipient_is_refused(backed_up, tmp_path,
                                                                   signed):
    """The attacker knows the recipient's public key (every archive shows it) but no key of
    the site: they seal a self-consistent archive with a policy of their own."""
    from nacl.signing import SigningKey
    from pyrage import x25519

    ident = x25519.Identity.generate()
    (tmp_path / "offline.key").write_text(f"{ident}\n")
    (tmp_path / "offline.key").chmod(0o600)
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["with_secrets"], key)
    members = [(m, d.replace(b"approval: auto", b"approval: auto  # attacker")
                if m.name == "policy.yaml" else d) for m, d in members]
    forged = _resign(members, SigningKey.generate() if signed == "by another key" else None)
    bad = tmp_path / "forged.medsyft-backup"
    with open(bad, "wb") as raw:  # sealed for the recipient only: no backup key needed
        writer = archive_crypto.EncryptingWriter(raw, None, {"site": NAME},
                                                 recipients=[ident.to_public()])
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, data in forged:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        writer.close()
    _, cfg = load_site(backed_up["dir"])
    from nacl.signing import SigningKey as SK

    real = SK(bytes.fromhex(backed_up["keyring"].get_password(
        lifecycle.site_service(NAME), "signing-key"))).verify_key.encode().hex()
    target = tmp_path / "victim"
    with pytest.raises(ArchiveDamaged, match="not signed by verify key|carries no signature"):
        restore_site(bad, target, identity=tmp_path / "offline.key", verify_key=real)
    assert not target.exists()


def test_members_a_backup_never_holds_are_refused(backed_up, tmp_path):
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["archive"], key)
    members.insert(1, (tarfile.TarInfo("run/server.pid"), b"1"))
    bad = tmp_path / "pid.medsyft-backup"
    _reseal(bad, key, members)
    _refused(bad, tmp_path / "r7", "never part of a backup")


def test_a_renamed_site_yaml_is_refused(backed_up, tmp_path):
    key = backup_key(NAME, create=False)
    _, members = _members(backed_up["archive"], key)
    members = [(m, d.replace(f"name: {NAME}".encode(), b"name: other-site")
                if m.name == "site.yaml" else d) for m, d in members]
    from nacl.signing import SigningKey

    signer = SigningKey(bytes.fromhex(backed_up["keyring"].get_password(
        lifecycle.site_service(NAME), "signing-key")))  # even a holder of every key
    bad = tmp_path / "renamed.medsyft-backup"
    _reseal(bad, key, _resign(members, signer))
    with pytest.raises(ArchiveDamaged, match="site.yaml other-site"):
        restore_site(bad, tmp_path / "r8", allow_older=True)


def test_an_absolute_storage_path_restores_into_the_new_folder(backed_up, tmp_path):
    import hashlib

    from sites.operator.config import save_site
    from sites.operator.syft_store import database

    d, cfg = load_site(backed_up["dir"])
    save_site(d, cfg.model_copy(update={"storage": str(d / "storage")}))
    original_db = database(d / "storage", cfg.server_uid)
    before = hashlib.sha256(original_db.read_bytes()).hexdigest()
    try:
        archive = tmp_path / "abs.medsyft-backup"
        backup_site(d, archive)
        report = restore_site(archive, tmp_path / "moved")
        assert report.ok
    finally:
        save_site(d, cfg)
    _, restored = load_site(tmp_path / "moved")
    assert restored.storage == "storage"
    assert hashlib.sha256(original_db.read_bytes()).hexdigest() == before  # untouched


def test_hard_links_and_fifos_are_left_out_and_a_shrinking_file_stops_the_backup(
        backed_up, tmp_path):
    import os

    d = backed_up["dir"]
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("not the site's")
    os.link(outside, d / "logs" / "linked.txt")
    os.mkfifo(d / "logs" / "pipe")
    try:
        report = backup_site(d, tmp_path / "links.medsyft-backup")
        assert any("linked.txt: hard-linked" in x for x in report.left_out)
        big = d / "logs" / "big.log"
        big.write_bytes(b"x" * (3 << 20))

        def truncate(done, path):
            if path == "logs/big.log" and big.stat().st_size:
                big.write_bytes(b"")  # copytruncate, mid-read

        with pytest.raises(lifecycle.SiteError, match="big.log shrank"):
            backup_site(d, tmp_path / "shrunk.medsyft-backup", progress=truncate)
        assert not (tmp_path / "shrunk.medsyft-backup").exists()
    finally:
        for name in ("linked.txt", "pipe", "big.log"):
            (d / "logs" / name).unlink(missing_ok=True)


def test_what_a_killed_restore_left_is_swept(backed_up, tmp_path):
    stale = tmp_path / ".r9.restoring-999999999-abcd"  # no such process
    stale.mkdir()
    (stale / "governance.sqlite").write_bytes(b"decrypted")
    live = tmp_path / f".r9.restoring-{__import__('os').getpid()}-beef"  # still running
    live.mkdir()
    report = restore_site(backed_up["with_secrets"], tmp_path / "r9")
    assert report.stale_restores_removed == 1
    assert not stale.exists() and live.exists()
