"""The training graph: traced from a model, validated as data, evaluated without the model."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from policies.contract.errors import Refused
from policies.contract.model_code import build_model, parameter_count
from policies.contract.plan import ModelSpec
from sites.graph import check
from sites.graph.execute import compile_graph
from sites.graph.export import trace
from sites.sandbox import dp_sgd
from tests.support.graphs import graph_of

DEMO = open("researcher/examples/small_cnn3d.py").read()
SHAPE = [1, 2, 12, 12, 12]


def demo_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(source=DEMO, class_name="SmallCNN3D",
                                 kwargs={"in_channels": 2, "width": 8}))


def test_the_demo_model_becomes_a_graph_with_its_parameters_and_operators():
    model = demo_model()
    graph, facts = graph_of(model, SHAPE)
    assert facts.parameters == parameter_count(model)
    assert [p.name for p in graph.params] == [k for k, _ in model.named_parameters()]
    assert facts.operators["aten.conv3d.default"] == 2
    assert facts.operators["aten.group_norm.default"] == 3
    assert facts.activation_bytes > 0 and facts.output_shape == [1, 1]
    assert facts.digest == graph.digest()


def test_per_sample_gradients_over_the_graph_equal_the_models_own():
    model = demo_model()
    graph, _ = graph_of(model, SHAPE)
    forward = compile_graph(graph)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(5, *SHAPE[1:]), torch.tensor([1.0, 0, 1, 0, 1])
    loss = dp_sgd.LOSSES["bce_with_logits"]
    via_graph = dp_sgd.per_sample_gradients(forward, params, loss, x, y)

    def eager(p, xi, yi):
        return loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    via_model = vmap(grad(eager), in_dims=(None, 0, 0))(params, x, y)
    for k in params:
        torch.testing.assert_close(via_graph[k], via_model[k], rtol=0, atol=0)


def _demo_json() -> dict:
    return json.loads(trace(demo_model(), SHAPE).canonical_json())


def _validate(doc: dict, **kw):
    return check.validate(json.dumps(doc), loss=kw.pop("loss", "bce_with_logits"),
                          max_parameters=kw.pop("max_parameters", 10**7), **kw)


@pytest.mark.parametrize("op", [
    "aten.randn.default",            # random numbers outside dropout
    "aten.add_.Tensor",              # in place (on a parameter)
    "aten.copy_.default",            # writes into its first argument
    "aten._native_batch_norm_legit_no_training.default",
    "aten.mean.default",             # a reduction that names no dimension
    "aten.empty.memory_format",      # a tensor from sizes alone
])
def test_an_operator_outside_the_allowlist_written_into_the_graph_is_refused(op):
    doc = _demo_json()
    doc["nodes"][1]["op"] = op  # what a compromised tracer could write by hand
    with pytest.raises(Refused, match="training graph refused"):
        _validate(doc)


def test_io_and_arbitrary_names_cannot_even_be_spelled():
    for op in ("builtins.open", "aten.conv3d.default; import os", "torch.ops.aten.save",
               "os.system"):
        doc = _demo_json()
        doc["nodes"][0]["op"] = op
        with pytest.raises(Refused, match="malformed"):
            _validate(doc)


def test_a_parameter_written_in_place_refuses_the_trace():
    class WritesItsBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            with torch.no_grad():
                self.lin.bias.add_(1000.0)
            return self.lin(x)

    with pytest.raises(Refused, match="change nothing"):
        trace(WritesItsBias(), [1, 4])


def test_a_buffer_refuses_the_trace():
    class CopiesInputIntoABuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)
            self.register_buffer("seen", torch.zeros(4))

        def forward(self, x):
            self.seen.copy_(x.reshape(-1)[:4])
            return self.lin(x)

    with pytest.raises(Refused, match="buffer"):
        trace(CopiesInputIntoABuffer(), [1, 4])


def test_data_dependent_control_flow_is_refused_with_a_clear_message():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else -self.lin(x)

    with pytest.raises(Refused, match="cannot be traced into a static graph"):
        trace(Branches(), [1, 4])


def test_batchnorm_is_refused_with_the_groupnorm_hint():
    model = nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.Flatten(),
                          nn.Linear(4 * 4 ** 3, 1))
    with pytest.raises(Refused, match="BatchNorm.*use GroupNorm"):
        trace(model, [1, 2, 6, 6, 6])


def test_a_reduction_over_the_batch_dimension_is_refused():
    class Mixes(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x - x.mean(dim=0, keepdim=True))

    with pytest.raises(Refused, match="batch dimension"):
        graph_of(Mixes(), [1, 4])


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["nodes"][0]["args"].__setitem__(0, {"t": "param:nope"}), "not defined"),
    (lambda d: d["nodes"][0]["args"].__setitem__(0, {"t": d["nodes"][-1]["name"]}),
     "not defined"),                                            # used before it is computed
    (lambda d: d.__setitem__("output", {"t": "input"}), "not computed"),
    (lambda d: d["nodes"][1].__setitem__("name", d["nodes"][0]["name"]), "used twice"),
    (lambda d: d["nodes"][1]["args"].append(2**40), "out of range"),
    (lambda d: d.__setitem__("guards_code", "import os"), "malformed"),
    (lambda d: d["params"].append(d["params"][0]), "listed twice"),
    (lambda d: d.__setitem__("input_shape", [2, 2, 12, 12, 12]), "batch dimension"),
])
def test_a_tampered_graph_is_refused(mutate, match):
    doc = _demo_json()
    mutate(doc)
    with pytest.raises(Refused, match=match):
        _validate(doc)


def _bomb(first_args: list) -> dict:
    """Red team (issue 14): an operator on numbers alone gives a real CPU tensor, which
    `expand` and `clone` then grew to 3 GiB inside the site process during validation."""
    def node(name, op, *args):
        return {"name": name, "op": op, "args": list(args), "kwargs": {}}
    nodes = [node("s", "aten.add.Tensor", *first_args),
             node("e", "aten.expand.default", {"t": "s"}, [1 << 14, 1 << 14]),
             node("c", "aten.clone.default", {"t": "e"}),
             node("out", "aten.view.default", {"t": "input"}, [1, -1])]
    return {"input_shape": [1, 1], "params": [], "nodes": nodes, "output": {"t": "out"}}


def test_an_operator_on_numbers_alone_never_computes_a_real_tensor():
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(Refused, match="node s: .*graph's tensors"):
        _validate(_bomb([0.5, 0.5]))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB
    with pytest.raises(Refused, match="node s: .*graph tensor"):  # nor one smuggled in a list
        _validate(_bomb([{"t": "input"}, [0.5]]))
    doc = _bomb([{"t": "input"}, 0.5])  # a number beside a graph tensor is ordinary
    doc["nodes"] = [doc["nodes"][0], {"name": "out", "op": "aten.view.default",
                                      "args": [{"t": "s"}, [1, -1]], "kwargs": {}}]
    _validate(doc)


def test_non_finite_numbers_do_not_parse_into_a_graph():
    text = trace(demo_model(), SHAPE).canonical_json().replace("1e-05", "NaN", 1)
    with pytest.raises(Refused):
        check.validate(text, loss="bce_with_logits", max_parameters=10**7)


def test_the_parameter_cap_is_checked_on_the_graph():
    with pytest.raises(Refused, match="the policy allows"):
        _validate(_demo_json(), max_parameters=100)


def test_the_output_must_fit_the_loss():
    with pytest.raises(Refused, match="cross_entropy"):
        _validate(_demo_json(), loss="cross_entropy")


def test_the_graph_must_be_traced_for_the_sites_data():
    with pytest.raises(Refused, match="traced for input"):
        _validate(_demo_json(), input_shape=[1, 2, 24, 24, 24])


def test_dropout_draws_per_sample_from_the_sites_generator():
    class Drops(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 1)

        def forward(self, x):
            return self.lin(F.dropout(x, 0.5, training=True))

    graph, facts = graph_of(Drops(), [1, 8])
    assert "aten.dropout.default" in facts.operators
    doc = json.loads(graph.canonical_json())
    doc["nodes"][0]["args"][1] = 1.5
    with pytest.raises(Refused, match="dropout"):
        _validate(doc)
