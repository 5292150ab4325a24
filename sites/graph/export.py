"""Turn a model into a training graph with `torch.export`: used only inside the sealed tracer.

The tracer (`sites.sandbox.tracer`) builds the researcher's model and calls
`trace(model, input_shape)`; the exported program is functionalised
(`run_decompositions({})`: in-place operators become their functional forms, no
operator is decomposed further) and written down as a `sites.graph.schema.Graph`.
Everything the researcher's code can influence ends up in that graph, which the
site validates (`sites.graph.check`) without trusting anything said here.

Must never be imported by a process that holds private data or a secret: it exists to
run next to researcher code.
"""

from __future__ import annotations

import logging
import operator
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import ValidationError
from torch.export.graph_signature import InputKind, OutputKind

from policies.contract.errors import Refused
from policies.contract.wire import FailureCode
from sites.graph.schema import INPUT, PARAM_PREFIX, DType, Graph, Node, ParamSpec, Ref, Word

OP_NAME = re.compile(r"^aten\.[a-z0-9_]{1,48}\.[A-Za-z0-9_]{1,32}$")
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64",
                torch.bool: "bool"}


def _refuse(message: str) -> Refused:
    return Refused(message, code=FailureCode.MODEL)


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch logs a failed trace's stack at ERROR level; the refusal says what matters."""
    fake = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake.level
    fake.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        fake.setLevel(level)


def _arg(value: Any, names: dict[str, str], where: str) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(t=names[value.name])
    if isinstance(value, (list, tuple)):
        return [_arg(v, names, where) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return Word(s=value)
    if isinstance(value, torch.dtype) and value in _DTYPE_NAMES:
        return DType(dtype=_DTYPE_NAMES[value])
    raise _refuse(f"{where}: argument of type {type(value).__name__} is not supported")


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._opname}.{target._overloadname}" \
            if target.namespace == "aten" else f"{target.namespace}.{target._opname}"
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", type(target).__name__)


def trace(model: torch.nn.Module, input_shape: list[int]) -> Graph:
    """The model's graph for one sample of `input_shape` (batch dimension 1 first).

    Raises `Refused` for what cannot become a graph: data-dependent control flow,
    buffers or tensor constants, more than one input or output, names or arguments the
    graph format cannot hold."""
    try:
        return _trace(model, input_shape)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _refuse(f"the model's graph cannot be written down: {first.get('msg', '')} "
                      f"({str(first.get('input', ''))[:80]})") from None


def _trace(model: torch.nn.Module, input_shape: list[int]) -> Graph:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            raise _refuse(f"layer {name or '(root)'} is BatchNorm, which mixes samples within "
                          "a batch; use GroupNorm")
    model.eval()
    example = (torch.zeros(input_shape),)
    try:
        with warnings.catch_warnings(), _quiet_torch():  # torch's notes, not the model's
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(model, example, strict=False)
            program = program.run_decompositions({})
    except Exception as exc:
        raise _refuse(f"the model cannot be traced into a static graph on one sample of "
                      f"shape {list(input_shape)} (its forward fails there, or its control "
                      f"flow depends on the data): {type(exc).__name__}: "
                      f"{str(exc)[:300]}") from None
    names: dict[str, str] = {}
    params: list[ParamSpec] = []
    state = program.state_dict
    user_inputs = 0
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.PARAMETER:
            names[spec.arg.name] = PARAM_PREFIX + spec.target
            params.append(ParamSpec(name=spec.target, shape=list(state[spec.target].shape)))
        elif spec.kind == InputKind.USER_INPUT:
            user_inputs += 1
            names[spec.arg.name] = INPUT
        elif spec.kind == InputKind.BUFFER:
            raise _refuse(f"the model has a buffer ({spec.target}); only parameters are "
                          "trained and released, so use a parameter or compute it in forward")
        else:
            raise _refuse(f"the model uses a tensor constant ({spec.target}); compute it "
                          "from the input or make it a parameter")
    if user_inputs != 1:
        raise _refuse("the model's forward must take exactly one tensor")
    outputs = program.graph_signature.output_specs
    if len(outputs) != 1 or outputs[0].kind != OutputKind.USER_OUTPUT:
        raise _refuse("the model's forward must return exactly one tensor and change nothing")
    nodes: list[Node] = []
    output: Ref | None = None
    dropouts: dict[str, tuple[Any, Any]] = {}  # native_dropout nodes: (input, p)
    for fx_node in program.graph.nodes:
        if fx_node.op == "placeholder":
            continue
        if fx_node.op == "output":
            (result,) = fx_node.args[0]
            output = _arg(result, names, "output")
            continue
        if fx_node.op != "call_function":
            raise _refuse(f"unsupported graph node {fx_node.op}")
        where = f"call {fx_node.name}"
        op = _op_name(fx_node.target)
        if op == "aten.native_dropout.default":  # (output, mask): only the output is used
            dropouts[fx_node.name] = (fx_node.args[0], fx_node.args[1])
            continue
        if op == "getitem" and getattr(fx_node.args[0], "name", None) in dropouts:
            if fx_node.args[1] != 0:
                raise _refuse("the model uses dropout's mask")
            source, p = dropouts[fx_node.args[0].name]
            op, args, kwargs = "aten.dropout.default", (source, p, True), {}
        else:
            args, kwargs = fx_node.args, fx_node.kwargs
        if not OP_NAME.match(op):
            raise _refuse(f"{where}: {op} is not an ATen operator the site's training allows")
        names[fx_node.name] = fx_node.name
        nodes.append(Node(name=fx_node.name, op=op,
                          args=[_arg(a, names, where) for a in args],
                          kwargs={k: _arg(v, names, where) for k, v in kwargs.items()}))
    if output is None or not isinstance(output, Ref):
        raise _refuse("the model's forward must return one tensor")
    return Graph(input_shape=list(input_shape), params=params, nodes=nodes, output=output)
