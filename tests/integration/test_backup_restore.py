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
from sites.operator.backup import backup_key, backup_site
from sites.operator.config import load_site
from sites.operator.restore import restore_site
from tests.support.plans import make_plan
from tests.support.sites import one_site

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "backup-site-pw-42"
NAME = "bk-hospital"
DATASET = "brain-mri-pet"


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
    ran = CliRunner().invoke(app, ["site", "restore", str(b["archive"]), str(target),
                                   "--json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.stdout)
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
    events = [e["event"] for e in gov.audit_entries()]
    assert events[-1] == "site.restored"
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
        ran = CliRunner().invoke(app, ["site", "restore", str(archive), str(tmp_path / "r"),
                                       "--identity", str(tmp_path / "offline.key"), "--json"])
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
