"""`medsyft site doctor` (issue 20): a healthy site passes; each way a site can be
unsafe to run fails its check with a fix, and `site up` refuses to start on it before
anything is spawned."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sites.common import keychain
from sites.entrypoint import app
from sites.governance.store import DB_FILE, Governance
from sites.operator import doctor, lifecycle
from sites.operator.config import load_site, save_site

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "governance_baseline.sqlite"


def by_name(site_dir: Path, **kw) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.diagnose(site_dir, **kw).checks}


def refused_to_start(site_dir: Path, match: str) -> None:
    with pytest.raises(lifecycle.SiteError, match=match) as info:
        lifecycle.up(site_dir)
    assert "fix:" in str(info.value)
    assert not (site_dir / lifecycle.PID_FILE).exists()  # nothing was started


def test_a_fresh_site_is_safe_to_run(site_dir):
    report = doctor.diagnose(site_dir)
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    names = {c.name for c in report.checks}
    assert {"keyring", "secrets", "database", "server id", "syft store", "policy",
            "audit chain", "disk", "tls", "gpu", "ports", "sandbox", "permissions"} <= names
    assert by_name(site_dir)["permissions"].status == "pass"  # init closes the folder
    ran = CliRunner().invoke(app, ["site", "doctor", str(site_dir), "--json"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["ok"] is True


def test_an_altered_audit_entry_fails_and_blocks_the_start(site_dir):
    db = sqlite3.connect(site_dir / DB_FILE)
    db.execute("UPDATE audit SET subject = 'someone-else' WHERE seq = 1")
    db.commit()
    db.close()
    check = by_name(site_dir)["audit chain"]
    assert check.status == "fail" and "entry 1 was altered" in check.detail
    ran = CliRunner().invoke(app, ["site", "doctor", str(site_dir)])
    assert ran.exit_code == 1
    assert "entry 1 was altered" in ran.output and "fix:" in ran.output
    refused_to_start(site_dir, "audit chain: entry 1 was altered")


def test_an_older_database_names_the_upgrade_command(site_dir):
    for extra in ("", "-wal", "-shm"):
        Path(f"{site_dir / DB_FILE}{extra}").unlink(missing_ok=True)
    shutil.copyfile(FIXTURE, site_dir / DB_FILE)
    check = by_name(site_dir)["database"]
    assert check.status == "fail"
    assert check.fix == f"medsyft site upgrade {site_dir.resolve()}"
    refused_to_start(site_dir, "medsyft site upgrade")


def test_missing_secrets_fail(site_dir):
    _, cfg = load_site(site_dir)
    keychain.delete_secret(lifecycle.site_service(cfg.name), "admin-password")
    check = by_name(site_dir)["secrets"]
    assert check.status == "fail" and "admin-password" in check.detail
    assert "signing" not in check.detail


def test_a_lost_syft_store_with_published_datasets_fails(site_dir):
    Governance(site_dir).register_dataset("brain-mri-pet", "c" * 32, 20, "d", actor="test")
    check = by_name(site_dir)["syft store"]
    assert check.status == "fail" and "empty store" in check.detail
    refused_to_start(site_dir, "syft store")


def test_a_broken_policy_names_its_line(site_dir):
    (site_dir / "policy.yaml").write_text("version: 1\napproval: sometimes\n")
    check = by_name(site_dir)["policy"]
    assert check.status == "fail" and "policy.yaml:2" in check.detail


def test_a_port_held_by_another_program_fails(site_dir):
    _, cfg = load_site(site_dir)
    with socket.socket() as s:
        s.bind((cfg.host, cfg.port))
        s.listen()
        check = by_name(site_dir)["ports"]
        assert check.status == "fail" and str(cfg.port) in check.detail
        refused_to_start(site_dir, "in use by another program")


def test_a_refused_keyring_fails(site_dir, tmp_path, memory_keyring):
    from sites.common.keyring_backends import FolderKeyring

    allowed = keychain.plaintext_allowed()
    keychain.use_backend(FolderKeyring(tmp_path / "kr"))
    keychain.allow_plaintext_keyring(False)
    try:
        check = by_name(site_dir)["keyring"]
    finally:
        keychain.allow_plaintext_keyring(allowed)
        keychain.use_backend(memory_keyring)
    assert check.status == "fail" and "FolderKeyring" in check.detail


def test_cuda_without_a_gpu_fails(site_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the failing case cannot be shown here")
    d, cfg = load_site(site_dir)
    save_site(d, cfg.model_copy(update={"device": "cuda"}))
    check = by_name(site_dir)["gpu"]
    assert check.status == "fail" and "sees no GPU" in check.detail


def test_too_little_disk_fails(site_dir, monkeypatch):
    free = shutil.disk_usage(site_dir).free
    monkeypatch.setattr(doctor, "DISK_FAIL", free * 2)  # the threshold, not the disk
    assert by_name(site_dir)["disk"].status == "fail"
    monkeypatch.setattr(doctor, "DISK_FAIL", 1)
    monkeypatch.setattr(doctor, "DISK_WARN", free * 2)
    assert by_name(site_dir)["disk"].status == "warn"


def _certificate(folder: Path, days: float) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    (folder / "tls").mkdir(exist_ok=True)
    (folder / "tls" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls" / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "tls" / "key.pem").chmod(0o600)
    return "tls/cert.pem", "tls/key.pem"


@pytest.mark.parametrize(("days", "status", "words"), [
    (-3, "fail", "expired"), (10, "warn", "expires in"), (200, "pass", "expires in")])
def test_tls_certificate_expiry(site_dir, days, status, words):
    d, cfg = load_site(site_dir)
    cert, key = _certificate(d, days)
    save_site(d, cfg.model_copy(update={"console": cfg.console.model_copy(
        update={"tls_cert": cert, "tls_key": key})}))
    check = by_name(site_dir)["tls"]
    assert check.status == status and words in check.detail


def test_a_tls_key_others_can_read_fails(site_dir):
    d, cfg = load_site(site_dir)
    cert, key = _certificate(d, 200)
    (d / key).chmod(0o644)
    save_site(d, cfg.model_copy(update={"console": cfg.console.model_copy(
        update={"tls_cert": cert, "tls_key": key})}))
    check = by_name(site_dir)["tls"]
    assert check.status == "fail" and "readable by others" in check.detail


def test_the_doctor_changes_nothing(site_dir):
    def files():  # SQLite's -wal/-shm appear when a WAL database is read at all
        return {p: p.read_bytes() for p in Path(site_dir).rglob("*")
                if p.is_file() and not p.name.endswith(("-wal", "-shm"))}

    before = files()
    doctor.diagnose(site_dir)
    assert files() == before
