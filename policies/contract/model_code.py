"""Instantiate a plan's model class from its source code.

Runs researcher code: at a site only inside the sealed tracer
(`sites.sandbox.tracer`: no data, no secret, no network, never in the syft server
or the training process), and on the researcher's machine for their own
evaluation. The namespace offers torch, nn, F and math, and `monai` to a source that
names it (MONAI's networks, `monai.networks.nets.UNet` and the others in `MONAI_NETS`:
whatever they build must still trace into a graph the site validates); the syntax-tree
review of what that code may do belongs to the policy engine.
BatchNorm is refused: it mixes samples within a batch, which breaks the
per-sample independence DP-SGD relies on (use GroupNorm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policies.contract.errors import Refused
from policies.contract.plan import ModelSpec


def _namespace(source: str) -> dict:
    namespace: dict = {"torch": torch, "nn": nn, "F": F, "math": math}
    if "monai" in source:  # importing MONAI takes seconds: only for a source that uses it
        import monai.networks.nets

        namespace["monai"] = monai
    return namespace


def build_model(spec: ModelSpec) -> nn.Module:
    """The plan's model: its source run with `torch`, `nn`, `F` and `math` (and `monai`,
    when the source names it) in scope, then `class_name(**kwargs)`.

    This runs researcher code: only the sealed tracer and the researcher's own machine
    may call it (see the module docstring).

    Args:
        spec: the plan's model section.

    Returns:
        The constructed module, BatchNorm-free.

    Raises:
        Refused: the class is not a `torch.nn.Module` or uses BatchNorm.
    """
    namespace = _namespace(spec.source)
    code = compile(spec.source, "<plan model>", "exec")
    exec(code, namespace)  # noqa: S102 - researcher code; see module docstring
    cls = namespace.get(spec.class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise Refused(f"{spec.class_name} is not a torch.nn.Module subclass")
    model = cls(**spec.kwargs)
    refuse_batchnorm(model)
    return model


def refuse_batchnorm(model: nn.Module) -> None:
    """Raise `Refused` if any layer is BatchNorm (it mixes samples, which DP-SGD's
    per-sample clipping assumes never happens)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise Refused(f"layer {name or '(root)'} is BatchNorm, which mixes samples "
                               "within a batch; use GroupNorm")


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the site trains, found without calling any method the model defines.

    `model.parameters()`, `named_parameters()` and `named_modules()` are methods the
    model's own code can override (one that reported 0 parameters trained 420,222 under
    a 100,000 cap), so the walk reads every module's `_modules` and `_parameters`
    dictionaries directly, in the order and with the de-duplication of torch's
    `named_parameters()`: these names are exactly the weights the runtime trains and
    releases. Anything that is not a module or a tensor where torch keeps them is refused.
    """
    get = object.__getattribute__
    out: dict[str, torch.Tensor] = {}
    seen_modules: set[int] = set()
    seen_params: set[int] = set()
    stack: list[tuple[str, object]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if not isinstance(module, nn.Module):
            raise Refused(f"submodule {prefix or '(root)'} is not a torch.nn.Module")
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        attrs = get(module, "__dict__")
        params, children = attrs.get("_parameters"), attrs.get("_modules")
        if not isinstance(params, dict) or not isinstance(children, dict):
            raise Refused(f"module {prefix or '(root)'} hides torch's own bookkeeping")
        for name, p in dict.items(params):
            if p is None or id(p) in seen_params:
                continue
            if not isinstance(p, torch.Tensor):
                raise Refused(f"parameter {prefix + '.' if prefix else ''}{name} is not "
                                   "a tensor")
            seen_params.add(id(p))
            out[f"{prefix}.{name}" if prefix else str(name)] = p
        pending = [(f"{prefix}.{name}" if prefix else str(name), child)
                   for name, child in dict.items(children) if child is not None]
        stack.extend(reversed(pending))
    return out


def parameter_count(model: nn.Module) -> int:
    """Number of trainable values, counted as the site trains them (`trainable_parameters`)."""
    return sum(int(p.numel()) for p in trainable_parameters(model).values())

