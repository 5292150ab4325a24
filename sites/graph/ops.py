"""The ATen operators a training graph may call: ones whose effect a site can reason about.

Each entry is a functional operator (it writes to none of its inputs) of one of the
families below; anything else (I/O, random numbers, tensor factories, in-place
operators, batch normalisation with running statistics, operators returning several
tensors) is refused by `sites.graph.check`. A graph is evaluated one sample at a
time under `vmap`, so no operator can mix samples; reductions must still name their
dimensions and leave the batch dimension (0) alone, so that the graph reads as what
it does.

Must never list an operator that mutates an argument, reads a file or the clock, draws
random numbers outside dropout, or allocates a tensor from sizes alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OpRule:
    family: str
    #: positional index (or kwarg name) of a `dim` argument that must not touch dim 0
    reduce_dim: tuple[int, str] | None = None
    #: instance_norm: running statistics must be absent
    no_running_stats: bool = False


_FAMILIES: dict[str, list[str]] = {
    "convolution": ["conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding",
                    "conv2d.padding", "conv3d.padding", "conv_transpose1d.default",
                    "conv_transpose2d.input", "conv_transpose3d.input", "convolution.default"],
    "linear": ["linear.default", "matmul.default", "mm.default", "bmm.default", "t.default"],
    "normalisation": ["group_norm.default", "layer_norm.default"],
    "activation": ["relu.default", "leaky_relu.default", "gelu.default", "silu.default",
                   "elu.default", "softplus.default", "sigmoid.default", "tanh.default",
                   "hardtanh.default", "hardswish.default", "hardsigmoid.default",
                   "mish.default", "relu6.default", "selu.default", "prelu.default"],
    "pooling": ["max_pool1d.default", "max_pool2d.default", "max_pool3d.default",
                "avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default",
                "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default",
                "adaptive_avg_pool3d.default"],
    "upsampling": ["upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_nearest3d.vec",
                   "upsample_linear1d.vec", "upsample_bilinear2d.vec",
                   "upsample_trilinear3d.vec", "upsample_nearest1d.default",
                   "upsample_nearest2d.default", "upsample_nearest3d.default",
                   "upsample_bilinear2d.default", "upsample_trilinear3d.default"],
    "reshaping": ["view.default", "reshape.default", "flatten.using_ints", "unflatten.int",
                  "permute.default", "transpose.int", "unsqueeze.default", "squeeze.dim",
                  "squeeze.dims", "expand.default", "slice.Tensor", "select.int",
                  "narrow.default", "cat.default", "stack.default", "clone.default",
                  "alias.default", "constant_pad_nd.default", "pad.default",
                  "repeat.default", "detach.default", "to.dtype"],
    "arithmetic": ["add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Scalar",
                   "mul.Tensor", "mul.Scalar", "div.Tensor", "div.Scalar", "neg.default",
                   "abs.default", "exp.default", "log.default", "sqrt.default",
                   "rsqrt.default", "pow.Tensor_Scalar", "clamp.default", "clamp_min.default",
                   "clamp_max.default", "maximum.default", "minimum.default"],
    "dropout": ["dropout.default", "feature_dropout.default"],
}

#: reductions over named dimensions: (position of the dim argument, its keyword name)
_REDUCTIONS: dict[str, tuple[int, str]] = {
    "mean.dim": (1, "dim"), "sum.dim_IntList": (1, "dim"), "amax.default": (1, "dim"),
    "amin.default": (1, "dim"), "softmax.int": (1, "dim"), "log_softmax.int": (1, "dim"),
    "logsumexp.default": (1, "dim"), "var.correction": (1, "dim"), "std.correction": (1, "dim"),
}

ALLOWED: dict[str, OpRule] = {f"aten.{name}": OpRule(family)
                              for family, names in _FAMILIES.items() for name in names}
ALLOWED |= {f"aten.{name}": OpRule("reduction", reduce_dim=dim)
            for name, dim in _REDUCTIONS.items()}
ALLOWED["aten.instance_norm.default"] = OpRule("normalisation", no_running_stats=True)

#: operators refused with a pointed message (the rest get the generic one)
EXPLAINED = {
    "batch_norm": "BatchNorm mixes samples within a batch; use GroupNorm",
    "native_batch_norm": "BatchNorm mixes samples within a batch; use GroupNorm",
    "_native_batch_norm_legit": "BatchNorm mixes samples within a batch; use GroupNorm",
    "_native_batch_norm_legit_no_training": "BatchNorm mixes samples within a batch; use "
                                            "GroupNorm",
    "mean": "reduce over named non-batch dimensions (e.g. x.mean(dim=(2, 3, 4)))",
    "sum": "reduce over named non-batch dimensions (e.g. x.sum(dim=1))",
    "rand": "random numbers come only from the site (dropout)",
    "randn": "random numbers come only from the site (dropout)",
    "bernoulli": "random numbers come only from the site (dropout)",
    "zeros": "tensors made from sizes alone are not allowed; derive them from the input",
    "ones": "tensors made from sizes alone are not allowed; derive them from the input",
    "full": "tensors made from sizes alone are not allowed; derive them from the input",
}


def resolve(op: str) -> torch._ops.OpOverload:
    """The ATen overload of an allowed name (`aten.<op>.<overload>`); KeyError otherwise."""
    if op not in ALLOWED:
        raise KeyError(op)
    _, packet, overload = op.split(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


def mutates(overload: torch._ops.OpOverload) -> bool:
    """Whether the operator's schema writes to any of its arguments."""
    return any(a.alias_info is not None and a.alias_info.is_write
               for a in overload._schema.arguments)


def refusal(op: str) -> str:
    """Why an operator outside the allowlist is refused, in words."""
    packet = op.split(".")[1] if op.count(".") == 2 else op
    base = packet.rstrip("_")
    if packet.endswith("_") and f"aten.{base}.default" in ALLOWED:
        return f"{op} writes in place; use the out-of-place form"
    return EXPLAINED.get(base, f"{op} is not an operator the site's training allows")
