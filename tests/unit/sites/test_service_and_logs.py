"""Running a site for years (issue 20): the systemd unit `site service` prints is
hardened and passes `systemd-analyze verify`; the site log rotates by size and can be
JSON lines."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sites.entrypoint import app
from sites.operator import lifecycle, site_logging
from sites.operator.config import load_site
from sites.operator.service import unit

HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "UMask=0077",
             "Restart=on-failure", "LoadCredentialEncrypted=medsyft-keyring:")


def test_the_unit_is_hardened_and_holds_no_secret(site_dir, memory_keyring, tmp_path):
    text = unit(site_dir, "medsyft", keyring_file=tmp_path / "kr" / "keyring.cfg")
    lines = text.splitlines()
    for directive in HARDENING:
        assert any(line.startswith(directive) for line in lines), directive
    writable = next(line for line in lines if line.startswith("ReadWritePaths="))
    assert str(site_dir.resolve()) in writable and str(tmp_path / "kr") in writable
    assert "User=medsyft" in lines
    assert f"ExecStart={sys.executable.rsplit('/', 1)[0]}/medsyft site up {site_dir.resolve()}" \
        in lines
    _, cfg = load_site(site_dir)
    for k in ("signing-key", "admin-password"):
        assert memory_keyring.get_password(lifecycle.site_service(cfg.name), k) not in text


def test_a_cpu_site_hides_devices_and_a_gpu_site_does_not(site_dir, tmp_path):
    from sites.operator.config import save_site

    d, cfg = load_site(site_dir)
    save_site(d, cfg.model_copy(update={"device": "cpu"}))
    assert "PrivateDevices=yes" in unit(site_dir, "medsyft").splitlines()
    save_site(d, cfg.model_copy(update={"device": "cuda"}))
    assert "PrivateDevices=yes" not in unit(site_dir, "medsyft").splitlines()


def test_root_is_refused(site_dir):
    ran = CliRunner().invoke(app, ["site", "service", str(site_dir), "--user", "root"])
    assert ran.exit_code != 0
    assert "must not run as root" in ran.output


@pytest.fixture()
def analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return exe


def _verify(analyze, path):
    ran = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (ran.stdout + ran.stderr).splitlines()
                if "Special user" not in line]  # `nobody`: the test's stand-in account
    return ran.returncode, problems


def test_systemd_analyze_verifies_the_unit(site_dir, analyze, tmp_path):
    path = tmp_path / "medsyft-site.service"
    ran = CliRunner().invoke(app, ["site", "service", str(site_dir), "--user", "nobody",
                                   "--keyring-file", str(tmp_path / "keyring.cfg")])
    assert ran.exit_code == 0, ran.output
    path.write_text(ran.stdout)
    assert _verify(analyze, path) == (0, [])
    # and the check can fail: a directive systemd cannot parse is reported
    path.write_text(ran.stdout.replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    assert any("protect system" in p.lower() for p in _verify(analyze, path)[1])


def test_systemd_rates_the_hardening(site_dir, analyze, tmp_path):
    path = tmp_path / "medsyft-site.service"
    path.write_text(unit(site_dir, "nobody", keyring_file=tmp_path / "keyring.cfg"))
    ran = subprocess.run([analyze, "security", "--offline=yes", str(path)],
                         capture_output=True, text=True, timeout=60)
    passed = {line.split()[1] for line in ran.stdout.splitlines() if line.startswith("✓")}
    assert {"NoNewPrivileges=", "PrivateTmp=", "ProtectSystem=", "UMask=",
            "RestrictSUIDSGID="} <= passed


def _cfg(site_dir, **update):
    _, cfg = load_site(site_dir)
    return cfg.model_copy(update=update)


def test_the_site_log_rotates_by_size_and_keeps_n(site_dir, tmp_path):
    cfg = _cfg(site_dir, log_max_mb=1, log_keep=2)
    folder = tmp_path / "logs"
    folder.mkdir()
    log_file = folder / "site.log"
    handler = site_logging.handler(log_file, cfg)
    log = logging.getLogger("medsyft.test-rotation")
    log.handlers[:] = [handler]
    log.propagate = False
    line = "x" * 1000
    for _ in range(4000):  # ~4 MB through a 1 MB limit
        log.warning(line)
    handler.close()
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["site.log", "site.log.1", "site.log.2"]
    assert all(p.stat().st_size <= 1024 * 1024 + 2000 for p in folder.iterdir())


def test_json_lines(site_dir, tmp_path):
    cfg = _cfg(site_dir, log_format="json")
    handler = site_logging.handler(tmp_path / "site.log", cfg)
    log = logging.getLogger("medsyft.test-json")
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    log.propagate = False
    log.info('keyring: "quoted" and\nnewline')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    handler.close()
    records = [json.loads(x) for x in (tmp_path / "site.log").read_text().splitlines()]
    assert [r["message"] for r in records] == ['keyring: "quoted" and\nnewline', "failed"]
    assert records[0]["logger"] == "medsyft.test-json" and records[0]["level"] == "INFO"
    assert "ValueError: boom" in records[1]["error"]


def test_server_log_rotates_at_start(site_dir, tmp_path):
    cfg = _cfg(site_dir, log_max_mb=1, log_keep=2)
    log_file = tmp_path / "server.log"
    for i in range(3):
        log_file.write_bytes(bytes([65 + i]) * (1024 * 1024))
        assert site_logging.rotate_at_start(log_file, cfg)
    assert not log_file.exists()
    assert (tmp_path / "server.log.1").read_bytes()[:1] == b"C"
    assert (tmp_path / "server.log.2").read_bytes()[:1] == b"B"  # A was dropped
    assert not (tmp_path / "server.log.3").exists()
    log_file.write_text("small")
    assert not site_logging.rotate_at_start(log_file, cfg)
