"""Shared CLI output: rich consoles on stdout/stderr, JSON for scripts, the error line.

Every CLI of the project prints through here. The one error boundary is the root
command (`sites.entrypoint`): a `MedsyftError` becomes `print_error`'s one red line
and exit 1, never a traceback. Nothing here prints secrets.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from rich.console import Console

from policies.contract.errors import MedsyftError

_width = None if sys.stdout.isatty() else shutil.get_terminal_size((140, 24)).columns
out = Console(highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)


def print_error(exc: MedsyftError) -> None:
    """One red line on stderr: the error's user-facing message."""
    err.print(f"[red]error:[/red] {exc.message}", markup=True, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

