"""The validated training graph of a plan at this site: traced once, checked every time.

A plan's model becomes a graph in the sealed tracer (`sites.sandbox.tracing`) on one
sample of the dataset's shape; the graph is cached in the governance store under a
key of the model section, that shape, the graph format and torch's version, and is
validated (`sites.graph.check.validate`) against the policy whenever it is used: by
the review (parameter count, operators and activation memory in the verdict) and by
every round (and once more inside the training process).

Must never run researcher code in this process, and never use a graph it has not
validated in this call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from policies.contract.errors import Refused
from policies.contract.plan import ModelSpec, TrainingPlan
from policies.contract.wire import FailureCode
from sites.governance.store import Governance
from sites.graph import check
from sites.graph.schema import GRAPH_FORMAT, Graph
from sites.operator.config import SiteConfig
from sites.sandbox import launcher, tracing

#: the most a training process may write (its output parameters and its status)
TRAIN_OUTPUT_MIB = 4096


@dataclass(frozen=True)
class PlanGraph:
    """The validated graph of a plan's model; for a GAN plan also its discriminator's, and
    `facts` then describe both (`check.combine`: what the verdict and approval see)."""

    graph_json: str
    graph: Graph
    facts: check.GraphFacts
    discriminator_json: str | None = None
    discriminator: Graph | None = None
    discriminator_facts: check.GraphFacts | None = None


#: A failed trace is tried again after this long: a timeout under load must not fail a model
#: for good, and a model that really fails costs one sealed trace per 10 minutes.
TRACE_ERROR_TTL_S = 600.0


def input_shape(plan: TrainingPlan, volume_shape: tuple[int, ...] | list[int]) -> list[int]:
    """One sample as the graph sees it: batch 1, the plan's modalities, the volume."""
    return [1, len(plan.inputs), *[int(s) for s in volume_shape]]


def discriminator_shape(plan: TrainingPlan, volume_shape: tuple[int, ...] | list[int]
                        ) -> list[int]:
    """One sample as a GAN's discriminator sees it: the plan's inputs and one target
    volume (real or generated) stacked as channels."""
    return [1, len(plan.inputs) + 1, *[int(s) for s in volume_shape]]


def trace_key(model: ModelSpec, shape: list[int]) -> str:
    text = json.dumps([model.model_dump(mode="json"), shape, GRAPH_FORMAT,
                       torch.__version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def settings(cfg: SiteConfig, purpose: str, timeout_s: float, gpu: bool = False
             ) -> launcher.SandboxSettings:
    """The sandbox a site's child runs in, from site.yaml."""
    memory = cfg.tracer_memory_mib if purpose == "trace" else cfg.training_memory_mib
    return launcher.SandboxSettings(
        relaxed=cfg.sandbox == "relaxed", memory_mib=None if gpu else memory,
        cpu_seconds=max(10, int(timeout_s * 2)), gpu=gpu,
        threads=1 if purpose == "trace" else cfg.train_threads,
        # training writes its output and status into memory files: those count as files
        file_mib=None if purpose == "trace" else TRAIN_OUTPUT_MIB)


def _traced(gov: Governance, cfg: SiteConfig, model: ModelSpec, shape: list[int]) -> str:
    """The graph JSON of `model` on one sample of `shape`, from the cache or the sealed
    tracer (untrusted until validated)."""
    key = trace_key(model, shape)
    cached = gov.cached_graph(key, error_ttl_s=TRACE_ERROR_TTL_S)
    if cached is None:
        try:
            graph_json, error = tracing.trace_model(
                model.model_dump_json(), shape, float(cfg.review_timeout_s),
                settings(cfg, "trace", cfg.review_timeout_s)), None
        except tracing.SiteBusy:
            raise
        except tracing.TraceError as exc:
            graph_json, error = None, str(exc)
        gov.cache_graph(key, graph_json, error)
    else:
        graph_json, error = cached
    if graph_json is None:
        raise Refused(f"the model cannot be traced: {error}", code=FailureCode.MODEL)
    return graph_json


def plan_graph(gov: Governance, cfg: SiteConfig, plan: TrainingPlan, shape: list[int],
               max_parameters: int, classes: int | None = None) -> PlanGraph:
    """The plan's graph for samples of `shape`, validated against `max_parameters` now
    (and, for segmentation, against the `classes` of the dataset's mask). A GAN plan's
    discriminator is traced and validated too, and both together must stay within
    `max_parameters`.

    Raises `Refused` (code MODEL) with the tracer's or the validator's reason; a tracer
    that could not start in time raises `tracing.SiteBusy` and caches nothing."""
    graph_json = _traced(gov, cfg, plan.model, shape)
    graph, facts = check.validate(graph_json, loss=plan.loss, max_parameters=max_parameters,
                                  input_shape=shape,
                                  classes=classes if plan.task == "segment" else None)
    if plan.adversarial is None:
        return PlanGraph(graph_json=graph_json, graph=graph, facts=facts)
    d_shape = discriminator_shape(plan, shape[2:])
    d_json = _traced(gov, cfg, plan.adversarial.discriminator, d_shape)
    try:
        d_graph, d_facts = check.validate(
            d_json, loss=check.DISCRIMINATOR, input_shape=d_shape,
            max_parameters=max(0, max_parameters - facts.parameters))
    except Refused as exc:
        raise Refused(f"the discriminator: {exc}", code=FailureCode.MODEL) from None
    return PlanGraph(graph_json=graph_json, graph=graph, facts=check.combine(facts, d_facts),
                     discriminator_json=d_json, discriminator=d_graph,
                     discriminator_facts=d_facts)
