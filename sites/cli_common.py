"""Shared CLI plumbing: one error path, JSON output, rich console on stderr/stdout.

Known errors become one red line and exit 1; a traceback is never shown for
them. Nothing here prints secrets.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

_width = None if sys.stdout.isatty() else shutil.get_terminal_size((140, 24)).columns
out = Console(highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)

F = TypeVar("F", bound=Callable[..., Any])


def known_errors() -> tuple[type[BaseException], ...]:
    from datasets.volume import DataError
    from policies.schema import PolicyError
    from researcher.plan import PlanFileError
    from sites.config import SiteConfigError
    from sites.keychain import KeyringUnavailable

    errors: list[type[BaseException]] = [PolicyError, PlanFileError, SiteConfigError,
                                         KeyringUnavailable, DataError]
    for mod, name in (("sites.lifecycle", "SiteError"), ("sites.admin", "AdminError"),
                      ("sites.console", "ConsoleError"), ("sites.syft_client", "LoginFailed"),
                      ("researcher.federation", "FederationError")):
        if mod in sys.modules:
            errors.append(getattr(sys.modules[mod], name))
    return tuple(errors)


def friendly(fn: F) -> F:
    """Turn the project's known errors into `error: ...` and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if isinstance(exc, known_errors()):
                err.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
                raise typer.Exit(1) from None
            raise

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def setup_keyring() -> None:
    """Honour keyring's own configuration; nothing else is chosen silently."""
    # keyring reads PYTHON_KEYRING_BACKEND / keyringrc.cfg itself; sites.keychain refuses
    # unconfigured fallbacks. Nothing to do here but keep one place to change it.
    return None
