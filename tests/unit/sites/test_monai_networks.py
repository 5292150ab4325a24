"""A plan may build its network from MONAI (`monai.networks.nets`): the sealed tracer
imports MONAI, runs the researcher's source, and the site validates the traced graph like
any other; MONAI never runs where the private data is."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.code_review import review_model_code
from policies.contract.model_code import build_model, trainable_parameters
from policies.contract.plan import load_plan
from policies.schema import DEFAULT_FUNCTIONS, DEFAULT_LAYERS

EXAMPLE = Path(__file__).resolve().parents[3] / "researcher" / "examples" / "segment_monai.yaml"


def _findings(source: str, class_name: str, monai_nets=("UNet",)) -> list[str]:
    return [f.rule for f in review_model_code(source, class_name, DEFAULT_LAYERS,
                                              DEFAULT_FUNCTIONS, frozenset(monai_nets))]


def test_a_monai_network_needs_the_policys_opt_in_by_name():
    """Red team, issue 17: a MONAI network builds layers (ConvTranspose3d, PReLU, ...)
    that the policy's `layers` list never sees, so a data owner who narrowed it was
    bypassed. A MONAI network is refused unless the policy names it."""
    from policies.schema import SitePolicy

    spec = load_plan(EXAMPLE).model
    assert _findings(spec.source, spec.class_name, ()) == ["model_code.monai"]
    assert _findings(spec.source, spec.class_name, ("BasicUNet",)) == ["model_code.monai"]
    assert _findings(spec.source, spec.class_name, ("UNet",)) == []
    base = {"version": 1, "reviewers": ["dpo"], "datasets": {"d": {
        "access": {"domains": ["*"]},
        "privacy": {"delta_max": 1e-5, "epsilon_per_plan": 8, "epsilon_total": 50},
        "training": {"max_rounds": 3}}}}
    assert SitePolicy.model_validate(base).datasets["d"].model_code.monai_nets == []
    base["datasets"]["d"]["model_code"] = {"monai_nets": ["UNet", "TorchHub"]}
    with pytest.raises(ValueError, match="unknown MONAI network"):
        SitePolicy.model_validate(base)


def test_the_review_accepts_monai_networks_and_nothing_else_of_monai():
    spec = load_plan(EXAMPLE).model
    assert _findings(spec.source, spec.class_name) == []
    for elsewhere in ("monai.apps.download_url", "monai.networks.nets.torch",
                      "monai.networks.blocks.Convolution", "monai.data.Dataset"):
        source = spec.source.replace("monai.networks.nets.UNet", elsewhere)
        assert "model_code.module_chain" in _findings(source, spec.class_name), elsewhere


def test_the_sealed_tracer_builds_a_monai_unet_into_a_graph_the_site_validates():
    from sites.graph import check
    from sites.sandbox import launcher, tracing

    plan = load_plan(EXAMPLE)
    graph_json = tracing.trace_model(
        plan.model.model_dump_json(), [1, 1, 16, 16, 16], 120.0,
        launcher.SandboxSettings(memory_mib=4096, cpu_seconds=120, threads=1))
    graph, facts = check.validate(graph_json, loss="dice_ce", max_parameters=10**6,
                                  classes=3)
    model = build_model(plan.model)
    expected = trainable_parameters(model)
    assert facts.parameters == sum(p.numel() for p in expected.values())
    assert {p.name for p in graph.params} == set(expected)  # the researcher can load it back
    ops = {n.op for n in graph.nodes}
    assert "aten.conv_transpose3d.input" in ops and "aten.group_norm.default" in ops


def test_a_monai_network_that_mixes_samples_is_refused_at_build():
    spec = load_plan(EXAMPLE).model
    source = spec.source.replace('norm=("group", {"num_groups": 1})', 'norm="batch"')
    from policies.contract.errors import Refused

    with pytest.raises(Refused, match="BatchNorm"):
        build_model(spec.model_copy(update={"source": source}))
