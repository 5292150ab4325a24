"""Reviewer accounts: Argon2id hashes, one person one account, lock-out, audit, and no
researcher among them."""

from __future__ import annotations

import pytest

from sites.governance import reviewers as accounts
from sites.governance.registry import Registry, RegistryError
from sites.governance.reviewers import LoginRefused, ReviewerError, Reviewers


@pytest.fixture()
def gov(open_governance):
    return open_governance()  # on SQLite and on a real PostgreSQL server


def test_first_password_works_and_only_a_strong_hash_is_stored(gov):
    r, password = Reviewers(gov).add("Ada@Hospital.test", "Ada Byron", actor="owner")
    assert r.email == "ada@hospital.test" and len(password) >= 20
    with gov._connect(immediate=False) as db:
        row = db.execute("SELECT password_hash FROM reviewers").fetchone()[0]
        dumped = repr([list(r) for t in ("reviewers", "audit")
                       for r in db.execute(f"SELECT * FROM {t}").fetchall()])
    assert row.startswith("$argon2id$") and password not in row
    assert password not in dumped
    if gov.path is not None:  # SQLite: nowhere in the file either
        assert password not in gov.path.read_bytes().decode("latin-1")
    who = Reviewers(gov).authenticate("ADA@hospital.test", password, source="test")
    assert who.email == "ada@hospital.test" and who.name == "Ada Byron"
    events = [e["event"] for e in gov.audit_entries()]
    assert events == ["reviewer.added", "reviewer.login"]
    assert all(password not in str(e) for e in gov.audit_entries())


def test_one_person_one_account(gov):
    rv = Reviewers(gov)
    rv.add("ada@h.test", "Ada Byron", actor="owner")
    with pytest.raises(ReviewerError, match="one person, one account"):
        rv.add("ADA@h.test", "Someone Else", actor="owner")
    with pytest.raises(ReviewerError, match="one person, one account"):
        rv.add("ada.byron@h.test", "ada  BYRON", actor="owner")  # the same name, respelled
    with pytest.raises(ReviewerError, match="not an email"):
        rv.add("ada", "Ada", actor="owner")


def test_a_researcher_can_never_be_a_reviewer_nor_the_reverse(gov):
    Registry(gov).add(user_id="u1", verify_key="k1", email="res@lab.test", name="R",
                      institution="Lab", actor="owner")
    with pytest.raises(ReviewerError, match="researcher"):
        Reviewers(gov).add("res@lab.test", "R as reviewer", actor="owner")
    Reviewers(gov).add("dpo@h.test", "DPO", actor="owner")
    with pytest.raises(RegistryError, match="reviewer"):
        Registry(gov).add(user_id="u2", verify_key="k2", email="DPO@h.test", name="D",
                          institution="", actor="owner")


def test_unknown_email_and_wrong_password_read_the_same(gov):
    rv = Reviewers(gov)
    rv.add("ada@h.test", "Ada", actor="owner")
    with pytest.raises(LoginRefused) as unknown:
        rv.authenticate("nobody@h.test", "x", source="test")
    with pytest.raises(LoginRefused) as wrong:
        rv.authenticate("ada@h.test", "x", source="test")
    assert str(unknown.value) == str(wrong.value) == "wrong email or password"


def test_lock_out_after_repeated_failures_holds_even_for_the_right_password(gov):
    rv = Reviewers(gov)
    _, password = rv.add("ada@h.test", "Ada", actor="owner")
    for _ in range(accounts.MAX_FAILURES - 1):
        with pytest.raises(LoginRefused, match="wrong"):
            rv.authenticate("ada@h.test", "guess", source="web 10.0.0.9")
    # the failure that locks it, and guesses after, read as for an unknown account (a
    # guesser must not learn from the lock that the account exists: red team, issue 16)
    for _ in range(2):
        with pytest.raises(LoginRefused) as guessed:
            rv.authenticate("ada@h.test", "guess", source="web 10.0.0.9")
        assert str(guessed.value) == "wrong email or password"
    with pytest.raises(LoginRefused, match="locked"):  # only the owner is told
        rv.authenticate("ada@h.test", password, source="web 10.0.0.9")
    events = [e["event"] for e in gov.audit_entries()]
    assert events.count("reviewer.login_failed") == accounts.MAX_FAILURES + 2
    assert events.count("reviewer.locked") == 1
    new = rv.reset_password("ada@h.test", actor="owner")  # the data owner lifts it
    with pytest.raises(LoginRefused):
        rv.authenticate("ada@h.test", password, source="test")  # the old one is gone
    assert rv.authenticate("ada@h.test", new, source="test").email == "ada@h.test"


def test_a_success_resets_the_failure_count(gov):
    rv = Reviewers(gov)
    _, password = rv.add("ada@h.test", "Ada", actor="owner")
    for _ in range(3):
        for _ in range(accounts.MAX_FAILURES - 1):
            with pytest.raises(LoginRefused, match="wrong"):
                rv.authenticate("ada@h.test", "guess", source="test")
        rv.authenticate("ada@h.test", password, source="test")


def test_disabled_account_cannot_log_in(gov):
    rv = Reviewers(gov)
    _, password = rv.add("ada@h.test", "Ada", actor="owner")
    rv.set_disabled("ada@h.test", True, actor="owner")
    with pytest.raises(LoginRefused, match="disabled"):
        rv.authenticate("ada@h.test", password, source="test")
    # a guesser without the password cannot tell a disabled account from an unknown one
    with pytest.raises(LoginRefused) as guessed:
        rv.authenticate("ada@h.test", "guess", source="test")
    with pytest.raises(LoginRefused) as unknown:
        rv.authenticate("nobody@h.test", "guess", source="test")
    assert str(guessed.value) == str(unknown.value) == "wrong email or password"


def test_policy_names_an_account_by_email_or_name(gov):
    r, _ = Reviewers(gov).add("ada@h.test", "Ada Byron", actor="owner")
    assert r.listed_in(["ada@h.test"]) and r.listed_in(["ada byron"])
    assert not r.listed_in(["ada", "byron@h.test"])
