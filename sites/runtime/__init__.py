"""The trusted runtime inside the syft server: one approved round from call to release.

`sites.runtime.execute_round` is the name every plan's syft function imports (the
template text is part of each plan's hash, so it must stay importable here).

Must never execute researcher code itself (that is the sandbox's) and never print.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # lazy: the process pool must not pull in torch
    if name in ("execute_round", "SITE_DIR_ENV"):
        from sites.runtime import rounds

        return getattr(rounds, name)
    raise AttributeError(name)
