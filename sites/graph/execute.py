"""Evaluate a validated training graph: one ATen call per node, nothing else.

`forward(params, x)` is a pure function of the parameters and one sample (batch
dimension 1), so `torch.func.vmap(grad(...))` over it gives per-sample gradients
with no module, no Python attribute and no hook in the way. Only graphs that passed
`sites.graph.check.validate` may be compiled: the operators are resolved from the
allowlist again here, so an unchecked name cannot reach the dispatcher.

Must never import or execute researcher code, and never print or log a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from policies.contract.errors import MedsyftError
from sites.graph import ops
from sites.graph.schema import INPUT, PARAM_PREFIX, DType, Graph, Ref, Word

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
           "bool": torch.bool}

Forward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


class GraphError(MedsyftError, ValueError):
    """A graph that does not evaluate (the message names the node)."""


def value_of(arg: Any, env: dict[str, Any], node: str) -> Any:
    if isinstance(arg, Ref):
        if arg.t not in env:
            raise GraphError(f"node {node} uses {arg.t!r} before it is defined")
        return env[arg.t]
    if isinstance(arg, Word):
        return arg.s
    if isinstance(arg, DType):
        return _DTYPES[arg.dtype]
    if isinstance(arg, list):
        return [value_of(a, env, node) for a in arg]
    return arg


def compile_graph(graph: Graph) -> Forward:
    """A function `(params, x) -> output` that evaluates `graph` (already validated)."""
    steps = [(node.name, ops.resolve(node.op), node.args, node.kwargs) for node in graph.nodes]
    out_name = graph.output.t

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {INPUT: x}
        env.update({PARAM_PREFIX + k: v for k, v in params.items()})
        for name, overload, args, kwargs in steps:
            env[name] = overload(*[value_of(a, env, name) for a in args],
                                 **{k: value_of(v, env, name) for k, v in kwargs.items()})
        return env[out_name]

    return forward
