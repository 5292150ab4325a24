"""The release filter: what may enter a run and what may leave it.

`validate_weights` checks the researcher's start weights before anything is written
for the child; `release_filter` lets out exactly the start weights' names, shapes and
dtype, all finite, or nothing. A failure is a `Refused` carrying one of the fixed
categories of `sites.sandbox.job.CATEGORIES`, never the child's own words.

Must never let anything through that the filter did not check, and never name a
value of the private data in a message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from policies.contract.errors import Refused
from policies.contract.wire import FailureCode
from sites.sandbox.job import CATEGORIES

MAX_WEIGHT_TENSORS = 10_000
MAX_WEIGHT_BYTES = 2 * 1024**3
MAX_WEIGHT_ABS = 1e6  # start weights; a trained network's are orders of magnitude smaller


def refused(category: str) -> Refused:
    """The refusal of a run for one of the fixed categories (unknown ones are internal)."""
    message, code = CATEGORIES.get(category, CATEGORIES["internal"])
    return Refused(message, code=code)


def validate_weights(weights: Any, max_parameters: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """The researcher's start weights as float32 tensors, or `Refused`."""
    def invalid(message: str) -> Refused:
        return Refused(message, code=FailureCode.INVALID)

    if not isinstance(weights, dict) or not weights:
        raise invalid("weights must be a non-empty dict of parameter name to array")
    if len(weights) > MAX_WEIGHT_TENSORS:
        raise invalid("too many weight tensors")
    out: dict[str, torch.Tensor] = {}
    total = 0
    for name, arr in weights.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise invalid("weights must map parameter names to numpy arrays")
        if arr.dtype not in (np.float32, np.float64):
            raise invalid(f"weights[{name[:60]!r}] must be float32")
        total += arr.size * 4
        if total > MAX_WEIGHT_BYTES:
            raise invalid("weights exceed the size cap")
        if max_parameters is not None and total > max_parameters * 4:
            raise refused("too_large")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise invalid(f"weights[{name[:60]!r}] has non-finite values")
        if t.numel() and float(t.abs().max()) > MAX_WEIGHT_ABS:
            # near float32's end, whether the update overflows would depend on the data
            raise invalid(f"weights[{name[:60]!r}] has values beyond ±{MAX_WEIGHT_ABS:g}")
        out[name] = t
    return out


def release_filter(output: Any, start: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Exactly the start weights' names, shapes and dtype, all finite; else `Refused`."""
    if not isinstance(output, dict) or set(output) != {"params"}:
        raise refused("release")
    params = output["params"]
    if not isinstance(params, dict) or set(params) != set(start):
        raise refused("release")
    released: dict[str, np.ndarray] = {}
    for name, ref in start.items():
        t = params[name]
        if (not isinstance(t, torch.Tensor) or t.shape != ref.shape
                or t.dtype != torch.float32 or not torch.isfinite(t).all()):
            raise refused("release")
        released[name] = t.numpy().copy()
    return released
