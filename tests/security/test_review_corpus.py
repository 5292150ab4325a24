"""A corpus of non-compliant and hostile plans; each is refused with the specific rule named.

Model-code cases inject one statement into an otherwise clean model; policy cases change one
field of the plan or one fact the site knows. The control case passes every rule.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from policies.schema import load_policy
from policies.verdict import Facts, review_plan
from tests.support.plans import make_plan

POLICY, _ = load_policy(Path(__file__).resolve().parents[1] / "policies" / "corpus.yaml")

BASE = '''
class M(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)
        {init}

    def forward(self, x):
        x = F.relu(self.conv(x))
        {forward}
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def model(forward: str = "pass", init: str = "pass", prefix: str = "", cls: str = "") -> str:
    src = prefix + BASE.format(forward=forward, init=init)
    return src.replace("class M(nn.Module):", cls) if cls else src


# (category, source, expected rule)
CODE_CASES = [
    ("imports", model("import os"), "model_code.import"),
    ("imports", model("from torch import hub"), "model_code.import"),
    ("imports", model(prefix="import torch\n"), "model_code.import"),
    ("builtins", model('y = eval("1")'), "model_code.builtin"),
    ("builtins", model('f = open("/etc/passwd")'), "model_code.builtin"),
    ("builtins", model('g = getattr(self, "conv")'), "model_code.builtin"),
    ("builtins", model('setattr(self, "k", x)'), "model_code.builtin"),
    ("builtins", model("v = globals()"), "model_code.builtin"),
    ("builtins", model('m = __import__("os")'), "model_code.builtin"),
    ("builtins", model('c = compile("1", "f", "eval")'), "model_code.builtin"),
    ("builtins", model('exec("y = 1")'), "model_code.builtin"),
    ("builtins", model("print(x)"), "model_code.builtin"),
    ("introspection", model("k = x.__class__.__mro__"), "model_code.dunder"),
    ("introspection", model("b = self.forward.__globals__"), "model_code.dunder"),
    ("introspection", model("s = ().__class__.__bases__[0].__subclasses__()"),
     "model_code.dunder"),
    ("introspection", model("d = self.__dict__"), "model_code.dunder"),
    ("module chains", model("o = torch.serialization.os"), "model_code.module_chain"),
    ("module chains", model('h = torch.hub.load("a", "b")'), "model_code.module_chain"),
    ("module chains", model('e = torch.utils.cpp_extension.load_inline("a", "b")'),
     "model_code.module_chain"),
    ("module chains", model("op = torch.ops.aten.add"), "model_code.module_chain"),
    ("module chains", model("dd = torch.distributed.init_process_group"),
     "model_code.module_chain"),
    ("file writes", model('torch.save(x, "out.pt")'), "model_code.function"),
    ("file writes", model('x.numpy().tofile("leak.bin")'), "model_code.escape"),
    ("file writes", model('x.detach().numpy().dump("f")'), "model_code.escape"),
    ("file writes", model("t = x.tolist()"), "model_code.escape"),
    ("file writes", model("st = x.untyped_storage()"), "model_code.escape"),
    ("state writes", model("self.conv.weight.data.copy_(x)"), "model_code.data_grad"),
    ("state writes", model("self.seen = x"), "model_code.state_write"),
    ("state writes", model("self.head.bias += 1"), "model_code.state_write"),
    ("state writes", model("self.conv.weight.add_(1.0)"), "model_code.in_place"),
    ("state writes", model(cls="class M(nn.Module):\n    cache = []"),
     "model_code.class_attribute"),
    ("state writes", model('self._buffers["b"] = x'), "model_code.private_attr"),
    ("state writes", model("global LEAK"), "model_code.global"),
    ("state writes", model("g = self.conv.weight.grad"), "model_code.data_grad"),
    ("state writes", model('self.register_buffer("b", x)'), "model_code.state_write"),
    ("state writes", model("self.load_state_dict({})"), "model_code.module_api"),
    ("batch mixing", model("x = x - x.mean(0)"), "model_code.batch_mixing"),
    ("batch mixing", model("x = x + x.sum()"), "model_code.batch_mixing"),
    ("batch mixing", model("x = x * torch.mean(x, dim=0)"), "model_code.batch_mixing"),
    ("batch mixing", model("y = torch.mm(x.flatten(1), x.flatten(1).t())"),
     "model_code.batch_mixing"),
    ("batch mixing", model("x = x.transpose(0, 1)"), "model_code.batch_mixing"),
    ("batch mixing", model("y = x.view(-1)"), "model_code.batch_mixing"),
    ("batchnorm", model(init="self.bn = nn.BatchNorm3d(4)"), "model_code.layer"),
    ("batchnorm", model("x = F.batch_norm(x, None, None, training=True)"),
     "model_code.function"),
    ("structure", model(cls="class M(object):"), "model_code.structure"),
    ("structure", model(prefix="x = 1\n"), "model_code.structure"),
]


def _facts(**kw) -> Facts:
    base = dict(researcher="ada@lovelace-institute.org", institution="Lovelace Institute",
                today=date(2026, 1, 1), cohort_n=400, noise_multiplier=1.0, n_parameters=5000)
    return Facts(**(base | kw))


def _plan(**kw):
    plan = make_plan(rounds=4, researcher="ada@lovelace-institute.org", class_name="M",
                     source=model())
    return plan.model_copy(update={"batch_size": 32, **kw})


POLICY_CASES = [
    ("huge model", {}, {"n_parameters": 50_000_000}, "training.parameters"),
    ("too many rounds", {"rounds": 50}, {}, "training.rounds"),
    ("too many epochs", {"local_epochs": 20}, {}, "training.local_epochs"),
    ("batch outside range", {"batch_size": 2}, {}, "training.batch_size"),
    ("ε above cap", {"dp": {"target_epsilon": 20.0, "delta": 1e-5, "max_grad_norm": 1.0}}, {},
     "privacy.epsilon_per_plan"),
    ("δ above cap", {"dp": {"target_epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}}, {},
     "privacy.delta"),
    ("clip norm above cap", {"dp": {"target_epsilon": 8.0, "delta": 1e-5,
                                    "max_grad_norm": 50.0}}, {}, "privacy.max_grad_norm"),
    ("σ too small", {}, {"noise_multiplier": 0.1}, "privacy.noise_multiplier"),
    ("total ε exhausted", {}, {"epsilon_committed": 10.0}, "privacy.epsilon_total"),
    ("unknown researcher", {}, {"researcher": "eve@elsewhere.org"}, "access.researcher"),
    ("wrong institution", {}, {"institution": "Elsewhere Corp"}, "access.institution"),
    ("expired access", {}, {"today": date(2026, 7, 1)}, "access.expires"),
    ("wrong dataset", {"dataset": "other-dataset"}, {}, "dataset"),
]


def failing_rules(plan, facts) -> set[str]:
    return {ln.rule for ln in review_plan(POLICY, plan, facts) if ln.failed}


def test_control_plan_passes_every_rule():
    assert failing_rules(_plan(), _facts()) == set()


@pytest.mark.parametrize("category,source,rule", CODE_CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CODE_CASES)])
def test_hostile_model_code_is_refused_with_its_rule(category, source, rule):
    plan = _plan().model_copy(update={"model": _plan().model.model_copy(
        update={"source": source})})
    failing = failing_rules(plan, _facts())
    assert rule in failing, f"{category}: expected {rule}, got {sorted(failing)}"
    lines = [ln for ln in review_plan(POLICY, plan, _facts()) if ln.rule == rule]
    assert all(not ln.overridable for ln in lines)  # code findings are never overridden


@pytest.mark.parametrize("name,plan_update,facts_update,rule", POLICY_CASES,
                         ids=[c[0] for c in POLICY_CASES])
def test_non_compliant_plan_is_refused_with_its_rule(name, plan_update, facts_update, rule):
    update = dict(plan_update)
    if "dp" in update:
        update["dp"] = _plan().dp.model_copy(update=update["dp"])
    failing = failing_rules(_plan(**update), _facts(**facts_update))
    assert rule in failing, f"{name}: expected {rule}, got {sorted(failing)}"


def test_corpus_is_large_enough():
    assert len(CODE_CASES) + len(POLICY_CASES) >= 30
