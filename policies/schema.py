"""The site policy file (YAML, `version: 1`) as pydantic models.

Unknown keys are errors everywhere (`extra="forbid"`): a typo must never
silently weaken a policy. This is the walking-skeleton subset (access, ε cap,
rounds cap per dataset); the full rule set grows here.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Access(_Strict):
    researchers: list[str] = Field(
        default_factory=list,
        description="emails or glob patterns (e.g. '*@uni-example.org') allowed to submit plans")

    def allows(self, email: str) -> bool:
        return any(fnmatch.fnmatchcase(email.lower(), p.lower()) for p in self.researchers)


class Privacy(_Strict):
    epsilon_per_plan: float = Field(gt=0, le=100, description="cap on a plan's ε target")
    delta_max: float = Field(1e-5, gt=0, lt=1e-2, description="largest δ a plan may ask for")


class Training(_Strict):
    max_rounds: int = Field(ge=1, le=10_000)


class DatasetPolicy(_Strict):
    access: Access
    privacy: Privacy
    training: Training


class SitePolicy(_Strict):
    version: Literal[1]
    datasets: dict[str, DatasetPolicy] = Field(
        description="rules per published dataset name; '*' applies to datasets not listed")

    def for_dataset(self, name: str) -> DatasetPolicy | None:
        return self.datasets.get(name) or self.datasets.get("*")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, line and field."""


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line number of a field path in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(
                node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load_policy(path: str | Path) -> tuple[SitePolicy, str]:
    """The policy and its hash (sha256 of the file's bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise PolicyError(f"{path}{where}: not valid YAML: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    try:
        policy = SitePolicy.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(text, loc)
            field = ".".join(map(str, loc)) or "(top level)"
            lines.append(f"{path}{':' + str(line) if line else ''}: {field}: {err['msg']}")
        raise PolicyError("\n".join(lines)) from None
    return policy, hashlib.sha256(data).hexdigest()
