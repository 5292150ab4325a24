"""Instantiate a plan's model class from its source code.

Runs researcher code: at a site only inside the training child process (never
in the syft server process), on the researcher's machine for their own
evaluation. The namespace offers torch, nn, F and math and nothing else; the
syntax-tree review of what that code may do belongs to the policy engine.
BatchNorm is refused: it mixes samples within a batch, which breaks the
per-sample independence DP-SGD relies on (use GroupNorm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from researcher.plan import ModelSpec


class ModelRefused(ValueError):
    """The model cannot be trained under DP; the message is safe for the researcher."""


def build_model(spec: ModelSpec) -> nn.Module:
    namespace: dict = {"torch": torch, "nn": nn, "F": F, "math": math}
    code = compile(spec.source, "<plan model>", "exec")
    exec(code, namespace)  # noqa: S102 - researcher code; see module docstring
    cls = namespace.get(spec.class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelRefused(f"{spec.class_name} is not a torch.nn.Module subclass")
    model = cls(**spec.kwargs)
    refuse_batchnorm(model)
    return model


def refuse_batchnorm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ModelRefused(f"layer {name or '(root)'} is BatchNorm, which mixes samples "
                               "within a batch; use GroupNorm")


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}
