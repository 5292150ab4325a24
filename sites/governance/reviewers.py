"""Reviewer accounts: the named people who approve, deny and override at this site.

Each reviewer has an account of their own in the governance database: an email (the
identity every decision records), a display name, and a password stored only as an
Argon2id hash (argon2-cffi). The data owner creates accounts on the site machine
(`medsyft site add-reviewer`); the first password is generated, returned once and
never stored. The four-eyes rule counts accounts, never typed names: two approvals
need two accounts, and an email or a name is never on two accounts.

Logins are checked here for the web console and the CLI alike: after
`MAX_FAILURES` wrong passwords in a row the account is locked for `LOCK_SECONDS`;
every failure, lock and success is audited. A researcher's email can never be a
reviewer's (the researcher registry is checked both ways), so a researcher cannot
log in to the console.

Never store or log a password here, and never say which of email and password was
wrong.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from policies.contract.errors import MedsyftError
from sites.governance import audit
from sites.governance.registry import normalise_email
from sites.governance.store import Governance

#: Wrong passwords in a row before the account is locked.
MAX_FAILURES = 5
#: How long a locked account stays locked.
LOCK_SECONDS = 15 * 60
#: The length of generated passwords (URL-safe characters).
PASSWORD_BYTES = 18

_HASHER = PasswordHasher()  # Argon2id with argon2-cffi's RFC 9106 low-memory profile
#: A hash to verify against when the email is unknown: the answer takes as long either way.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(PASSWORD_BYTES))



class ReviewerError(MedsyftError, ValueError):
    """An account change that cannot be made; the message names the account."""


class LoginRefused(MedsyftError, PermissionError):
    """Wrong email or password, a locked or disabled account (the message says which of
    the last two, never which of the first)."""


@dataclass(frozen=True)
class Reviewer:
    """An authenticated (or listed) reviewer account."""

    email: str
    name: str
    created_at: float
    locked_until: float = 0.0
    disabled: bool = False
    last_login: float | None = None
    #: A tag of the stored password hash: it changes when the password is reset, so a web
    #: session opened with the old password ends (the reset may be in another process).
    credential: str = field(default="", repr=False, compare=False)

    @property
    def locked(self) -> bool:
        return self.locked_until > time.time()

    def listed_in(self, allowed: list[str]) -> bool:
        """Whether a policy's `reviewers` list names this account (by email or name)."""
        keys = {normalise_email(a) for a in allowed}
        return self.email in keys or _name_key(self.name) in keys


def _name_key(name: str) -> str:
    return " ".join(name.split()).lower()


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


class Reviewers:
    """The reviewer accounts of one site."""

    def __init__(self, gov: Governance) -> None:
        self.gov = gov  # the `reviewers` table is part of the governance schema

    @staticmethod
    def _row(r) -> Reviewer:  # noqa: ANN001 - a database.Rec
        return Reviewer(email=r["email"], name=r["name"], created_at=r["created_at"],
                        locked_until=r["locked_until"], disabled=bool(r["disabled"]),
                        last_login=r["last_login"], credential=_tag(r["password_hash"]))

    def get(self, email: str) -> Reviewer | None:
        with self.gov._connect(immediate=False) as db:
            r = db.execute("SELECT * FROM reviewers WHERE email = ?",
                           (normalise_email(email),)).fetchone()
        return self._row(r) if r else None

    def all(self) -> list[Reviewer]:
        with self.gov._connect(immediate=False) as db:
            rows = db.execute("SELECT * FROM reviewers ORDER BY email").fetchall()
        return [self._row(r) for r in rows]

    def add(self, email: str, name: str, *, actor: str) -> tuple[Reviewer, str]:
        """Create an account; returns it and its first password (shown once, never stored).

        Raises:
            ReviewerError: a malformed email, an empty name, an email or name already on an
                account, or an email the site registered as a researcher's.
        """
        email = normalise_email(email)
        if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
            raise ReviewerError(f"{email!r}: not an email address")
        name = " ".join(name.split())
        if not name or len(name) > 120:
            raise ReviewerError("a reviewer needs a name (1 to 120 characters)")
        password = generate_password()
        now = time.time()
        with self.gov._connect() as db:
            if db.execute("SELECT 1 FROM researchers WHERE email = ?", (email,)).fetchone():
                raise ReviewerError(f"{email}: this is a researcher's account on this site; a "
                                    "researcher cannot review")
            clash = db.execute("SELECT email, name FROM reviewers WHERE email = ? OR "
                               "name_key = ?", (email, _name_key(name))).fetchone()
            if clash:
                raise ReviewerError(f"{email}: the site already has a reviewer with this "
                                    f"email or name ({clash['email']}, {clash['name']}); one "
                                    "person, one account")
            db.execute("INSERT INTO reviewers (email, name, name_key, password_hash, "
                       "created_at, created_by) VALUES (?,?,?,?,?,?)",
                       (email, name, _name_key(name), _HASHER.hash(password), now, actor))
            audit.append(db, actor, "reviewer.added", email, name=name)
        return Reviewer(email=email, name=name, created_at=now), password

    def reset_password(self, email: str, *, actor: str) -> str:
        """A new generated password (shown once); clears a lock."""
        email = normalise_email(email)
        password = generate_password()
        with self.gov._connect() as db:
            done = db.execute("UPDATE reviewers SET password_hash = ?, failures = 0, "
                              "locked_until = 0 WHERE email = ?",
                              (_HASHER.hash(password), email)).rowcount
            if not done:
                raise ReviewerError(f"{email}: no reviewer with this email on this site")
            audit.append(db, actor, "reviewer.password_reset", email)
        return password

    def set_disabled(self, email: str, disabled: bool, *, actor: str) -> None:
        email = normalise_email(email)
        with self.gov._connect() as db:
            if not db.execute("UPDATE reviewers SET disabled = ? WHERE email = ?",
                              (int(disabled), email)).rowcount:
                raise ReviewerError(f"{email}: no reviewer with this email on this site")
            audit.append(db, actor, "reviewer.disabled" if disabled else "reviewer.enabled",
                         email)

    def authenticate(self, email: str, password: str, *, source: str) -> Reviewer:
        """The account if the password is its own; audited either way.

        Args:
            email: the account's email (any case).
            password: what the person typed.
            source: where the attempt came from (`web 127.0.0.1`, `cli`), for the audit.

        Raises:
            LoginRefused: unknown email or wrong password (one message for both), a locked
                account (refused even with the right password, and only then said to be
                locked) or a disabled one (said only to the right password).
        """
        email = normalise_email(email)
        now = time.time()
        refusal: str | None = None
        # the refusal is raised after the transaction commits: the failure count, the lock
        # and the audit entries must survive it
        with self.gov._connect() as db:
            r = db.execute("SELECT * FROM reviewers WHERE email = ?", (email,)).fetchone()
            if r is None:
                try:
                    _HASHER.verify(_DUMMY_HASH, password)
                except (VerificationError, InvalidHashError):
                    pass
                audit.append(db, "console", "reviewer.login_failed", email, source=source,
                             reason="unknown account")
                refusal = "wrong email or password"
            elif r["disabled"]:
                # the hash is checked (same cost as any login) and only its owner learns
                # that the account is disabled: a guesser cannot tell it from an unknown one
                right = _matches(r["password_hash"], password)
                audit.append(db, "console", "reviewer.login_failed", email, source=source,
                             reason="disabled")
                refusal = ("this reviewer account is disabled" if right
                           else "wrong email or password")
            elif r["locked_until"] > now:
                # same cost; never unlocks; only the owner (the right password) learns of
                # the lock, which would otherwise tell a guesser that the account exists
                right = _matches(r["password_hash"], password)
                audit.append(db, "console", "reviewer.login_failed", email, source=source,
                             reason="locked")
                refusal = (_locked_message(r["locked_until"] - now) if right
                           else "wrong email or password")
            elif not _matches(r["password_hash"], password):
                failures = r["failures"] + 1
                locked = now + LOCK_SECONDS if failures >= MAX_FAILURES else 0.0
                db.execute("UPDATE reviewers SET failures = ?, locked_until = ? WHERE "
                           "email = ?", (0 if locked else failures, locked, email))
                audit.append(db, "console", "reviewer.login_failed", email, source=source,
                             reason="wrong password", failures=failures)
                refusal = "wrong email or password"
                if locked:
                    audit.append(db, "console", "reviewer.locked", email, source=source,
                                 seconds=LOCK_SECONDS)
            else:
                new_hash = (_HASHER.hash(password)
                            if _HASHER.check_needs_rehash(r["password_hash"])
                            else r["password_hash"])
                db.execute("UPDATE reviewers SET failures = 0, last_login = ?, "
                           "password_hash = ? WHERE email = ?", (now, new_hash, email))
                audit.append(db, "console", "reviewer.login", email, source=source)
        if refusal is not None:
            raise LoginRefused(refusal)
        return Reviewer(email=email, name=r["name"], created_at=r["created_at"],
                        last_login=now, credential=_tag(new_hash))


def _tag(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def _matches(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _locked_message(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return (f"too many wrong passwords: this account is locked for {minutes} more minute(s); "
            "the data owner can reset it (medsyft site reset-reviewer)")
