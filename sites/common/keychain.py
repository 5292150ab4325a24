"""Secrets in a keyring: site signing keys, admin and researcher passwords.

Which backend: one selected from code (`use_backend`: tests, the demo), else the one
configured through keyring's own configuration (PYTHON_KEYRING_BACKEND, keyringrc.cfg),
else medsyft's encrypted keyring file when its passphrase source is present (a systemd
credential or MEDSYFT_KEYRING_PASSFILE), else the best backend keyring recommends
(priority >= 1, so no low-priority backend is chained in). Whatever it is, the backend
must pass `keyring_policy.judge` before a secret is read or written; a plaintext one
only where `allow_plaintext_keyring` was called (the demo, `--allow-plaintext-keyring`).

Secrets never go to files, logs or exceptions.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import keyring
import keyring.core
import keyring.errors
from keyring.backend import KeyringBackend

from policies.contract.errors import MedsyftError
from sites.common import cryptfile_keyring
from sites.common.keyring_backends import FolderKeyring, MemoryKeyring
from sites.common.keyring_policy import BackendVerdict, judge

SITE_SERVICE = "medsyft-site:{name}"
RESEARCHER_SERVICE = "medsyft-researcher:{site}"

_CRED = cryptfile_keyring.CREDENTIAL_NAME
HEADLESS_STEPS = f"""\
On a headless server, keep the secrets in medsyft's encrypted keyring file (Argon2id +
AES-GCM), opened without a person by a passphrase only the site's user can read:

  as a systemd service (the passphrase sealed by systemd-creds, with the TPM2 where the
  server has one):
    head -c 32 /dev/urandom | base64 | sudo systemd-creds encrypt \\
        --name={_CRED} - /etc/credstore.encrypted/{_CRED}
    medsyft site service SITE_DIR > /etc/systemd/system/medsyft-SITE.service
  (the unit loads it with LoadCredentialEncrypted=; run admin commands in the same way:
   systemd-run --pipe --wait -p User=USER \\
       -p LoadCredentialEncrypted={_CRED}:/etc/credstore.encrypted/{_CRED} \\
       -E {cryptfile_keyring.FILE_ENV}=KEYRING_FILE medsyft site ...)

  or, without systemd, from a file:
    (umask 077; head -c 32 /dev/urandom | base64 > ~/.medsyft-keyring-pass)
    export {cryptfile_keyring.PASSFILE_ENV}=~/.medsyft-keyring-pass
    export {cryptfile_keyring.FILE_ENV}=/var/lib/medsyft/keyring.cfg   # optional

then `medsyft site doctor SITE_DIR` checks it. On a desktop, unlock the system keyring
(Secret Service, macOS Keychain, Windows Credential Locker) instead."""


class KeyringUnavailable(MedsyftError, RuntimeError):
    pass


class KeyringRefused(KeyringUnavailable):
    """The backend in use is not one medsyft keeps secrets in."""


_selected: KeyringBackend | None = None
_resolved: KeyringBackend | None = None
_plaintext_allowed = False


def configured_by_operator() -> bool:
    """True when the operator chose a backend through keyring's own configuration."""
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    try:
        return keyring.core.load_config() is not None
    except Exception:  # a broken keyringrc is the operator's to fix; treat as unset
        return False


def active_backend() -> KeyringBackend:
    """The backend secrets would go to (see the module docstring), not yet judged."""
    global _resolved
    if _selected is not None:
        return _selected
    if _resolved is None:
        if configured_by_operator():
            _resolved = keyring.get_keyring()
        elif cryptfile_keyring.passphrase_source() is not None:
            _resolved = cryptfile_keyring.EncryptedFileKeyring()
        else:
            keyring.core.init_backend(limit=keyring.core.recommended)
            _resolved = keyring.get_keyring()
    return _resolved


def allow_plaintext_keyring(allowed: bool = True) -> None:
    """Let a plaintext backend hold secrets in this process (the demo; never a real site)."""
    global _plaintext_allowed
    _plaintext_allowed = allowed


def plaintext_allowed() -> bool:
    return _plaintext_allowed


def refusal_message(verdict: BackendVerdict) -> str:
    chosen = "" if _selected is not None or configured_by_operator() else (
        "no keyring backend is configured, and the one keyring picks by itself, ")
    return (f"{chosen}keyring backend {verdict.backend} is refused: {verdict.reason}.\n"
            + HEADLESS_STEPS)


def check_backend() -> BackendVerdict:
    """The verdict on the active backend; raises `KeyringRefused` naming the backend and
    the fix when it is refused, and `KeyringUnavailable` when it cannot be opened."""
    backend = active_backend()
    verdict = judge(backend)
    if isinstance(backend, MemoryKeyring) and backend is not _selected:
        # configured by PYTHON_KEYRING_BACKEND or keyringrc: secrets would vanish at exit
        verdict = BackendVerdict(backend=verdict.backend, accepted=False, plaintext=False,
                                 reason="the in-memory backend forgets every secret when the "
                                        "process exits (tests select it from code only)")
    if not verdict.accepted and not (verdict.plaintext and _plaintext_allowed):
        raise KeyringRefused(refusal_message(verdict))
    if isinstance(backend, cryptfile_keyring.EncryptedFileKeyring):
        try:
            backend.check()
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailable(str(exc)) from None
    return verdict


def _backend() -> KeyringBackend:
    check_backend()
    return active_backend()


def _failed(exc: keyring.errors.KeyringError) -> KeyringUnavailable:
    own = (cryptfile_keyring.PassphraseUnavailable, cryptfile_keyring.WrongPassphrase,
           cryptfile_keyring.DamagedKeyring)
    if isinstance(exc, own):
        return KeyringUnavailable(str(exc))
    return KeyringUnavailable(f"the keyring failed ({type(exc).__name__}).\n{HEADLESS_STEPS}")


def get_secret(service: str, key: str) -> str | None:
    try:
        return _backend().get_password(service, key)
    except keyring.errors.KeyringError as exc:
        raise _failed(exc) from None


def set_secret(service: str, key: str, value: str) -> None:
    try:
        _backend().set_password(service, key, value)
    except keyring.errors.KeyringError as exc:
        raise _failed(exc) from None


def delete_secret(service: str, key: str) -> None:
    try:
        _backend().delete_password(service, key)
    except keyring.errors.PasswordDeleteError:
        pass
    except keyring.errors.KeyringError as exc:
        raise _failed(exc) from None


def require_secret(service: str, key: str) -> str:
    value = get_secret(service, key)
    if value is None:
        raise KeyringUnavailable(f"no secret {key!r} for {service!r} in the keyring "
                                 f"({type(active_backend()).__name__})")
    return value


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def use_backend(backend: KeyringBackend) -> None:
    """Select a backend for this process from code (tests: in memory; the demo: a folder
    file). It is judged like any other."""
    global _selected
    keyring.set_keyring(backend)
    _selected = backend


def use_folder_keyring(folder: Path) -> KeyringBackend:
    """Select a plaintext `FolderKeyring` in `folder` and allow it (the demo only)."""
    backend = FolderKeyring(folder)
    use_backend(backend)
    allow_plaintext_keyring()
    return backend


def reset_selection() -> None:
    """Forget what was selected or resolved (tests that change the environment)."""
    global _selected, _resolved, _plaintext_allowed
    _selected = _resolved = None
    _plaintext_allowed = False
