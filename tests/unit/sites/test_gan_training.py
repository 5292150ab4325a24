"""The GAN's two DP-SGD updates (`sites.sandbox.dp_sgd.train_gan`): each clips every
sample's gradient, so one subject moves either network by at most C per update, and the
generator's update is the plain one plus the adversarial term."""

from __future__ import annotations

import torch
import torch.nn as nn

from sites.graph import check
from sites.graph.execute import compile_graph
from sites.graph.export import trace
from sites.sandbox import dp_sgd
from tests.support.seeded import SeededRandomness

GRID = (4, 4, 4)


class _G(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class _D(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, stride=2, padding=1)
        self.head = nn.Conv3d(2, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def _compiled(model: nn.Module, shape: list[int], loss: str):
    graph, _ = check.validate(trace(model, shape).canonical_json(), loss=loss,
                              max_parameters=10_000)
    return compile_graph(graph), {p.name: torch.randn(p.shape) * 0.3 for p in graph.params}


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    g, g0 = _compiled(_G(), [1, 1, *GRID], "l2")
    d, d0 = _compiled(_D(), [1, 2, *GRID], check.DISCRIMINATOR)
    return g, g0, d, d0


def _cfg(**kw) -> dp_sgd.DPConfig:
    base = dict(sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=1.0, steps=1, loss="l2",
                optimizer="sgd", learning_rate=1.0, expected_batch=1.0)
    base.update(kw)
    return dp_sgd.DPConfig(**base)


def _moved(after: dict, before: dict) -> float:
    return float(torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)))


def test_one_subject_moves_each_network_by_at_most_c_per_update():
    g, g0, d, d0 = _nets()
    x = torch.full((1, 1, *GRID), 300.0)  # one extreme subject: huge gradients
    y = torch.full((1, *GRID), -300.0)
    loose = dp_sgd.train_gan(g, d, g0, d0, x, y, _cfg(max_grad_norm=1e9), 1.0,
                             torch.device("cpu"))
    assert _moved(loose[0], g0) > 10 and _moved(loose[1], d0) > 1  # unclipped: far
    for c in (1.0, 0.25):
        g1, d1 = dp_sgd.train_gan(g, d, g0, d0, x, y, _cfg(max_grad_norm=c), 1.0,
                                  torch.device("cpu"))
        assert _moved(d1, d0) <= c * (1 + 1e-4)
        assert _moved(g1, g0) <= c * (1 + 1e-4)


def test_the_generator_update_is_the_plain_update_plus_the_adversarial_term():
    g, g0, d, d0 = _nets(1)
    torch.manual_seed(5)
    x, y = torch.randn(6, 1, *GRID), torch.randn(6, *GRID)
    cfg = _cfg(sample_rate=0.5, noise_multiplier=0.7, steps=2, learning_rate=0.1,
               expected_batch=3.0)
    plain = dp_sgd.train(g, g0, x, y, cfg, torch.device("cpu"), SeededRandomness(11))
    g_zero, d_zero = dp_sgd.train_gan(g, d, g0, d0, x, y, cfg, 0.0, torch.device("cpu"),
                                      SeededRandomness(11), d_rng=SeededRandomness(13))
    for k in plain:  # λ = 0: the same batches, noise and update as a plain round
        assert torch.allclose(plain[k], g_zero[k], atol=1e-6)
    assert _moved(d_zero, d0) > 0  # the discriminator trained all the same
    g_adv, _ = dp_sgd.train_gan(g, d, g0, d0, x, y, cfg, 5.0, torch.device("cpu"),
                                SeededRandomness(11), d_rng=SeededRandomness(13))
    assert _moved(g_adv, plain) > 1e-4


def test_a_gans_memory_counts_the_discriminators_two_passes():
    """Red team, issue 17: the discriminator's update runs it on the real and on the
    generated target, both kept for the gradient; an estimate of one pass let a large
    discriminator pass review and run out of memory after the round was charged."""
    g_graph, g_facts = check.validate(trace(_G(), [1, 1, *GRID]).canonical_json(), loss="l2",
                                      max_parameters=10_000)
    d_graph, d_facts = check.validate(trace(_D(), [1, 2, *GRID]).canonical_json(),
                                      loss=check.DISCRIMINATOR, max_parameters=10_000)
    both = check.combine(g_facts, d_facts)
    assert d_facts.activation_bytes > 0
    assert both.activation_bytes == g_facts.activation_bytes + 2 * d_facts.activation_bytes
    assert both.parameters == g_facts.parameters + d_facts.parameters
