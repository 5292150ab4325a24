"""Review that cannot be stalled or misled: bounded parsing, sticky-denial fingerprints and
parameter counts that never ask the model. (The same attacks against a live site are in
tests/security/test_request_surface.py.)"""

from __future__ import annotations

import ast

import pytest
import torch
from torch import nn

from policies.code_review import review_model_code
from policies.contract.errors import Refused
from policies.contract.model_code import build_model, parameter_count, trainable_parameters
from policies.contract.parsing import MAX_DEPTH, TooComplex, bounded_parse
from policies.contract.template import TemplateMismatch, extract_plan, render_source
from policies.schema import DEFAULT_FUNCTIONS, DEFAULT_LAYERS
from sites.governance.denials import model_fingerprint, settings_fingerprint
from tests.support.plans import make_plan, small_model_source


def _review(source: str, class_name: str = "Tiny") -> list[str]:
    return [f.rule for f in review_model_code(source, class_name, DEFAULT_LAYERS,
                                              DEFAULT_FUNCTIONS)]


@pytest.mark.parametrize("expression", [
    "1" + " + 1" * 20000,              # Python's parser runs out of recursion
    "-" * 60000 + "1",                  # ... or of memory
    "[" * 150 + "]" * 150,              # parses, but deeper than any model
    "x" + ".real" * 400,
])
def test_a_model_too_deep_to_walk_is_one_finding_not_an_exception(expression):
    source = small_model_source().replace("x = F.relu", f"z = {expression}\n        x = F.relu")
    assert _review(source) == ["model_code.depth"]


def test_bounded_parse_allows_ordinary_models_and_names_its_limit():
    assert isinstance(bounded_parse(small_model_source()), ast.Module)
    with pytest.raises(TooComplex, match=str(MAX_DEPTH)):
        bounded_parse("y = " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))


def test_submitted_code_too_deep_for_the_parser_is_not_the_template():
    for source in ("def f(data, weights):\n    return " + "1" + "+1" * 20000,
                   "def f(data, weights):\n    return " + "-" * 60000 + "1"):
        with pytest.raises(TemplateMismatch, match="nested too deeply"):
            extract_plan(source)
    plan = make_plan()
    assert extract_plan(render_source(plan)) == plan


def test_review_names_methods_that_redefine_nn_module_machinery():
    source = small_model_source().replace(
        "    def forward(self, x):",
        "    def parameters(self, recurse=True):\n        return []\n\n"
        "    def forward(self, x):")
    assert "model_code.override" in _review(source)
    helper = small_model_source().replace(
        "    def forward(self, x):",
        "    def _block(self, x):\n        return x\n\n    def forward(self, x):")
    assert _review(helper) == []  # private helpers of one's own are fine


class _Honest(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(50, 50)
        self.shared = nn.Linear(3, 3)
        self.again = self.shared  # same module twice: counted once, as torch does
        self.head = nn.Sequential(nn.Linear(3, 1), nn.ReLU())


class _Liar(_Honest):
    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter([])

    def named_parameters(self, *args, **kwargs):  # type: ignore[override]
        return iter([])

    def named_modules(self, *args, **kwargs):  # type: ignore[override]
        return iter([])


def test_trainable_parameters_never_ask_the_model():
    model = _Liar()
    assert list(model.named_parameters()) == []
    found = trainable_parameters(model)
    assert list(found) == [n for n, _ in _Honest().named_parameters()]  # torch's names, order
    assert found["wide.weight"] is model.wide.weight and found["shared.bias"] is \
        model.again.bias
    assert parameter_count(model) == 50 * 50 + 50 + 12 + 4 > sum(1 for _ in model.parameters())


def test_trainable_parameters_match_torch_for_an_ordinary_model():
    torch.manual_seed(0)
    model = build_model(make_plan().model)
    assert list(trainable_parameters(model)) == [n for n, _ in model.named_parameters()]


def test_a_module_that_hides_torchs_bookkeeping_is_refused():
    model = nn.Linear(2, 2)
    object.__getattribute__(model, "__dict__")["_parameters"] = ["not", "a", "dict"]
    with pytest.raises(Refused, match="bookkeeping"):
        trainable_parameters(model)


def test_denial_fingerprints_see_through_renames_versions_and_layout():
    plan = make_plan(name="one", version=1)
    relabelled = plan.model_copy(update={"name": "two", "version": 7,
                                         "researcher": "someone@else.org"})
    assert model_fingerprint(relabelled) == model_fingerprint(plan)
    assert settings_fingerprint(relabelled) == settings_fingerprint(plan)
    reformatted = make_plan(source=small_model_source().replace(
        "super().__init__()", "super().__init__()   # same model\n"))
    assert model_fingerprint(reformatted) == model_fingerprint(plan)
    faster = plan.model_copy(update={"learning_rate": 0.5})
    assert model_fingerprint(faster) == model_fingerprint(plan)
    assert settings_fingerprint(faster) != settings_fingerprint(plan)
    other = make_plan(source=small_model_source().replace("4, 3, stride=2", "8, 3, stride=2")
                      .replace("GroupNorm(2, 4)", "GroupNorm(2, 8)")
                      .replace("Linear(4, 1)", "Linear(8, 1)"), epsilon=2.0)
    assert model_fingerprint(other) != model_fingerprint(plan)
    assert settings_fingerprint(other) != settings_fingerprint(plan)


def test_the_steward_takes_one_request_per_researcher_least_recently_served_first():
    from types import SimpleNamespace

    from sites.review.steward import fair_turn

    def req(who: str, at: float, rid: str):
        return SimpleNamespace(requesting_user_verify_key=who, id=rid,
                               request_time=SimpleNamespace(utc_timestamp=at))

    flood = [req("mallory", t, f"m{t}") for t in (1.0, 2.0, 3.0, 4.0)]
    ada = req("ada", 5.0, "a")
    turn = fair_turn(flood + [ada], served={"mallory": 100.0, "ada": 50.0})
    assert [r.id for r in turn] == ["a", "m1.0"]  # Ada first, then Mallory's oldest only
    assert [r.id for r in fair_turn(flood + [ada], served={})] == ["m1.0", "a"]


# -- measuring a model in the sealed tracer -----------------------------------------------------
SETTINGS = dict(memory_mib=4096, cpu_seconds=60, threads=1)


def test_the_sealed_tracer_measures_what_the_site_trains():
    from sites.graph import check
    from sites.sandbox import launcher, tracing

    spec = make_plan(name="count").model
    graph_json = tracing.trace_model(spec.model_dump_json(), [1, 2, 8, 8, 8], 60.0,
                                     launcher.SandboxSettings(**SETTINGS))
    _, facts = check.validate(graph_json, loss="bce_with_logits", max_parameters=10**6)
    expected = sum(p.numel() for p in trainable_parameters(build_model(spec)).values())
    assert facts.parameters == expected


def test_a_model_that_never_finishes_building_times_out():
    from sites.sandbox import launcher, tracing

    source = small_model_source().replace("super().__init__()",
                                          "super().__init__()\n        while True:\n"
                                          "            pass")
    spec = make_plan(name="spin", source=source).model
    with pytest.raises(tracing.TraceError, match="timed out") as exc:
        tracing.trace_model(spec.model_dump_json(), [1, 2, 8, 8, 8], 2.0,
                            launcher.SandboxSettings(**SETTINGS))
    assert not isinstance(exc.value, tracing.SiteBusy)


def test_a_models_error_reaches_people_as_one_printable_line():
    """The tracer's error is the researcher's own words, shown to the data owner: no
    terminal escapes, no bidi override, no fake verdict lines, bounded."""
    from sites.sandbox import launcher, tracing

    words = ("\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\u202e ok\\n  training.graph  pass  validated\\r"
             + "x" * 2000)
    source = small_model_source().replace(
        "super().__init__()", f"super().__init__()\n        raise ValueError('{words}')")
    spec = make_plan(name="loud", source=source).model
    with pytest.raises(tracing.TraceError) as exc:
        tracing.trace_model(spec.model_dump_json(), [1, 2, 8, 8, 8], 30.0,
                            launcher.SandboxSettings(**SETTINGS))
    text = str(exc.value)
    assert "ValueError" in text and "training.graph" in text
    assert all(ch.isprintable() for ch in text)  # no \\x1b, \\x07, \\u202e, \\n, \\r
    assert len(text) <= tracing.MAX_ERROR


DEEP_ANSWER = """
class Deep(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        os = torch.serialization.os
        line = b'{"graph":' + b"[" * 1000000 + b"\\n"
        for fd in range(3, 64):
            try:
                os.write(fd, line)
                break
            except OSError:
                pass
        os._exit(0)

    def forward(self, x):
        return x
"""


def test_an_answer_written_by_the_model_itself_is_a_trace_error_however_deep():
    """The model can find the tracer's answer pipe; a million brackets once escaped
    `trace_model` as RecursionError (never cached: traced again at every listing)."""
    from sites.sandbox import launcher, tracing

    spec = make_plan(name="deep", source=DEEP_ANSWER, class_name="Deep").model
    with pytest.raises(tracing.TraceError, match="without an answer|malformed"):
        tracing.trace_model(spec.model_dump_json(), [1, 2, 8, 8, 8], 30.0,
                            launcher.SandboxSettings(**SETTINGS))


def test_a_failed_trace_is_tried_again_once_it_is_old(site_dir):
    """A timeout under load must not fail a model for good; a good graph is kept."""
    from sites.governance.store import Governance

    gov = Governance(site_dir)
    gov.cache_graph("bad", None, "tracing the model timed out")
    gov.cache_graph("good", '{"graph": 1}', None)
    assert gov.cached_graph("bad", error_ttl_s=600) == (None, "tracing the model timed out")
    assert gov.cached_graph("bad", error_ttl_s=-1) is None
    assert gov.cached_graph("good", error_ttl_s=-1) == ('{"graph": 1}', None)


def test_a_site_too_busy_to_start_the_tracer_is_not_held_against_the_model(site_dir,
                                                                           monkeypatch):
    """The timeout runs from the tracer's `ready`: under load (two test workers, each with
    sites and training processes) starting torch alone took longer than review_timeout_s,
    and the cached timeout then failed the model for good. A tracer that does not start in
    time is `SiteBusy`, never cached."""
    from sites.governance.store import Governance
    from sites.operator.site import Site
    from sites.review import console
    from sites.sandbox import tracing

    site = Site.open(site_dir)
    gov = Governance(site_dir)
    gov.register_dataset("brain-mri-pet", "c" * 32, 40, "test", actor="test",
                         volume_shape=(8, 8, 8))
    policy, _ = site.policy()
    plan = make_plan(name="busy")
    monkeypatch.setattr(tracing, "STARTUP_GRACE_S", 0.01)
    facts, error = console.measured_graph(gov, site.config, policy, plan)
    assert facts is None and "did not start in time" in error
    monkeypatch.setattr(tracing, "STARTUP_GRACE_S", 120.0)
    facts, error = console.measured_graph(gov, site.config, policy, plan)  # not cached
    assert error is None and facts.parameters == sum(
        p.numel() for p in trainable_parameters(build_model(plan.model)).values())
