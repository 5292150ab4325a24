"""Training graphs of test models, traced in the test process (test models are trusted)."""

from __future__ import annotations

import torch

from sites.graph import check
from sites.graph.execute import compile_graph
from sites.graph.export import trace
from sites.graph.schema import Graph


def graph_of(model: torch.nn.Module, shape: list[int], loss: str = "bce_with_logits",
             max_parameters: int = 10**7) -> tuple[Graph, check.GraphFacts]:
    """The model traced and validated as a site would (without the sandbox)."""
    return check.validate(trace(model, shape).canonical_json(), loss=loss,
                          max_parameters=max_parameters)


def forward_of(model: torch.nn.Module, shape: list[int], loss: str = "bce_with_logits"):
    """The compiled graph of `model`: what the training process runs."""
    graph, _ = graph_of(model, shape, loss)
    return compile_graph(graph)


def start_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}
