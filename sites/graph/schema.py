"""The graph format: a list of ATen calls over named values, as a pydantic model.

A graph crosses from the sealed tracer (where researcher code ran) to the site, so
every field is untrusted until `sites.graph.check` has validated it. It is JSON:
reading one executes nothing (no pickle, no Python, no sympy expression). Values
are referred to by name: `input` (one sample, with a batch dimension of 1),
`param:<name>` (a trainable parameter) or the name of an earlier node.

Must never hold a tensor value: parameters are names and shapes only (their values
are the researcher's start weights, which cross separately and are checked again).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

GRAPH_FORMAT = 1
MAX_NODES = 2000
MAX_PARAMS = 1000
MAX_GRAPH_BYTES = 2 << 20
INPUT = "input"
PARAM_PREFIX = "param:"

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,79}$")]
ParamName = Annotated[str, Field(
    pattern=r"^[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){0,15}$")]
OpName = Annotated[str, Field(pattern=r"^aten\.[a-z0-9_]{1,48}\.[A-Za-z0-9_]{1,32}$")]


class Ref(BaseModel):
    """A tensor value: `input`, `param:<name>` or an earlier node's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    t: str = Field(max_length=1100)


class Word(BaseModel):
    """A short string argument (e.g. `approximate="tanh"`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    s: str = Field(pattern=r"^[a-z_]{1,16}$")


class DType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dtype: Literal["float32", "float64", "int64", "bool"]


Scalar = StrictBool | StrictInt | StrictFloat | Ref | Word | DType | None
#: an argument: one scalar or value, or a flat list of them (sizes, `cat`'s tensors)
Arg = Scalar | Annotated[list[Scalar], Field(max_length=64)]


class Node(BaseModel):
    """One call: `out = op(*args, **kwargs)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name
    op: OpName
    args: list[Arg] = Field(default_factory=list, max_length=16)
    kwargs: dict[Name, Arg] = Field(default_factory=dict, max_length=16)


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ParamName
    shape: list[Annotated[int, Field(ge=0, le=1 << 30)]] = Field(max_length=8)


class Graph(BaseModel):
    """A traced model: its parameters (names, shapes), its calls in order, its output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1] = GRAPH_FORMAT
    input_shape: list[Annotated[int, Field(ge=1, le=4096)]] = Field(min_length=2, max_length=6)
    params: list[ParamSpec] = Field(max_length=MAX_PARAMS)
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)
    output: Ref

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: what a run records as the graph it trained."""
        import hashlib

        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
