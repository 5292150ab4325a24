"""Two keyring backends medsyft never picks by itself: a plaintext folder file for the
demo hospitals and an in-memory one for tests.

Both have priority 0, so keyring's own discovery never chains them in, and the
plaintext one declares the scheme keyring's plaintext backends use ("no encyption",
sic), so `keyring_policy` refuses it unless the demo says `--allow-plaintext-keyring`.
Must never be the backend of a real site.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring.errors
from keyring.backend import KeyringBackend

from sites.common.locked_file import locked, replace_atomically

PLAINTEXT_SCHEME = "no encyption"  # sic: the spelling of keyrings.alt and keyrings.cryptfile


class FolderKeyring(KeyringBackend):
    """A plaintext keyring file in one folder: the demo hospitals only.

    Select it with PYTHON_KEYRING_BACKEND=sites.common.keyring_backends.FolderKeyring and
    MEDSYFT_KEYRING_DIR=FOLDER plus `--allow-plaintext-keyring`, or from code with
    `keychain.use_folder_keyring`. The file is protected by its permissions only.
    """

    priority = 0
    scheme = PLAINTEXT_SCHEME

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__()
        folder = folder or Path(os.environ.get("MEDSYFT_KEYRING_DIR", ".medsyft-keyring"))
        self.file = Path(folder).resolve() / "keyring.json"

    def __repr__(self) -> str:
        return f"<FolderKeyring (plaintext) at {self.file}>"

    def _load(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, data: dict) -> None:
        replace_atomically(self.file, json.dumps(data).encode())

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with locked(self.file):
            data = self._load()
            data.setdefault(service, {})[username] = password
            self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        with locked(self.file):
            data = self._load()
            if username not in data.get(service, {}):
                raise keyring.errors.PasswordDeleteError(username)
            del data[service][username]
            self._save(data)


class MemoryKeyring(KeyringBackend):
    """Secrets in this process's memory, gone when it exits: tests only."""

    priority = 0

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.store.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError(username)
