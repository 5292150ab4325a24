"""The files of one run folder, defined once: what the runtime hands the training child
and what the child hands back.

A run folder holds `job.pt` (the `Job`: plan, start weights, DP parameters, device,
seed), `private.pt` (the private tensors, removed by the child once loaded),
`output.pt` (parameters only) and `status.json` (a `RunStatus`: ok, or one failure
category from `CATEGORIES`). Everything is loaded with `torch.load(weights_only=True)`
or as JSON, never unpickled.

Must never put a traceback, a value of the private data or anything the child printed
into `status.json`: its category is all that reaches the researcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.contract.wire import FailureCode

JOB_FILE, PRIVATE_FILE, OUTPUT_FILE, STATUS_FILE = ("job.pt", "private.pt", "output.pt",
                                                    "status.json")

#: The only error strings a researcher can ever receive from a run, with their code.
CATEGORIES: dict[str, tuple[str, FailureCode]] = {
    "model_load": ("model code failed to load", FailureCode.MODEL),
    "batchnorm": ("model uses BatchNorm, which mixes samples within a batch; use GroupNorm",
                  FailureCode.MODEL),
    "weights_mismatch": ("weights do not match the model", FailureCode.MODEL),
    "too_large": ("model has more parameters than the site's policy allows", FailureCode.MODEL),
    "forward": ("model forward raised", FailureCode.MODEL),
    "oom": ("out of memory", FailureCode.OUT_OF_MEMORY),
    "timeout": ("timed out", FailureCode.TIMEOUT),
    "release": ("release filter rejected the result", FailureCode.RELEASE),
    "internal": ("internal error", FailureCode.INTERNAL),
}
Category = Literal["model_load", "batchnorm", "weights_mismatch", "too_large", "forward",
                   "oom", "timeout", "release", "internal"]


class Job(BaseModel):
    """What the training child is told to do (`job.pt`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    plan_json: str
    weights: dict[str, torch.Tensor]
    sample_rate: float = Field(gt=0, le=1)
    noise_multiplier: float = Field(ge=0)
    steps: int = Field(ge=1)
    threads: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_parameters: int = Field(ge=1)
    seed: int

    def save(self, run_dir: Path) -> None:
        torch.save(self.model_dump(), run_dir / JOB_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> Job:
        return cls.model_validate(torch.load(run_dir / JOB_FILE, weights_only=True))


def save_private(run_dir: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.save({"x": x, "y": y}, run_dir / PRIVATE_FILE)


def take_private(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The private tensors; their file is removed as soon as they are loaded."""
    path = run_dir / PRIVATE_FILE
    private = torch.load(path, weights_only=True)
    path.unlink()
    return private["x"], private["y"]


class RunStatus(BaseModel):
    """How the child's run ended (`status.json`)."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    category: Category | None = None
    device: Literal["", "cpu", "cuda"] = ""
    train_seconds: float | None = None

    def save(self, run_dir: Path) -> None:
        (run_dir / STATUS_FILE).write_text(self.model_dump_json())

    @classmethod
    def load(cls, run_dir: Path) -> RunStatus:
        """The child's status; a missing or malformed file is an internal failure."""
        try:
            return cls.model_validate(json.loads((run_dir / STATUS_FILE).read_text()))
        except (OSError, ValueError, ValidationError):
            return cls(ok=False, category="internal")


def save_output(run_dir: Path, params: dict[str, torch.Tensor]) -> None:
    torch.save({"params": params}, run_dir / OUTPUT_FILE)


def load_output(run_dir: Path) -> object:
    """What the child wrote as its output (untrusted until the release filter passes it)."""
    return torch.load(run_dir / OUTPUT_FILE, weights_only=True)
