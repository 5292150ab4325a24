"""The keyring: which backends may hold a site's secrets, and the encrypted file that opens
unattended. Backends are real (keyring's, keyrings.alt's, keyrings.cryptfile's); processes
that need a clean keyring environment run as subprocesses."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import keyring
import pytest
from keyring.backends import chainer, fail

from sites.common import cryptfile_keyring, keychain
from sites.common.cryptfile_keyring import EncryptedFileKeyring
from sites.common.keyring_backends import FolderKeyring, MemoryKeyring
from sites.common.keyring_policy import judge

ROOT = Path(__file__).resolve().parents[3]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no keyring configuration, no session bus and an empty home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON_KEYRING", "MEDSYFT_KEYRING", "XDG_", "DBUS"))
           and k != "CREDENTIALS_DIRECTORY"}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), **extra)
    return env


def run_py(code: str, env: dict[str, str], stdin: str | None = None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, input=stdin)


def medsyft(*args: str, env: dict[str, str]):
    return subprocess.run([sys.executable, "-m", "sites.entrypoint", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def passfile(path: Path, text: str = "correct horse battery staple") -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture()
def selection():
    """Restore the process's keyring selection after a test changes it."""
    previous = keyring.get_keyring()
    yield
    keychain.reset_selection()
    keychain.use_backend(previous)


# -- the allowlist ---------------------------------------------------------------------
def test_keyrings_default_chain_with_a_plaintext_file_is_refused(tmp_path):
    """The chain keyring builds with no configuration (keyrings.alt installed) holds a
    plaintext file; medsyft's own backends never join it (priority 0)."""
    r = run_py("import keyring, json; from sites.common import keychain\n"
               "from sites.common.keyring_policy import judge\n"
               "b = keyring.get_keyring()\n"
               "print(json.dumps({'verdict': judge(b).model_dump(),\n"
               "  'children': [type(c).__name__ for c in getattr(b, 'backends', [])],\n"
               "  'modules': [type(c).__module__ for c in getattr(b, 'backends', [])]}))",
               clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"]["backend"] == "keyring.backends.chainer.ChainerBackend"
    assert "PlaintextKeyring" in out["children"]
    assert not any(m.startswith("sites.") for m in out["modules"])
    assert out["verdict"]["accepted"] is False and out["verdict"]["plaintext"] is True
    assert "PlaintextKeyring" in out["verdict"]["reason"]


def test_a_chain_is_judged_by_every_backend_it_holds(monkeypatch):
    from keyrings.alt.file import PlaintextKeyring

    good = [MemoryKeyring(), EncryptedFileKeyring(Path("/nonexistent/k.cfg"), "x")]
    monkeypatch.setattr(chainer.ChainerBackend, "backends", good)
    assert judge(chainer.ChainerBackend()).accepted
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [MemoryKeyring(), PlaintextKeyring()])
    verdict = judge(chainer.ChainerBackend())
    assert not verdict.accepted and verdict.plaintext
    assert "keyrings.alt.file.PlaintextKeyring" in verdict.reason


@pytest.mark.parametrize("dotted", ["keyrings.alt.file.PlaintextKeyring",
                                    "keyrings.cryptfile.file.PlaintextKeyring",
                                    "sites.common.keyring_backends.FolderKeyring"])
def test_plaintext_backends_are_refused_by_scheme(dotted):
    backend = keyring.core.load_keyring(dotted)
    verdict = judge(backend)
    assert verdict.plaintext and not verdict.accepted


@pytest.mark.parametrize("dotted", ["keyrings.alt.file.EncryptedKeyring",
                                    "keyrings.cryptfile.cryptfile.CryptFileKeyring",
                                    "keyring.backends.fail.Keyring",
                                    "keyring.backends.null.Keyring"])
def test_weak_or_prompting_backends_are_refused(dotted):
    verdict = judge(keyring.core.load_keyring(dotted))
    assert not verdict.accepted and not verdict.plaintext and verdict.reason


def test_an_accepted_backends_subclass_is_accepted_through_its_parents():
    class HospitalKeyring(EncryptedFileKeyring):
        pass

    assert judge(HospitalKeyring(Path("/nonexistent/k.cfg"), "x")).accepted


def test_a_backend_the_operator_configured_is_judged_too(tmp_path):
    """PYTHON_KEYRING_BACKEND naming a plaintext file: refused, named, with the steps;
    nothing is written."""
    env = clean_env(tmp_path, PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring")
    r = medsyft("site", "init", "clinic-p", "--dir", str(tmp_path / "p"), env=env)
    assert r.returncode == 1
    assert "keyrings.alt.file.PlaintextKeyring is refused" in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p" / "site.yaml").exists()
    assert not list(tmp_path.rglob("keyring_pass.cfg"))


def test_headless_init_with_no_usable_backend_prints_the_steps(tmp_path):
    r = medsyft("site", "init", "clinic-h", "--dir", str(tmp_path / "h"), env=clean_env(tmp_path))
    assert r.returncode == 1
    text = " ".join(r.stderr.split())
    assert "is refused" in text and "systemd-creds encrypt" in text
    assert cryptfile_keyring.PASSFILE_ENV in text and "Traceback" not in text
    assert not (tmp_path / "h" / "site.yaml").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_no_backend_at_all_is_refused(selection):
    keychain.reset_selection()
    keychain.use_backend(fail.Keyring())
    with pytest.raises(keychain.KeyringRefused, match="fail.Keyring is refused"):
        keychain.get_secret("medsyft-site:x", "admin-password")


def test_plaintext_needs_the_explicit_allowance(selection, tmp_path):
    keychain.reset_selection()
    keychain.use_backend(FolderKeyring(tmp_path))
    with pytest.raises(keychain.KeyringRefused, match="stores secrets in clear"):
        keychain.set_secret("medsyft-site:x", "admin-password", "s3cret")
    assert not (tmp_path / "keyring.json").exists()
    keychain.allow_plaintext_keyring()
    keychain.set_secret("medsyft-site:x", "admin-password", "s3cret")
    assert keychain.check_backend().plaintext


def test_folder_keyring_keeps_secrets_private_to_its_file(tmp_path):
    backend = FolderKeyring(tmp_path)
    backend.set_password("svc", "user", "s3cret")
    assert backend.get_password("svc", "user") == "s3cret"
    assert (tmp_path / "keyring.json").stat().st_mode & 0o077 == 0
    backend.delete_password("svc", "user")
    assert backend.get_password("svc", "user") is None


# -- the encrypted file ----------------------------------------------------------------
def test_the_encrypted_file_holds_no_secret_in_clear(tmp_path):
    secret = "signing-key-0123456789abcdef-" + "9" * 20
    ring = EncryptedFileKeyring(tmp_path / "k.cfg", "a passphrase")
    ring.set_password("medsyft-site:st-agnes", "signing-key", secret)
    raw = (tmp_path / "k.cfg").read_bytes()
    for form in (secret.encode(), base64.b64encode(secret.encode()),
                 base64.b64encode(secret.encode())[:16], b"a passphrase"):
        assert form not in raw
    assert (tmp_path / "k.cfg").stat().st_mode & 0o077 == 0
    again = EncryptedFileKeyring(tmp_path / "k.cfg", "a passphrase")
    assert again.get_password("medsyft-site:st-agnes", "signing-key") == secret
    assert again.entries() == [("medsyft-site:st-agnes", "signing-key")]


def test_a_wrong_passphrase_names_the_file_and_is_no_traceback(tmp_path):
    EncryptedFileKeyring(tmp_path / "k.cfg", "right one").set_password("s", "k", "v")
    env = clean_env(tmp_path, MEDSYFT_KEYRING_FILE=str(tmp_path / "k.cfg"),
                    MEDSYFT_KEYRING_PASSFILE=str(passfile(tmp_path / "pass", "wrong one")))
    r = medsyft("site", "init", "clinic-w", "--dir", str(tmp_path / "w"), env=env)
    assert r.returncode == 1
    assert f"keyring passphrase does not open {tmp_path / 'k.cfg'}" in \
        r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr and "MAC" not in r.stderr


def test_an_altered_entry_is_reported_not_returned(tmp_path):
    ring = EncryptedFileKeyring(tmp_path / "k.cfg", "pp")
    ring.set_password("s", "a", "first")
    ring.set_password("s", "b", "second")
    text = (tmp_path / "k.cfg").read_text()
    # move b's ciphertext under a: the associated data (service, key) no longer matches
    import configparser

    cfg = configparser.RawConfigParser()
    cfg.read_string(text)
    cfg.set("s", "a", cfg.get("s", "b"))
    with open(tmp_path / "k.cfg", "w") as f:
        cfg.write(f)
    fresh = EncryptedFileKeyring(tmp_path / "k.cfg", "pp")
    with pytest.raises(cryptfile_keyring.DamagedKeyring, match="does not decrypt"):
        fresh.get_password("s", "a")


def test_two_processes_writing_at_once_keep_every_key(tmp_path):
    env = clean_env(tmp_path, MEDSYFT_KEYRING_FILE=str(tmp_path / "k.cfg"),
                    MEDSYFT_KEYRING_PASSFILE=str(passfile(tmp_path / "pass")))
    code = ("import sys; from sites.common import keychain\n"
            "for i in range(6):\n"
            "    keychain.set_secret('medsyft-site:race', f'{sys.argv[1]}-{i}', f'v{i}')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, tag], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE) for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read().decode()
    ring = EncryptedFileKeyring(tmp_path / "k.cfg", "correct horse battery staple")
    keys = {k for s, k in ring.entries() if s == "medsyft-site:race"}
    assert keys == {f"{t}-{i}" for t in "ab" for i in range(6)}
    assert ring.get_password("medsyft-site:race", "b-5") == "v5"


def test_a_passphrase_source_selects_the_encrypted_file_and_it_never_prompts(tmp_path):
    """With a passfile and no keyring configuration the encrypted file is chosen; with
    none it fails at once (stdin left open: a prompt would hang until the timeout)."""
    env = clean_env(tmp_path, MEDSYFT_KEYRING_FILE=str(tmp_path / "k.cfg"),
                    MEDSYFT_KEYRING_PASSFILE=str(passfile(tmp_path / "pass")))
    r = run_py("from sites.common import keychain; print(keychain.check_backend().backend)",
               env)
    assert r.stdout.strip() == "sites.common.cryptfile_keyring.EncryptedFileKeyring", r.stderr
    env = clean_env(tmp_path, PYTHON_KEYRING_BACKEND=(
        "sites.common.cryptfile_keyring.EncryptedFileKeyring"))
    proc = subprocess.Popen([sys.executable, "-c",
                             "from sites.common import keychain; keychain.get_secret('s', 'k')"],
                            env=env, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, stderr = proc.communicate(timeout=60)  # stdin stays open until here
    assert proc.returncode != 0
    assert "no passphrase for the encrypted keyring" in stderr


@pytest.mark.parametrize("problem", ["group-readable", "symlink", "empty", "missing",
                                     "fifo", "not-utf8"])
def test_an_unsafe_passfile_is_refused_naming_it(tmp_path, problem):
    target = passfile(tmp_path / "pass")
    named = target
    if problem == "group-readable":
        target.chmod(0o640)
    elif problem == "symlink":
        named = tmp_path / "link"
        named.symlink_to(target)
    elif problem == "empty":
        target.write_text("\n")
    elif problem == "fifo":  # a planted FIFO must not hang the site at start
        named = tmp_path / "fifo"
        os.mkfifo(named, 0o600)
    elif problem == "not-utf8":
        target.write_bytes(b"secret-\xe9-passphrase\n")
    else:
        named = tmp_path / "absent"
    with pytest.raises(cryptfile_keyring.PassphraseUnavailable) as info:
        cryptfile_keyring.read_passphrase(named)
    assert str(named) in str(info.value)
    if problem == "group-readable":
        assert "chmod 600" in str(info.value)
    if problem == "not-utf8":
        assert "xe9" not in str(info.value) and "position" not in str(info.value)


def test_a_systemd_credential_others_can_read_is_refused(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    cred = passfile(creds / cryptfile_keyring.CREDENTIAL_NAME)
    cred.chmod(0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cryptfile_keyring.passphrase_source() == cred
    with pytest.raises(cryptfile_keyring.PassphraseUnavailable, match="readable by others"):
        cryptfile_keyring.read_passphrase()
    cred.chmod(0o400)  # what systemd writes
    assert cryptfile_keyring.read_passphrase() == "correct horse battery staple"


def test_the_memory_backend_is_refused_unless_selected_from_code(tmp_path):
    env = clean_env(tmp_path, PYTHON_KEYRING_BACKEND=(
        "sites.common.keyring_backends.MemoryKeyring"))
    ran = medsyft("site", "init", "clinic-mem", "--dir", str(tmp_path / "s"), env=env)
    assert ran.returncode != 0
    assert "forgets every secret" in ran.stderr + ran.stdout
    assert not (tmp_path / "s").exists()


def test_site_init_and_up_refuse_a_keyring_the_operator_did_not_allow(tmp_path, selection):
    from sites.operator import lifecycle

    keychain.reset_selection()
    keychain.use_backend(FolderKeyring(tmp_path / "kr"))
    with pytest.raises(keychain.KeyringRefused, match="FolderKeyring is refused"):
        lifecycle.init_site("clinic-r", tmp_path / "r")
    assert not (tmp_path / "r").exists()
