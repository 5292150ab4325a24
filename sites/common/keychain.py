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

from policies.contract.errors import MedsyftError

SITE_SERVICE = "medsyft-site:{name}"
RESEARCHER_SERVICE = "medsyft-researcher:{site}"

NO_BACKEND_HELP = (
    "No usable keyring backend: medsyft keeps passwords and signing keys only in a keyring. "
    "On a desktop, unlock the system keyring (Secret Service / macOS Keychain / Windows). "
    "On a headless server, install and configure a backend through keyring's own "
    "configuration, e.g. `pip install keyrings.alt` and set "
    "PYTHON_KEYRING_BACKEND=keyrings.alt.file.EncryptedKeyring (see `keyring --help`)."
)


class KeyringUnavailable(MedsyftError, RuntimeError):
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


class FolderKeyring(KeyringBackend):
    """A plaintext keyring file in one folder: demo hospitals and tests only.

    Select it through keyring's own configuration with
    PYTHON_KEYRING_BACKEND=sites.common.keychain.FolderKeyring and MEDSYFT_KEYRING_DIR=FOLDER,
    or from code with `use_folder_keyring`. Never for a real site: the file is
    only protected by its permissions.
    """

    priority = 0.1  # never chosen automatically

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__()
        folder = folder or Path(os.environ.get("MEDSYFT_KEYRING_DIR", ".medsyft-keyring"))
        self.file = Path(folder).resolve() / "keyring.json"

    def _load(self) -> dict:
        import json

        try:
            return json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, data: dict) -> None:
        import json

        self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.file)

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data.setdefault(service, {})[username] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if username not in data.get(service, {}):
            raise keyring.errors.PasswordDeleteError(username)
        del data[service][username]
        self._save(data)


def use_folder_keyring(folder: Path) -> KeyringBackend:
    """Select a `FolderKeyring` in `folder` for this process (demo/tests only)."""
    global _explicit_backend
    backend = FolderKeyring(folder)
    keyring.set_keyring(backend)
    _explicit_backend = True
    return backend


def use_backend(backend: KeyringBackend) -> None:
    """Select a backend explicitly (tests use an in-memory one)."""
    global _explicit_backend
    keyring.set_keyring(backend)
    _explicit_backend = True
