"""Shared CLI output: rich consoles on stdout/stderr, JSON for scripts, the error line.

Every CLI of the project prints through here. What comes from elsewhere (a plan, a
site's answer) goes through `esc` or `plain`: a `[/x]` in it would otherwise crash rich
or restyle the terminal. The one error boundary is the root
command (`sites.entrypoint`): a `MedsyftError` becomes `print_error`'s one red line
and exit 1, never a traceback. Nothing here prints secrets.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from policies.contract.errors import MedsyftError, printable

_width = None if sys.stdout.isatty() else shutil.get_terminal_size((140, 24)).columns
out = Console(highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)


def esc(value: object) -> str:
    """A value from elsewhere (a researcher's plan, a site's answer), safe to interpolate
    into console markup: control characters dropped, `[` escaped."""
    return escape(printable(str(value)))


def plain(value: object) -> Text:
    """A table cell from elsewhere, shown as text and never read as markup."""
    return Text(printable(str(value)))


def print_error(exc: MedsyftError) -> None:
    """One red line on stderr: the error's user-facing message (never read as markup: a
    site's or a researcher's words may be in it)."""
    err.print(f"[red]error:[/red] {esc(exc.message)}", markup=True, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

