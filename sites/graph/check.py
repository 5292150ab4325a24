"""Validate a training graph against the allowlist and measure it, before anything runs.

`validate(graph_json, ...)` is the site's one gate between what the tracer produced
(untrusted: researcher code ran there) and what training executes. It parses the
JSON with the bounded schema, checks that every name is defined before use and
every call is an allowed functional operator with sane arguments, then evaluates the
graph once on the meta device (shapes only, no memory, no data) to check every
intermediate is one tensor, reductions leave the batch dimension alone, and the
output fits the plan's loss. The `GraphFacts` it returns (parameter count, operator
counts, activation memory) are what the data owner's verdict shows.

Must never execute researcher code, read tensor values, or trust a count the tracer
reported: everything here is recomputed from the graph itself.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from policies.contract.errors import Refused
from policies.contract.wire import FailureCode
from sites.graph import ops
from sites.graph.execute import value_of
from sites.graph.schema import INPUT, MAX_GRAPH_BYTES, PARAM_PREFIX, Graph, Node, Ref

#: backward keeps the forward's activations and makes gradients of the same size
BACKWARD_FACTOR = 3
MAX_INT = 1 << 31


class GraphFacts(BaseModel):
    """What the site measured on a graph: shown in the verdict, bound into the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    digest: str
    parameters: int
    operators: dict[str, int]
    activation_bytes: int  # one sample, forward and backward
    output_shape: list[int]

    def summary(self) -> str:
        ops_text = ", ".join(f"{k.split('.')[1]}×{v}" if v > 1 else k.split(".")[1]
                             for k, v in sorted(self.operators.items()))
        return (f"{self.parameters:,} parameters; {sum(self.operators.values())} calls: "
                f"{ops_text}; ~{self.activation_bytes / 2**20:.1f} MiB activations per sample")


def _refuse(message: str) -> Refused:
    return Refused(f"training graph refused: {message}", code=FailureCode.MODEL)


def parse(graph_json: str | bytes) -> Graph:
    """The graph as the schema reads it (size-bounded); `Refused` when it does not."""
    if len(graph_json) > MAX_GRAPH_BYTES:
        raise _refuse(f"larger than {MAX_GRAPH_BYTES // 2**20} MiB")
    try:
        return Graph.model_validate_json(graph_json)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise _refuse(f"malformed at {where or 'top level'}: {first.get('msg', '')}"[:300]
                      ) from None


def _literals(arg: object, node: str) -> None:
    """Numbers must be finite and bounded (they size meta tensors and kernels)."""
    if isinstance(arg, list):
        for a in arg:
            _literals(a, node)
    elif isinstance(arg, bool) or arg is None:
        return
    elif isinstance(arg, int):
        if abs(arg) > MAX_INT:
            raise _refuse(f"node {node}: integer argument out of range")
    elif isinstance(arg, float) and not math.isfinite(arg):
        raise _refuse(f"node {node}: non-finite argument")


def _refs(arg: object) -> list[str]:
    if isinstance(arg, Ref):
        return [arg.t]
    if isinstance(arg, list):
        return [r for a in arg for r in _refs(a)]
    return []


def _structure(graph: Graph) -> None:
    names = [p.name for p in graph.params]
    if len(set(names)) != len(names):
        raise _refuse("a parameter is listed twice")
    defined = {INPUT} | {PARAM_PREFIX + n for n in names}
    for node in graph.nodes:
        if node.name in defined or node.name == INPUT:
            raise _refuse(f"node name {node.name} is used twice")
        if node.op not in ops.ALLOWED:
            raise _refuse(f"node {node.name}: {ops.refusal(node.op)}")
        if ops.mutates(ops.resolve(node.op)):  # the allowlist holds none; a second lock
            raise _refuse(f"node {node.name}: {node.op} writes to its arguments")
        for arg in [*node.args, *node.kwargs.values()]:
            _literals(arg, node.name)
            for ref in _refs(arg):
                if ref not in defined:
                    raise _refuse(f"node {node.name} uses {ref!r}, which is not defined "
                                  "before it")
        defined.add(node.name)
    if graph.output.t not in {n.name for n in graph.nodes}:
        raise _refuse("the output is not computed by the graph")


def _reduce_dims(value: object, ndim: int) -> list[int]:
    dims = value if isinstance(value, list) else [value]
    return [d % ndim if isinstance(d, int) and ndim else d for d in dims]


def _tensors_where_tensors_go(node: Node, args: list, kwargs: dict) -> None:
    """The operator works on the graph's (meta) tensors: at least one argument its schema
    types as a tensor is one, a number may stand in the others (`mul.Tensor(x, 2)`), and
    a list of tensors holds graph tensors only. With numbers alone the operator would
    build a real tensor in this process (`add.Tensor(0.5, 0.5)`, then `expand` and
    `clone` to any size: red team, issue 14)."""
    schema = ops.resolve(node.op)._schema.arguments
    seen_tensor = False
    for i, spec in enumerate(schema):
        if spec.kwarg_only:
            given, value = spec.name in kwargs, kwargs.get(spec.name)
        else:
            given, value = i < len(args), args[i] if i < len(args) else None
        kind = str(spec.type)
        if not given or "Tensor" not in kind:
            if isinstance(value, torch.Tensor) and not _is_meta(value):
                raise _refuse(f"node {node.name}: argument {spec.name} is not a graph tensor")
            continue
        if kind.startswith("List["):
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if not items or not all(_is_meta(v) or (v is None and "Optional" in kind)
                                    for v in items):
                raise _refuse(f"node {node.name}: argument {spec.name} of {node.op} must "
                              "list the graph's tensors")
            seen_tensor = True
        elif _is_meta(value):
            seen_tensor = True
        elif isinstance(value, torch.Tensor) or not (
                value is None or isinstance(value, (bool, int, float))):
            raise _refuse(f"node {node.name}: argument {spec.name} of {node.op} must be a "
                          "graph tensor or a number")
    if not seen_tensor:
        raise _refuse(f"node {node.name}: {node.op} must work on one of the graph's tensors")


def _is_meta(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


def _measure(graph: Graph) -> tuple[dict[str, list[int]], int]:
    """Evaluate on the meta device: every node's shape, and Σ bytes of the activations."""
    env: dict[str, object] = {INPUT: torch.empty(graph.input_shape, device="meta")}
    env |= {PARAM_PREFIX + p.name: torch.empty(p.shape, device="meta") for p in graph.params}
    shapes: dict[str, list[int]] = {}
    total = 0
    for node in graph.nodes:
        rule = ops.ALLOWED[node.op]
        args = [value_of(a, env, node.name) for a in node.args]
        kwargs = {k: value_of(v, env, node.name) for k, v in node.kwargs.items()}
        first = args[0] if args else None
        if rule.reduce_dim is not None and isinstance(first, torch.Tensor):
            pos, key = rule.reduce_dim
            dim = kwargs.get(key, args[pos] if len(args) > pos else None)
            if dim is None or dim == []:
                raise _refuse(f"node {node.name}: {ops.EXPLAINED['mean']}")
            if 0 in _reduce_dims(dim, first.ndim):
                raise _refuse(f"node {node.name}: reduces over the batch dimension")
        if rule.no_running_stats and (len(args) < 6 or args[3] is not None
                                      or args[4] is not None or args[5] is not True):
            raise _refuse(f"node {node.name}: instance_norm with running statistics")
        if node.op.startswith("aten.dropout") or node.op.startswith("aten.feature_dropout"):
            p = args[1] if len(args) > 1 else kwargs.get("p")
            if not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise _refuse(f"node {node.name}: dropout probability outside [0, 1)")
        _tensors_where_tensors_go(node, args, kwargs)
        try:
            out = ops.resolve(node.op)(*args, **kwargs)
        except Exception as exc:  # the operator's own argument check
            raise _refuse(f"node {node.name}: {node.op} does not accept its arguments "
                          f"({type(exc).__name__})") from None
        if not isinstance(out, torch.Tensor):
            raise _refuse(f"node {node.name}: {node.op} must give one tensor")
        if out.device.type != "meta":  # a real tensor would be computed in this process
            raise _refuse(f"node {node.name}: {node.op} must work on the graph's tensors")
        if out.dtype not in (torch.float32, torch.float64, torch.int64, torch.bool):
            raise _refuse(f"node {node.name}: dtype {out.dtype} is not allowed")
        env[node.name] = out
        shapes[node.name] = list(out.shape)
        total += out.numel() * out.element_size()
    return shapes, total


#: the "loss" a GAN's discriminator graph is validated for (`sites.sandbox.losses.gan_*`)
DISCRIMINATOR = "discriminator"


def combine(generator: GraphFacts, discriminator: GraphFacts) -> GraphFacts:
    """The facts of a GAN plan's two graphs as one: what the verdict checks (parameters,
    operators and memory of both) and the digest an approval binds (of both digests)."""
    ops = Counter(generator.operators)
    ops.update(discriminator.operators)
    digest = hashlib.sha256(f"gan:{generator.digest}:{discriminator.digest}".encode())
    return GraphFacts(digest=digest.hexdigest(),
                      parameters=generator.parameters + discriminator.parameters,
                      operators=dict(ops),
                      # the discriminator's update runs it twice per sample (on the
                      # real and on the generated target), both kept for the gradient
                      activation_bytes=generator.activation_bytes
                      + 2 * discriminator.activation_bytes,
                      output_shape=generator.output_shape)


def _check_output(loss: str, out_shape: list[int], grid: list[int],
                  classes: int | None) -> None:
    """The output one sample's loss needs (see `sites.sandbox.losses`)."""
    if loss == "bce_with_logits" and math.prod(out_shape) != 1:
        raise _refuse(f"bce_with_logits needs one logit per sample, the output is {out_shape}")
    if loss == "cross_entropy" and (len(out_shape) != 2 or out_shape[0] != 1
                                    or out_shape[1] < 2):
        raise _refuse(f"cross_entropy needs (1, classes) per sample, the output is {out_shape}")
    if loss in ("dice", "dice_ce"):
        if len(out_shape) != 2 + len(grid) or out_shape[0] != 1 or out_shape[2:] != grid \
                or out_shape[1] < 2:
            raise _refuse(f"{loss} needs (1, classes, {', '.join(map(str, grid))}) per sample "
                          f"(a score per class and voxel), the output is {out_shape}")
        if classes is not None and out_shape[1] != classes:
            raise _refuse(f"the dataset's mask has {classes} classes (background included), "
                          f"the output has {out_shape[1]} channels")
    if loss == DISCRIMINATOR and (len(out_shape) < 2 or out_shape[:2] != [1, 1]):
        raise _refuse(f"a discriminator gives (1, 1, ...) per sample (one logit, or one map of "
                      f"logits), the output is {out_shape}")
    if loss in ("l1", "l2", "ssim_l1") and out_shape != [1, 1, *grid]:
        raise _refuse(f"{loss} needs (1, 1, {', '.join(map(str, grid))}) per sample (one "
                      f"volume on the input's grid), the output is {out_shape}")


def validate(graph_json: str | bytes, *, loss: str, max_parameters: int,
             input_shape: list[int] | None = None,
             classes: int | None = None) -> tuple[Graph, GraphFacts]:
    """The graph and its measured facts, or `Refused` naming the node and the reason.

    Args:
        graph_json: the graph as the tracer wrote it (untrusted).
        loss: the plan's loss (`bce_with_logits` needs one logit, `cross_entropy` a row of
            at least two, Dice a score per class and voxel, synthesis one volume).
        max_parameters: the policy's cap, checked before anything is evaluated.
        input_shape: the shape one sample has at this site, batch dimension first (1).
        classes: for segmentation, the classes of the dataset's mask (background included).
    """
    graph = parse(graph_json)
    if input_shape is not None and list(graph.input_shape) != list(input_shape):
        raise _refuse(f"traced for input {graph.input_shape}, the site's data is "
                      f"{input_shape}")
    if graph.input_shape[0] != 1:
        raise _refuse("the input's batch dimension must be 1")
    n_params = sum(math.prod(p.shape) for p in graph.params)
    if n_params > max_parameters:
        raise _refuse(f"{n_params:,} parameters, the policy allows {max_parameters:,}")
    _structure(graph)
    with torch.no_grad():
        shapes, activations = _measure(graph)
    out_shape = shapes[graph.output.t]
    _check_output(loss, out_shape, list(graph.input_shape[2:]), classes)
    facts = GraphFacts(digest=graph.digest(), parameters=n_params,
                       operators=dict(Counter(n.op for n in graph.nodes)),
                       activation_bytes=activations * BACKWARD_FACTOR,
                       output_shape=out_shape)
    return graph, facts
