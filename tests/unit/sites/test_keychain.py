import keyring
import pytest
from keyring.backends import fail

from sites.common import keychain


def test_no_usable_backend_fails_with_instructions(monkeypatch):
    monkeypatch.setattr(keychain, "_explicit_backend", False)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keychain, "_configured_by_operator", lambda: False)
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(keychain.KeyringUnavailable, match="PYTHON_KEYRING_BACKEND"):
            keychain.get_secret("medsyft-site:x", "admin-password")
    finally:
        keyring.set_keyring(previous)


def test_plaintext_fallback_nobody_chose_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(keychain, "_explicit_backend", False)
    monkeypatch.setattr(keychain, "_configured_by_operator", lambda: False)
    previous = keyring.get_keyring()
    from keyrings.alt.file import PlaintextKeyring

    keyring.set_keyring(PlaintextKeyring())
    try:
        with pytest.raises(keychain.KeyringUnavailable):
            keychain.set_secret("medsyft-site:x", "admin-password", "s3cret")
    finally:
        keyring.set_keyring(previous)


def test_folder_keyring_keeps_secrets_private_to_its_file(tmp_path):
    backend = keychain.FolderKeyring(tmp_path)
    backend.set_password("svc", "user", "s3cret")
    assert backend.get_password("svc", "user") == "s3cret"
    assert (tmp_path / "keyring.json").stat().st_mode & 0o077 == 0
    backend.delete_password("svc", "user")
    assert backend.get_password("svc", "user") is None
