"""DP-SGD mechanics: clipping bound, noise scale, per-sample independence, release."""

import torch
from torch import nn

from sites.sandbox import dp_sgd
from tests.support.graphs import forward_of, start_of
from tests.support.seeded import SeededRandomness


def test_each_per_sample_gradient_is_clipped_to_the_bound():
    torch.manual_seed(0)
    grads = {"a": torch.randn(16, 5, 3) * 10, "b": torch.randn(16, 7)}
    for i in range(16):  # one sample at a time: the clipped sum is the clipped gradient
        one = {k: v[i:i + 1] for k, v in grads.items()}
        clipped = dp_sgd.clip_and_sum(one, max_norm=1.5)
        norm = torch.sqrt(sum((v ** 2).sum() for v in clipped.values()))
        assert norm <= 1.5 + 1e-4


def test_gradients_under_the_bound_are_left_alone():
    grads = {"a": torch.full((1, 4), 0.1)}
    clipped = dp_sgd.clip_and_sum(grads, max_norm=10.0)
    torch.testing.assert_close(clipped["a"], grads["a"][0], rtol=1e-5, atol=1e-6)


def test_a_sample_whose_gradient_is_not_finite_contributes_nothing():
    """One sample's NaN, inf or overflowing norm must not turn the sum non-finite: whether
    a round is released would then answer a question about that sample."""
    torch.manual_seed(0)
    grads = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    clean = dp_sgd.clip_and_sum({k: v[:1] for k, v in grads.items()}, 1.0)
    grads["a"][1, 0] = float("nan")
    grads["b"][2, 1] = float("inf")
    grads["a"][3] = 3e38  # finite, but its norm overflows float32
    summed = dp_sgd.clip_and_sum(grads, 1.0)
    for k in grads:
        assert torch.isfinite(summed[k]).all()
        torch.testing.assert_close(summed[k], clean[k])


def test_noise_has_the_stated_scale_and_is_gaussian():
    from scipy import stats

    zeros = {"w": torch.zeros(200_000)}
    noisy = dp_sgd.add_noise(zeros, std=2.5)["w"]  # the site's CSPRNG
    assert noisy.dtype == torch.float32
    assert abs(noisy.std().item() - 2.5) < 0.03
    assert abs(noisy.mean().item()) < 0.03
    assert stats.kstest(noisy.double().numpy() / 2.5, "norm").pvalue > 1e-6


def test_secure_uniforms_fill_the_unit_interval_with_53_bits():
    from sites.sandbox.randomness import SecureRandomness

    u = SecureRandomness().uniform(100_000)
    assert u.dtype == torch.float64 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert len(torch.unique(u)) == len(u)  # 53-bit draws: no collisions at this size
    fractional = (u * 2 ** 40) % 1  # bits below 2^-40 are random too (not a float32 draw)
    assert float(fractional.std()) > 0.2


def test_the_noise_cannot_be_replayed_from_any_seed_the_process_holds():
    """Red team, issue 17: the noise came from torch generators seeded with the job's seed,
    and torch's CPU generator keeps only its seed's low 32 bits, so a researcher could
    search 2^32 seeds offline for the one whose noise explains a released update and
    subtract it. Now no seed reaches DP-SGD: the same torch and numpy state before two
    runs (the training child seeds torch with the job's seed, for dropout) gives two
    different noised updates, and the Poisson draws differ too."""
    import numpy as np

    model = nn.Sequential(nn.Linear(4, 1))
    torch.manual_seed(0)
    start = start_of(model)
    x, y = torch.randn(64, 4), (torch.rand(64) > 0.5).float()
    cfg = dp_sgd.DPConfig(sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0, steps=1,
                          learning_rate=1.0, expected_batch=32.0)
    outs = []
    for _ in range(2):
        torch.manual_seed(1234)
        np.random.seed(1234)
        outs.append(dp_sgd.train(forward_of(model, [1, 4]), start, x, y, cfg,
                                 torch.device("cpu")))
    assert any(not torch.equal(outs[0][k], outs[1][k]) for k in start)
    draws = [dp_sgd.SecureRandomness().uniform(64) for _ in range(2)]
    assert not torch.equal(draws[0] < 0.5, draws[1] < 0.5)  # the batches: no replay either


class BatchMixer(nn.Module):
    """Tries to mix samples: subtracts the batch mean (a no-op under per-sample vmap)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x - x.mean(dim=0, keepdim=True) + x.sum() * 0.1)


def test_a_sample_gradient_does_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    model = BatchMixer()
    params = {k: v.detach() for k, v in model.named_parameters()}
    a, b, c = torch.randn(3, 3)
    y = torch.tensor([1.0, 0.0])
    loss = dp_sgd.LOSSES["bce_with_logits"]
    def forward(p, x):  # the model itself, not a graph: vmap alone keeps samples apart
        return torch.func.functional_call(model, p, (x,))

    g1 = dp_sgd.per_sample_gradients(forward, params, loss, torch.stack([a, b]), y)
    g2 = dp_sgd.per_sample_gradients(forward, params, loss, torch.stack([a, c]), y)
    for k in g1:
        torch.testing.assert_close(g1[k][0], g2[k][0])


def test_training_moves_parameters_from_the_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))
    start = start_of(model)
    x, y = torch.randn(40, 4), (torch.rand(40) > 0.5).float()
    cfg = dp_sgd.DPConfig(sample_rate=0.25, noise_multiplier=1.0, max_grad_norm=1.0, steps=4,
                          learning_rate=0.1)
    out = dp_sgd.train(forward_of(model, [1, 4]), start, x, y, cfg, torch.device("cpu"))
    assert any(not torch.equal(out[k], start[k]) for k in start)


def test_released_parameters_move_only_through_the_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))
    start = start_of(model)
    cfg = dp_sgd.DPConfig(sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0, steps=3,
                          learning_rate=0.0)
    out = dp_sgd.train(forward_of(model, [1, 4]), start, torch.full((20, 4), 123.0),
                       torch.ones(20), cfg, torch.device("cpu"))
    assert set(out) == set(start)
    for k in start:  # lr 0: nothing of the input reaches them
        assert torch.equal(out[k], start[k])


def test_micro_batch_shrinks_as_volumes_grow_and_bounds_the_input_per_pass():
    cpu = torch.device("cpu")
    sizes = [dp_sgd.micro_batch_size(2 * s ** 3, cpu) for s in (16, 24, 48, 64, 128, 256)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == dp_sgd.MICRO_BATCH_MAX and sizes[-1] == 1
    for s, mb in zip((16, 24, 48, 64, 128), sizes, strict=False):
        numel = 2 * s ** 3
        fits = mb * numel <= dp_sgd.MICRO_BATCH_INPUT_ELEMENTS
        assert fits or mb == 1
        assert mb == dp_sgd.MICRO_BATCH_MAX or 2 * mb * numel > dp_sgd.MICRO_BATCH_INPUT_ELEMENTS
    assert dp_sgd.micro_batch_size(2 * 64 ** 3, torch.device("meta")) == dp_sgd.MICRO_BATCH_MAX


def test_micro_batch_fits_the_activation_memory_into_half_of_what_the_process_has():
    """A policy may allow 2 GiB per sample: 32 such samples would not fit the sandbox."""
    cpu, gib = torch.device("cpu"), 1 << 30
    assert dp_sgd.micro_batch_size(2 * 16 ** 3, cpu, 2 * gib, 32 * gib) == 8
    assert dp_sgd.micro_batch_size(2 * 16 ** 3, cpu, 2 * gib, 3 * gib) == 1
    assert dp_sgd.micro_batch_size(2 * 16 ** 3, cpu, 1 << 20, 32 * gib) == dp_sgd.MICRO_BATCH_MAX
    assert dp_sgd.micro_batch_size(2 * 16 ** 3, torch.device("meta"), gib, 8 * gib) == 4
    for budget in (gib, 5 * gib, 100 * gib):
        mb = dp_sgd.micro_batch_size(2 * 16 ** 3, cpu, gib // 3, budget)
        assert mb * (gib // 3) <= budget // 2 or mb == 1


def test_micro_batching_does_not_change_the_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 ** 3, 1))
    start = start_of(model)
    forward = forward_of(model, [1, 2, 4, 4, 4])
    x, y = torch.randn(30, 2, 4, 4, 4), (torch.rand(30) > 0.5).float()
    outs = []
    for micro in (1, 7, None):
        cfg = dp_sgd.DPConfig(sample_rate=0.6, noise_multiplier=1.0, max_grad_norm=0.5, steps=3,
                              learning_rate=0.5, micro_batch=micro)
        outs.append(dp_sgd.train(forward, start, x, y, cfg, torch.device("cpu"),
                                 SeededRandomness(5)))
    for other in outs[1:]:
        for k in start:
            torch.testing.assert_close(other[k], outs[0][k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(outs[0][k], start[k]) for k in start)


def test_every_training_thread_flushes_subnormals():
    """A graph made the round's time track how many voxels cross a threshold through slow
    subnormal arithmetic; the flush was once set only on the main thread, after the
    warm-up had started the worker threads (red team, issue 14)."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from sites.sandbox import train_child\n"
        "train_child.prepare()\n"
        "torch.set_num_threads(2)\n"
        "x = torch.full((1 << 22,), 0x00400000, dtype=torch.int32).view(torch.float32)\n"
        "print(int((torch.mul(x, 1.0) != 0).sum()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "2"},
                         timeout=300, check=True)
    assert out.stdout.strip() == "0", out.stderr[-2000:]


def test_a_label_the_model_cannot_hold_contributes_nothing_instead_of_failing():
    """Label 2 under a two-class model once raised in the training child: a failed round
    answered "does any sampled subject have label >= 2?" without noise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    forward, params = forward_of(model, [1, 1, 4], "cross_entropy"), start_of(model)
    x = torch.randn(3, 1, 4)
    grads = dp_sgd.per_sample_gradients(forward, params, dp_sgd.LOSSES["cross_entropy"],
                                        x, torch.tensor([0, 2, 1]))
    for g in grads.values():
        assert torch.isfinite(g).all()
        assert torch.count_nonzero(g[1]) == 0  # the out-of-range sample: nothing
        assert torch.count_nonzero(g[0]) > 0 and torch.count_nonzero(g[2]) > 0


def test_a_padded_step_computes_the_same_work_whatever_the_draw_and_the_same_update():
    """With `step_work` every step computes that many per-sample gradients whether the
    Poisson draw took 20 subjects or 2 (zero-weighted stand-ins make up the rest), so a
    step's duration and a round's time limit cannot tell how many it took, nor N
    (red team, issue 15: the time limit answered whether N was large); the update is the
    unpadded one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))
    start = start_of(model)
    inner = forward_of(model, [1, 4])
    seen: list[int] = []

    def counting(params, x):  # micro-batch 1: one call per sample computed
        seen.append(1)
        return inner(params, x)

    for n in (10, 60):
        x, y = torch.randn(n, 4), (torch.rand(n) > 0.5).float()
        outs = []
        for work in (None, 30):
            seen.clear()
            cfg = dp_sgd.DPConfig(sample_rate=0.2, noise_multiplier=1.0, max_grad_norm=1.0,
                                  steps=3, learning_rate=0.5, micro_batch=1,
                                  expected_batch=6.0, step_work=work)
            outs.append(dp_sgd.train(counting, start, x, y, cfg, torch.device("cpu"),
                                     SeededRandomness(4)))
            calls = len(seen)
            if work:
                assert calls == 3 * 30  # every step: exactly the fixed work (draws ≤ 30)
            else:
                assert calls < 3 * 30  # unpadded: the draws alone
        for k in start:
            torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-6, atol=1e-7)
