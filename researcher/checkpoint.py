"""Checkpoints of a federated run: the global weights and report after every round.

One folder per plan version; writes are atomic (temp file, then rename) so a
crash never leaves a half-written checkpoint, and `latest` resumes from the
last complete round.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from researcher.results import RunReport


class Checkpoints:
    def __init__(self, root: Path, function_name: str) -> None:
        self.dir = Path(root) / function_name
        self.dir.mkdir(parents=True, exist_ok=True)

    def _file(self, rnd: int) -> Path:
        return self.dir / f"round-{rnd:04d}.pt"

    def save(self, rnd: int, params: dict[str, np.ndarray], report: RunReport) -> Path:
        tmp = self.dir / f".round-{rnd:04d}.tmp"
        torch.save({"round": rnd, "params": {k: torch.from_numpy(np.array(v))
                                             for k, v in params.items()},
                    "report": report.model_dump_json()}, tmp)
        os.replace(tmp, self._file(rnd))
        return self._file(rnd)

    def latest(self) -> tuple[int, dict[str, np.ndarray], RunReport] | None:
        files = sorted(self.dir.glob("round-*.pt"))
        if not files:
            return None
        state = torch.load(files[-1], weights_only=True)
        params = {k: v.numpy() for k, v in state["params"].items()}
        return int(state["round"]), params, RunReport.model_validate_json(state["report"])
