"""The site's own record of its researchers: who an account is, as the data owner said.

syft 0.9.5 lets a data scientist edit its own profile (email, name,
institution), so nothing that decides access may read it. `medsyft site
add-researcher` records each account here, keyed by the syft user id and the
account's verify key (the key that signs every call, which syft sets at login
and a researcher cannot change on a medsyft site): email, name, institution.
Review, the policy's access rules, the plan's `researcher` field, the ledger
and audit entries use this record. Only the data owner changes it
(`medsyft site update-researcher`), audited; an email change moves the
researcher's ledger and decisions with it in the same transaction, so a
budget never restarts under a new address.

Stored in the governance database (table `researchers`). Never holds passwords or keys other than
the public verify key.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from policies.contract.errors import MedsyftError
from sites.governance import audit
from sites.governance.store import Governance


class Researcher(BaseModel):
    """One researcher as the site knows them."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    verify_key: str
    email: str
    name: str
    institution: str = ""
    created_at: float
    updated_at: float


class RegistryError(MedsyftError, ValueError):
    """A registry change that cannot be made; the message names the account."""


def normalise_email(email: str) -> str:
    """The form emails are stored and compared in (trimmed, lower case)."""
    return email.strip().lower()


class Registry:
    def __init__(self, gov: Governance) -> None:
        self.gov = gov  # the `researchers` table is part of the governance schema

    def _one(self, column: str, value: str) -> Researcher | None:
        with self.gov._connect(immediate=False) as db:
            row = db.execute(f"SELECT * FROM researchers WHERE {column} = ?",  # noqa: S608
                             (value,)).fetchone()
        return Researcher(**dict(row)) if row else None

    def by_verify_key(self, verify_key: str) -> Researcher | None:
        """The researcher whose syft account signs with this key, or None."""
        return self._one("verify_key", str(verify_key))

    def by_email(self, email: str) -> Researcher | None:
        """The researcher with this email (any case), or None."""
        return self._one("email", normalise_email(email))

    def all(self) -> list[Researcher]:
        """Every registered researcher, by email."""
        with self.gov._connect(immediate=False) as db:
            rows = db.execute("SELECT * FROM researchers ORDER BY email").fetchall()
        return [Researcher(**dict(r)) for r in rows]

    def add(self, *, user_id: str, verify_key: str, email: str, name: str, institution: str,
            actor: str) -> Researcher:
        """Register a researcher the data owner created an account for; audited.

        Args:
            user_id: syft's user id of the account.
            verify_key: the account's signing key (how the site knows who calls).
            email: the account email (stored normalised).
            name: the person's name.
            institution: their institution, as the access rules read it.
            actor: who registers them.

        Returns:
            The new record.

        Raises:
            RegistryError: the email or the key is registered already.
        """
        email = normalise_email(email)
        now = time.time()
        with self.gov._connect() as db:
            clash = db.execute("SELECT email FROM researchers WHERE user_id = ? OR "
                               "verify_key = ? OR email = ?",
                               (user_id, str(verify_key), email)).fetchone()
            if clash:
                raise RegistryError(f"{email}: the site already has a record of this account "
                                    f"({clash['email']})")
            if db.execute("SELECT 1 FROM reviewers WHERE email = ?", (email,)).fetchone():
                raise RegistryError(f"{email}: this is a reviewer's account on this site; a "
                                    "reviewer cannot be a researcher here")
            db.execute("INSERT INTO researchers VALUES (?,?,?,?,?,?,?)",
                       (user_id, str(verify_key), email, name, institution, now, now))
            audit.append(db, actor, "researcher.registered", email, user_id=user_id,
                              verify_key=str(verify_key), name=name, institution=institution)
        return Researcher(user_id=user_id, verify_key=str(verify_key), email=email, name=name,
                          institution=institution, created_at=now, updated_at=now)

    def update(self, email: str, *, actor: str, new_email: str | None = None,
               name: str | None = None, institution: str | None = None) -> Researcher:
        """Change a record (data owner only); an email change moves the ledger with it."""
        current = self.by_email(email)
        if current is None:
            raise RegistryError(f"{email}: no researcher with this email on this site")
        changes: dict[str, tuple[str, str]] = {}
        target = normalise_email(new_email) if new_email else current.email
        if target != current.email:
            changes["email"] = (current.email, target)
        if name is not None and name != current.name:
            changes["name"] = (current.name, name)
        if institution is not None and institution != current.institution:
            changes["institution"] = (current.institution, institution)
        if not changes:
            return current
        with self.gov._connect() as db:
            if "email" in changes and db.execute("SELECT 1 FROM researchers WHERE email = ?",
                                                 (target,)).fetchone():
                raise RegistryError(f"{target}: another researcher already has this email")
            db.execute("UPDATE researchers SET email = ?, name = ?, institution = ?, "
                       "updated_at = ? WHERE user_id = ?",
                       (target, changes.get("name", (0, current.name))[1],
                        changes.get("institution", (0, current.institution))[1], time.time(),
                        current.user_id))
            moved = 0
            if "email" in changes:
                for table in ("runs", "decisions"):
                    moved += db.execute(f"UPDATE {table} SET researcher = ? "  # noqa: S608
                                        "WHERE researcher = ?",
                                        (target, current.email)).rowcount
            audit.append(db, actor, "researcher.updated", target, user_id=current.user_id,
                              changes={k: {"from": a, "to": b} for k, (a, b) in changes.items()},
                              ledger_rows_moved=moved)
        updated = self.by_email(target)
        assert updated is not None
        return updated
