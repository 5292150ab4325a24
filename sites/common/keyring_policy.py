"""Which keyring backends may hold a site's secrets: an allowlist, judged per class.

A backend is accepted when one of its classes (the class or a parent) is on the
allowlist and it does not declare keyring's plaintext scheme ("no encyption", sic: the
spelling of both PlaintextKeyring classes). A `ChainerBackend` is accepted only when
every backend it chains is; keyring builds one by default from every backend with a
priority above 0, which is how a plaintext file ends up holding a signing key.
Judging only: this module never reads or writes a secret.
"""

from __future__ import annotations

from keyring.backend import KeyringBackend
from keyring.backends.chainer import ChainerBackend
from pydantic import BaseModel, Field

from sites.common.keyring_backends import PLAINTEXT_SCHEME

ACCEPTED: dict[str, str] = {
    "keyring.backends.SecretService.Keyring": "the system Secret Service",
    "keyring.backends.libsecret.Keyring": "the system Secret Service (libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "KDE Wallet",
    "keyring.backends.macOS.Keyring": "the macOS Keychain",
    "keyring.backends.Windows.WinVaultKeyring": "the Windows Credential Locker",
    "sites.common.cryptfile_keyring.EncryptedFileKeyring":
        "medsyft's encrypted keyring file (Argon2id + AES-GCM)",
    "sites.common.keyring_backends.MemoryKeyring": "in memory (tests; gone at exit)",
}

_KNOWN_REFUSED: dict[str, str] = {
    "keyrings.alt.file.EncryptedKeyring":
        "PBKDF2-SHA1 with 1000 iterations and AES-CFB without a MAC; it prompts for its "
        "password, so it cannot open unattended",
    "keyrings.cryptfile.cryptfile.CryptFileKeyring":
        "the stock class prompts for its passphrase and rewrites its file unlocked; "
        "medsyft's EncryptedFileKeyring is the same format without either",
    "keyring.backends.fail.Keyring": "keyring found no backend",
    "keyring.backends.null.Keyring": "it keeps nothing",
}


class BackendVerdict(BaseModel):
    """What medsyft thinks of one keyring backend."""

    backend: str = Field(description="dotted class name of the backend")
    accepted: bool
    plaintext: bool = Field(description="secrets are stored in clear")
    description: str = Field("", description="what the backend is, when accepted")
    reason: str = Field("", description="why it is refused, when it is")


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def judge(backend: KeyringBackend) -> BackendVerdict:
    """Accept or refuse `backend` (see the module docstring)."""
    name = class_name(type(backend))
    if isinstance(backend, ChainerBackend):
        children = list(backend.backends)
        if not children:
            return BackendVerdict(backend=name, accepted=False, plaintext=False,
                                  reason="keyring found no backend to chain")
        verdicts = [judge(child) for child in children]
        refused = [v for v in verdicts if not v.accepted]
        if refused:
            why = "; ".join(f"{v.backend}: {v.reason}" for v in refused)
            return BackendVerdict(
                backend=name, accepted=False, plaintext=any(v.plaintext for v in refused),
                reason=f"keyring's default chain of every backend it found includes one "
                       f"medsyft refuses ({why})")
        return BackendVerdict(backend=name, accepted=True, plaintext=False,
                              description=" + ".join(v.description for v in verdicts))
    if getattr(backend, "scheme", None) == PLAINTEXT_SCHEME:
        return BackendVerdict(backend=name, accepted=False, plaintext=True,
                              reason="it stores secrets in clear in a file")
    for cls in type(backend).__mro__:
        if class_name(cls) in ACCEPTED:
            return BackendVerdict(backend=name, accepted=True, plaintext=False,
                                  description=ACCEPTED[class_name(cls)])
    for cls in type(backend).__mro__:
        if class_name(cls) in _KNOWN_REFUSED:
            return BackendVerdict(backend=name, accepted=False, plaintext=False,
                                  reason=_KNOWN_REFUSED[class_name(cls)])
    return BackendVerdict(backend=name, accepted=False, plaintext=False,
                          reason="not a backend medsyft knows to encrypt its secrets")
