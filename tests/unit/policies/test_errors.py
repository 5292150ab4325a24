"""One error root: every error medsyft raises on purpose is a MedsyftError, and the
`medsyft` command turns it into one line and exit status 1."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

from policies.contract.errors import MedsyftError, Refused, format_errors


def project_exceptions() -> list[type[BaseException]]:
    found = []
    for package in ("policies", "datasets", "sites", "researcher"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if ".examples" in info.name or info.name.endswith("__main__"):
                continue
            if ".migrations" in info.name:  # alembic scripts: run by alembic, not imported
                continue
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found.append(obj)
    return found


def test_every_exception_class_of_the_project_derives_from_the_root():
    classes = project_exceptions()
    assert len(classes) >= 15  # the walk found them (it would pass vacuously otherwise)
    assert [c.__qualname__ for c in classes if not issubclass(c, MedsyftError)] == []


def test_a_refusal_says_whether_a_retry_helps():
    from policies.contract.wire import FailureCode

    assert Refused("no", code=FailureCode.TIMEOUT).retry is True
    assert Refused("no", code=FailureCode.POLICY).retry is False
    assert Refused("no").retry is False and Refused("no").code is None


def test_the_command_prints_a_medsyft_error_as_one_line_and_exits_1():
    from sites.entrypoint import app

    @app.command("boom-known", hidden=True)
    def boom_known() -> None:
        raise Refused("the site says no\n(second line stays)")

    @app.command("boom-bug", hidden=True)
    def boom_bug() -> None:
        raise KeyError("a bug")

    try:
        known = CliRunner().invoke(app, ["boom-known"])
        assert known.exit_code == 1
        assert "error: the site says no" in known.output and "Traceback" not in known.output
        bug = CliRunner().invoke(app, ["boom-bug"])
        assert bug.exit_code == 1 and isinstance(bug.exception, KeyError)  # not swallowed
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands
                                      if c.name not in ("boom-known", "boom-bug")]


def test_validation_errors_name_the_field_and_never_the_value():
    from pydantic import BaseModel, ValidationError

    class Login(BaseModel):
        password: int

    with pytest.raises(ValidationError) as exc:
        Login(password="hunter2-secret")
    line = format_errors(exc.value)
    assert line.startswith("password:") and "hunter2" not in line



def test_an_error_from_elsewhere_prints_as_text_not_markup(capsys):
    """A site's or a researcher's words in an error: `[/x]` made rich raise past the error
    boundary, and escapes could rewrite the terminal (red-team finding)."""
    from policies.cli_output import print_error

    print_error(MedsyftError("site says [/bogus] [link=http://x]here[/link] \x1b[2K\x07"))
    text = capsys.readouterr().err
    assert "[/bogus]" in text and "[link=http://x]" in text
    assert "\x1b" not in text and "\x07" not in text
