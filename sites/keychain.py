"""Secrets in the OS keyring: site signing keys, admin and researcher passwords.

Secrets never go to files, logs or exceptions. Where no usable keyring
backend exists we fail with instructions rather than fall back to plaintext.
The demo (and tests) may select a backend scoped to a folder explicitly with
`use_folder_keyring`, and says so.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import keyring
import keyring.errors
from keyring.backend import KeyringBackend

SITE_SERVICE = "medsyft-site:{name}"
RESEARCHER_SERVICE = "medsyft-researcher:{site}"

NO_BACKEND_HELP = (
    "No usable keyring backend: medsyft keeps passwords and signing keys only in a keyring. "
    "On a desktop, unlock the system keyring (Secret Service / macOS Keychain / Windows). "
    "On a headless server, install and configure a backend through keyring's own "
    "configuration, e.g. `pip install keyrings.alt` and set "
    "PYTHON_KEYRING_BACKEND=keyrings.alt.file.EncryptedKeyring (see `keyring --help`)."
)


class KeyringUnavailable(RuntimeError):
    pass


_explicit_backend = False
_WEAK_MODULES = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")


def _configured_by_operator() -> bool:
    """True when the operator chose a backend through keyring's own configuration."""
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    try:
        return keyring.core.load_config() is not None
    except Exception:  # a broken keyringrc is the operator's to fix; treat as unset
        return False


def _is_weak(backend: KeyringBackend) -> bool:
    children = getattr(backend, "backends", None)
    if children is not None:  # ChainerBackend: weak when every child is weak
        return all(_is_weak(b) for b in children)
    return type(backend).__module__.startswith(_WEAK_MODULES)


def _backend() -> KeyringBackend:
    """The active backend, refusing fallbacks nobody chose (fail, null, plaintext files)."""
    backend = keyring.get_keyring()
    if _explicit_backend or _configured_by_operator():
        return backend
    if _is_weak(backend):
        raise KeyringUnavailable(NO_BACKEND_HELP)
    return backend


def get_secret(service: str, key: str) -> str | None:
    try:
        return _backend().get_password(service, key)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"{NO_BACKEND_HELP} ({type(exc).__name__})") from None


def set_secret(service: str, key: str, value: str) -> None:
    try:
        _backend().set_password(service, key, value)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"{NO_BACKEND_HELP} ({type(exc).__name__})") from None


def delete_secret(service: str, key: str) -> None:
    try:
        _backend().delete_password(service, key)
    except keyring.errors.PasswordDeleteError:
        pass


def require_secret(service: str, key: str) -> str:
    value = get_secret(service, key)
    if value is None:
        raise KeyringUnavailable(f"no secret {key!r} for {service!r} in the keyring "
                                 f"({type(_backend()).__name__})")
    return value


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def use_folder_keyring(folder: Path) -> KeyringBackend:
    """Select a keyring backend whose store is a file in `folder` (demo/tests only).

    keyrings.alt's plaintext file backend: acceptable for throw-away demo
    hospitals on loopback, never for a real site.
    """
    from keyrings.alt.file import PlaintextKeyring

    folder.mkdir(parents=True, exist_ok=True)

    class FolderKeyring(PlaintextKeyring):
        @property
        def file_path(self) -> str:  # type: ignore[override]
            return str(folder / "demo-keyring.cfg")

    global _explicit_backend
    backend = FolderKeyring()
    keyring.set_keyring(backend)
    _explicit_backend = True
    return backend
