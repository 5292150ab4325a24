"""The project's error root: every error medsyft raises on purpose derives from it.

`MedsyftError` carries a message written for the person who will read it (a data
steward, hospital IT or a researcher) and whether trying again may help. The CLI's
one error boundary (the root command in `sites.entrypoint`) prints the message of any
`MedsyftError` as one line and exits 1; anything else is a bug and keeps its
traceback. A message must never hold private data: whoever catches one may show it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import ValidationError

if TYPE_CHECKING:
    from policies.contract.wire import FailureCode


class MedsyftError(Exception):
    """An error whose message is safe and useful to show as it is.

    Args:
        message: one line for the user: what went wrong and, where it helps, what to do.
        retry: whether the same action may succeed later unchanged (a busy site, a
            timeout); defaults to the class's `retry`.
    """

    retry: ClassVar[bool] = False

    def __init__(self, message: str = "", *, retry: bool | None = None) -> None:
        super().__init__(message)
        if retry is not None:
            self.retry = retry  # type: ignore[misc]

    @property
    def message(self) -> str:
        """The user-facing message (the same as `str(error)`)."""
        return str(self)


class Refused(MedsyftError, ValueError):
    """The site will not do what was asked (a round, a model, a request); the message
    says why and is safe for the researcher to read.

    Args:
        message: why, for the researcher.
        code: the wire failure code a refused round is reported under (`None` where the
            refusal is not about a round, e.g. a model the review cannot build).
    """

    def __init__(self, message: str = "", *, code: FailureCode | None = None) -> None:
        super().__init__(message, retry=code.retry if code is not None else False)
        self.code = code



def error_lines(exc: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, message) pairs, without input values (an input
    may be a secret or private data)."""
    return [(".".join(map(str, e["loc"])) or "(top level)", e["msg"])
            for e in exc.errors(include_input=False, include_url=False)]


def format_errors(exc: ValidationError) -> str:
    """pydantic's errors on one line: `field.path: message; ...`."""
    return "; ".join(f"{field}: {msg}" for field, msg in error_lines(exc))


def printable(text: str, limit: int = 2000) -> str:
    """`text` without control characters (no terminal escapes, no line rewriting), at most
    `limit` characters; for words that came from the other side of the wire."""
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in text)
