"""The console script as users call it (subprocesses, no datasite needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def medsyft(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "sites.entrypoint", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT,
                          timeout=120)


def test_help_lists_the_subcommands_without_importing_syft():
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from sites.entrypoint import app; "
                        "print('syft' in sys.modules, 'torch' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["False", "False"]
    r = medsyft("--help")
    assert r.returncode == 0
    for cmd in ("site", "console", "policy", "data", "researcher", "demo"):
        assert cmd in r.stdout


def test_policy_validate_exit_codes(tmp_path):
    good = medsyft("policy", "validate", *map(str, sorted((ROOT / "policies").glob("*.yaml"))))
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndatasets:\n  x:\n    acess: {}\n")
    r = medsyft("policy", "validate", str(bad))
    assert r.returncode == 1
    assert f"{bad}:4: datasets.x.acess" in r.stderr.replace("\n", "")


def test_site_init_and_status_json_with_the_encrypted_keyring(tmp_path):
    """The README's headless route: a passfile, and the secrets in the encrypted file."""
    (tmp_path / "pass").write_text("a long passphrase for the test\n")
    (tmp_path / "pass").chmod(0o600)
    env = {"MEDSYFT_KEYRING_PASSFILE": str(tmp_path / "pass"),
           "MEDSYFT_KEYRING_FILE": str(tmp_path / "kr" / "keyring.cfg")}
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}, **env}
    r = medsyft("site", "init", "clinic-a", "--dir", str(tmp_path / "a"), env=env)
    assert r.returncode == 0, r.stderr
    from sites.common.cryptfile_keyring import EncryptedFileKeyring

    ring = EncryptedFileKeyring(tmp_path / "kr" / "keyring.cfg", "a long passphrase for the test")
    secrets = {k: ring.get_password(s, k) for s, k in ring.entries()
               if s == "medsyft-site:clinic-a"}
    raw = (tmp_path / "kr" / "keyring.cfg").read_text()
    text = (tmp_path / "a" / "site.yaml").read_text()
    assert set(secrets) == {"signing-key", "admin-password"}
    for value in secrets.values():  # no secret in the site folder, none in clear in the keyring
        assert value and value not in text and value not in raw
    assert "host: 127.0.0.1" in text
    r = medsyft("site", "status", str(tmp_path / "a"), "--json", env=env)
    assert r.returncode == 1  # not running
    assert json.loads(r.stdout)["running"] is False
    again = medsyft("site", "init", "clinic-a", "--dir", str(tmp_path / "a"), env=env)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_missing_site_folder_is_one_clear_line(tmp_path):
    r = medsyft("site", "status", str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert "no site here" in r.stderr and "Traceback" not in r.stderr
