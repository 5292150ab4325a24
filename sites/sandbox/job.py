"""The four in-memory files of one run, defined once: what the runtime hands the training
child and what the child hands back.

A run is four memory files (`os.memfd_create`, never on disk) passed to the child as
file descriptors over its control socket: the `Job` (plan, validated training graph,
start weights, DP parameters, device, seed), the private tensors, the output
(parameters only) and the `RunStatus` (ok, or one failure category from
`CATEGORIES`). Everything is loaded with `torch.load(weights_only=True)` or as JSON,
never unpickled.

Must never put a traceback, a value of the private data or anything the child printed
into `status.json`: its category is all that reaches the researcher.
"""

from __future__ import annotations

import json
import os
from typing import BinaryIO, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.contract.wire import FailureCode

#: the order of the run's file descriptors on the control socket
RUN_FILES = ("job", "private", "output", "status")
#: largest status the runtime reads back
MAX_STATUS = 4096

#: The only error strings a researcher can ever receive from a run, with their code.
CATEGORIES: dict[str, tuple[str, FailureCode]] = {
    "model_load": ("model code failed to load", FailureCode.MODEL),
    "graph": ("the model's training graph was refused", FailureCode.MODEL),
    "batchnorm": ("model uses BatchNorm, which mixes samples within a batch; use GroupNorm",
                  FailureCode.MODEL),
    "weights_mismatch": ("weights do not match the model", FailureCode.MODEL),
    "too_large": ("model has more parameters than the site's policy allows", FailureCode.MODEL),
    "forward": ("model forward raised", FailureCode.MODEL),
    "oom": ("out of memory", FailureCode.OUT_OF_MEMORY),
    "timeout": ("timed out", FailureCode.TIMEOUT),
    "release": ("release filter rejected the result", FailureCode.RELEASE),
    "sandbox": ("this site cannot seal the sandbox researcher code runs in; its operator "
                "has been told", FailureCode.INTERNAL),
    "internal": ("internal error", FailureCode.INTERNAL),
}
Category = Literal["model_load", "graph", "batchnorm", "weights_mismatch", "too_large", "forward",
                   "oom", "timeout", "release", "sandbox", "internal"]


class Job(BaseModel):
    """What the training child is told to do (`job.pt`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    #: "train": DP-SGD, output the parameters; "score": each sample's loss under the given
    #: weights, for the data owner's privacy audit (never for a researcher)
    mode: Literal["train", "score"] = "train"
    plan_json: str
    graph_json: str
    graph_digest: str
    weights: dict[str, torch.Tensor]
    #: a GAN plan: the discriminator's validated graph and its parameters at the start of
    #: the round (the site's own, or the researcher's initial ones in the first round)
    discriminator_json: str | None = None
    discriminator_digest: str | None = None
    discriminator_weights: dict[str, torch.Tensor] | None = None
    sample_rate: float = Field(gt=0, le=1)
    expected_batch: float = Field(gt=0, description="what the noised sum is divided by: q·n "
                                                    "of the accounting, never the private N")
    noise_multiplier: float = Field(ge=0)
    steps: int = Field(ge=1, description="iterations (a GAN's each makes two updates)")
    step_work: int | None = Field(None, ge=1, description="gradients per step at least "
                                                          "(padded rounds)")
    threads: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_parameters: int = Field(ge=1)
    seed: int

    def save(self, f: BinaryIO) -> None:
        torch.save(self.model_dump(), f)

    @classmethod
    def load(cls, f: BinaryIO) -> Job:
        return cls.model_validate(torch.load(f, weights_only=True))


def memory_file(name: str) -> BinaryIO:
    """An anonymous in-memory file (never on disk); its descriptor is what a child gets."""
    return os.fdopen(os.memfd_create(f"medsyft-{name}", os.MFD_CLOEXEC), "w+b")


def save_private(f: BinaryIO, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.save({"x": x, "y": y}, f)


def load_private(f: BinaryIO) -> tuple[torch.Tensor, torch.Tensor]:
    private = torch.load(f, weights_only=True)
    return private["x"], private["y"]


class RunStatus(BaseModel):
    """How the child's run ended (`status.json`)."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    category: Category | None = None
    device: Literal["", "cpu", "cuda"] = ""
    train_seconds: float | None = None

    def save(self, f: BinaryIO) -> None:
        f.seek(0)
        f.truncate()
        f.write(self.model_dump_json().encode())
        f.flush()

    @classmethod
    def load(cls, f: BinaryIO) -> RunStatus:
        """The child's status; a missing or malformed one is an internal failure."""
        try:
            f.seek(0)
            return cls.model_validate(json.loads(f.read(MAX_STATUS)))
        except (OSError, ValueError, ValidationError):
            return cls(ok=False, category="internal")


def save_output(f: BinaryIO, params: dict[str, torch.Tensor],
                discriminator: dict[str, torch.Tensor] | None = None) -> None:
    """The run's parameters; a GAN's discriminator beside them, for the site's run state
    only (the runtime keeps it and releases `params` alone)."""
    out = {"params": params}
    if discriminator is not None:
        out["discriminator"] = discriminator
    torch.save(out, f)
    f.flush()


def save_losses(f: BinaryIO, losses: torch.Tensor) -> None:
    torch.save({"losses": losses}, f)
    f.flush()


def load_output(f: BinaryIO, max_bytes: int) -> object:
    """What the child wrote as its output (untrusted until the release filter passes it);
    nothing is read from an output larger than `max_bytes`."""
    f.seek(0, os.SEEK_END)
    if f.tell() > max_bytes:
        raise ValueError("the training output is larger than its parameters can be")
    f.seek(0)
    return torch.load(f, weights_only=True)
