"""The headless route: an encrypted keyring file that opens without a person.

`EncryptedFileKeyring` is keyrings.cryptfile's `CryptFileKeyring` (Argon2id key
derivation, AES-GCM per value with the service and key name as associated data) with
what a service needs and the stock class lacks:

- the passphrase comes from a systemd credential (`$CREDENTIALS_DIRECTORY/medsyft-keyring`,
  made with `systemd-creds encrypt --name=medsyft-keyring`) or from the file named by
  `MEDSYFT_KEYRING_PASSFILE` (mode 0600, owned by the user running the site); it never
  prompts and never reads stdin;
- every write holds a file lock and replaces the file atomically (the stock backend
  rewrites it in place: concurrent writers lose keys);
- a wrong passphrase is `WrongPassphrase` naming the file, not `ValueError: MAC check
  failed`.

The file lives at `MEDSYFT_KEYRING_FILE` (default: keyring's data folder). Must never
write a secret or the passphrase anywhere but the encrypted file, nor put one in an
error message.
"""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

import keyring.errors
from jaraco.classes import properties
from keyring.util import platform_
from keyrings.cryptfile.cryptfile import CryptFileKeyring
from keyrings.cryptfile.escape import escape as escape_for_ini
from keyrings.cryptfile.file_base import Keyring as FileKeyring

from policies.contract.errors import MedsyftError
from sites.common.locked_file import locked, replace_atomically

CREDENTIAL_NAME = "medsyft-keyring"
PASSFILE_ENV = "MEDSYFT_KEYRING_PASSFILE"
FILE_ENV = "MEDSYFT_KEYRING_FILE"
_REFERENCE = ("keyring-setting", "password reference", "password reference value")


class PassphraseUnavailable(MedsyftError, keyring.errors.InitError):
    """No passphrase source, or one that is not safe to read."""


class WrongPassphrase(MedsyftError, keyring.errors.KeyringLocked):
    """The passphrase does not open the keyring file."""


class DamagedKeyring(MedsyftError, keyring.errors.KeyringError):
    """The keyring file is not one this backend wrote, or an entry does not decrypt."""


def default_file() -> Path:
    named = os.environ.get(FILE_ENV)
    return Path(named) if named else Path(platform_.data_root()) / "medsyft-keyring.cfg"


def passphrase_source() -> Path | None:
    """Where the passphrase would come from: the systemd credential, else the passfile."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).exists():
        return Path(creds) / CREDENTIAL_NAME
    named = os.environ.get(PASSFILE_ENV)
    return Path(named) if named else None


def read_passphrase(source: Path | None = None) -> str:
    """The passphrase, read without following a symlink; a passfile must be a regular file
    owned by this user with no group or other permissions."""
    source = source or passphrase_source()
    if source is None:
        raise PassphraseUnavailable(
            f"no passphrase for the encrypted keyring: neither $CREDENTIALS_DIRECTORY/"
            f"{CREDENTIAL_NAME} (systemd LoadCredentialEncrypted=) nor {PASSFILE_ENV} is set")
    is_credential = source.name == CREDENTIAL_NAME and \
        str(source.parent) == os.environ.get("CREDENTIALS_DIRECTORY")
    try:  # O_NONBLOCK: a FIFO planted as the passfile must not hang the site
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PassphraseUnavailable(f"keyring passphrase file {source} does not exist") from None
    except OSError as exc:
        raise PassphraseUnavailable(f"keyring passphrase file {source} cannot be opened "
                                    f"({exc.strerror}; a symlink is refused)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PassphraseUnavailable(f"keyring passphrase file {source} is not a file")
        # systemd writes a credential owned by the service's user (or root), mode 0400
        owners = (os.geteuid(), 0) if is_credential else (os.geteuid(),)
        if st.st_uid not in owners:
            raise PassphraseUnavailable(
                f"keyring passphrase file {source} is owned by uid {st.st_uid}, not by the "
                f"user running the site (uid {os.geteuid()}): chown it")
        if st.st_mode & 0o077:
            raise PassphraseUnavailable(
                f"keyring passphrase file {source} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {source}")
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8", errors="strict").rstrip("\r\n")
    except UnicodeDecodeError:  # never the byte: it is part of the passphrase
        raise PassphraseUnavailable(f"keyring passphrase file {source} is not UTF-8 "
                                    "text") from None
    if not text.strip():
        raise PassphraseUnavailable(f"keyring passphrase file {source} is empty")
    return text


class EncryptedFileKeyring(CryptFileKeyring):
    """keyrings.cryptfile's Argon2id + AES-GCM file, unattended and safe for concurrent
    writers. Selected by medsyft when a passphrase source is present (or explicitly by
    PYTHON_KEYRING_BACKEND=sites.common.cryptfile_keyring.EncryptedFileKeyring); keyring's
    own discovery never chains it in (priority 0)."""

    @properties.classproperty
    @classmethod
    def priority(cls) -> float:
        return 0

    def __init__(self, file: Path | None = None, passphrase: str | None = None) -> None:
        super().__init__()
        self.file_path = str(Path(file or default_file()).resolve())
        self._keyring_key = passphrase
        self._opened = False

    def __repr__(self) -> str:
        return f"<EncryptedFileKeyring (Argon2id + AES-GCM) at {self.file_path}>"

    # -- the passphrase: never a prompt ------------------------------------------------
    @property
    def keyring_key(self) -> str:  # type: ignore[override]
        if self._keyring_key is None:
            self._keyring_key = read_passphrase()
        return self._keyring_key

    def _get_new_password(self) -> str:  # the stock class would prompt
        return self.keyring_key

    def _unlock(self) -> None:  # the stock class would prompt
        self._open()

    def check(self) -> None:
        """Open the file now (creating it when absent): raises on a missing or wrong
        passphrase, so a site fails at start-up rather than at its first secret."""
        with locked(Path(self.file_path)):
            self._open()

    def _open(self) -> None:
        if self._opened:
            return
        self.keyring_key  # noqa: B018 -- PassphraseUnavailable before touching the file
        config = self._read()
        section, option, value = _REFERENCE
        if not config.has_option(escape_for_ini(section), escape_for_ini(option)):
            if any(config.sections()):
                raise DamagedKeyring(f"{self.file_path} is not an encrypted medsyft keyring "
                                     "(no password reference)")
            FileKeyring.set_password(self, section, option, value)
            self._write_config_value(section, "scheme", self.scheme)
            self._write_config_value(section, "version", self.version)
        else:
            try:
                self._check_scheme(config)
            except (AttributeError, ValueError):
                raise DamagedKeyring(f"{self.file_path} uses another encryption scheme than "
                                     f"{self.scheme}") from None
            try:
                ref = FileKeyring.get_password(self, section, option)
            except ValueError:  # MAC check failed
                ref = None
            if ref != value:
                raise WrongPassphrase(f"keyring passphrase does not open {self.file_path}")
        self._opened = True

    # -- reads and writes ---------------------------------------------------------------
    def _read(self) -> configparser.RawConfigParser:
        config = configparser.RawConfigParser()
        try:
            with open(self.file_path, encoding="utf-8") as f:
                config.read_file(f)
        except FileNotFoundError:
            pass
        except (configparser.Error, UnicodeDecodeError):
            raise DamagedKeyring(f"{self.file_path} is not a keyring file") from None
        return config

    def _save(self, config: configparser.RawConfigParser) -> None:
        import io

        buf = io.StringIO()
        config.write(buf)
        replace_atomically(Path(self.file_path), buf.getvalue().encode("utf-8"))

    def _write_config_value(self, service: str, key: str, value: str) -> None:
        config = self._read()
        service, key = escape_for_ini(service), escape_for_ini(key)
        if not config.has_section(service):
            config.add_section(service)
        config.set(service, key, value)
        self._save(config)

    def get_password(self, service: str, username: str) -> str | None:
        with locked(Path(self.file_path)):
            self._open()
            try:
                return FileKeyring.get_password(self, service, username)
            except ValueError:
                raise DamagedKeyring(f"the entry {username!r} of {service!r} in "
                                     f"{self.file_path} does not decrypt (altered?)") from None

    def set_password(self, service: str, username: str, password: str) -> None:
        with locked(Path(self.file_path)):
            self._open()
            FileKeyring.set_password(self, service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        with locked(Path(self.file_path)):
            self._open()
            config = self._read()
            section, option = escape_for_ini(service), escape_for_ini(username)
            if not config.has_option(section, option):
                raise keyring.errors.PasswordDeleteError("no such secret")
            config.remove_option(section, option)
            self._save(config)

    def entries(self) -> list[tuple[str, str]]:
        """(service, key) of every secret held (names only), for backups and the doctor."""
        from keyrings.cryptfile.escape import unescape

        with locked(Path(self.file_path)):
            self._open()
            config = self._read()
        return [(unescape(s), unescape(k)) for s in config.sections()
                if unescape(s) != _REFERENCE[0] for k in config.options(s)]
