"""Site-side augmentation inside DP-SGD (`sites.sandbox.augment`): the same transform for
a sample's inputs and its voxel target, nearest neighbour for masks, nothing mixed between
samples, the per-sample bound C unchanged; the plan's `augment` field."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from policies.contract.plan import Augmentation, TrainingPlan
from sites.graph import check
from sites.graph.execute import compile_graph
from sites.graph.export import trace
from sites.sandbox import dp_sgd
from sites.sandbox.augment import augment_batch
from tests.support.plans import make_plan
from tests.support.seeded import SeededRandomness

GRID = (8, 8, 8)


def _masks(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Blocky masks: one class per 4³ block (regions, as lesions are, not voxel noise)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 3, (n, 2, 2, 2), generator=g)
    return blocks.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)


def test_no_augmentation_is_the_identity():
    x, y = torch.randn(2, 1, *GRID), _masks(2)
    out = augment_batch(x, y, None, "mask", SeededRandomness(0))
    assert out[0] is x and out[1] is y


@pytest.mark.parametrize("spec", [Augmentation(flip=True),
                                  Augmentation(flip=True, rotate_deg=12, translate_vox=2,
                                               scale=0.1)])
def test_inputs_and_mask_move_together_and_the_mask_keeps_its_classes(spec):
    y = _masks()
    x = y.unsqueeze(1).float()  # an input that is the mask itself
    xa, ya = augment_batch(x, y, spec, "mask", SeededRandomness(1))
    assert ya.dtype == y.dtype and set(ya.unique().tolist()) <= {0, 1, 2}
    if not spec.rotate_deg:  # a flip maps voxel centres onto voxel centres: exact
        torch.testing.assert_close(xa.squeeze(1), ya.float())
        assert any(not torch.equal(ya[i], y[i]) for i in range(len(y)))
        for i in range(len(y)):  # a permutation of the voxels
            assert torch.equal(torch.bincount(ya[i].flatten(), minlength=3),
                               torch.bincount(y[i].flatten(), minlength=3))
    else:  # nearest for the mask, linear for the input: they agree where both are whole
        agree = (xa.squeeze(1).round() == ya.float()).float().mean()
        assert agree > 0.8


def test_one_sample_never_changes_another_samples_augmented_copy():
    spec = Augmentation(flip=True, rotate_deg=10, translate_vox=1.5, scale=0.1, intensity=0.2)
    x, y = torch.randn(4, 2, *GRID), torch.randn(4, *GRID)
    first = augment_batch(x, y, spec, "volume", SeededRandomness(7))
    x2, y2 = x.clone(), y.clone()
    x2[2], y2[2] = 1000.0, -1000.0
    second = augment_batch(x2, y2, spec, "volume", SeededRandomness(7))
    for i in (0, 1, 3):
        torch.testing.assert_close(first[0][i], second[0][i])
        torch.testing.assert_close(first[1][i], second[1][i])
    assert not torch.allclose(first[0][2], second[0][2])


def test_target_jitter_moves_a_synthesis_target_against_its_input():
    y = torch.randn(3, *GRID)
    x = y.unsqueeze(1).clone()
    aligned = augment_batch(x, y, Augmentation(rotate_deg=8), "volume", SeededRandomness(2))
    torch.testing.assert_close(aligned[0].squeeze(1), aligned[1])  # same transform
    jittered = augment_batch(x, y, Augmentation(rotate_deg=8, target_jitter=1.0), "volume",
                             SeededRandomness(2))
    torch.testing.assert_close(jittered[0], aligned[0])  # the input as before
    assert (jittered[1] - jittered[0].squeeze(1)).abs().max() > 0.1  # the target moved


class _Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_an_augmented_subject_still_moves_the_model_by_at_most_c():
    graph, _ = check.validate(trace(_Seg(), [1, 1, *GRID]).canonical_json(), loss="dice_ce",
                              max_parameters=10_000)
    forward = compile_graph(graph)
    torch.manual_seed(0)
    start = {p.name: torch.randn(p.shape) for p in graph.params}
    x, y = torch.full((1, 1, *GRID), 50.0), _masks(1)
    spec = Augmentation(flip=True, rotate_deg=15, translate_vox=3, scale=0.15, intensity=0.3)
    for c in (1.0, 0.1):
        cfg = dp_sgd.DPConfig(sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=c, steps=1,
                              loss="dice_ce", learning_rate=1.0, expected_batch=1.0,
                              augment=spec, target="mask")
        out = dp_sgd.train(forward, start, x, y, cfg, torch.device("cpu"))
        moved = torch.sqrt(sum(((out[k] - start[k]) ** 2).sum() for k in start))
        assert 0 < float(moved) <= c * (1 + 1e-4)


def _plan(**augment):
    data = make_plan().model_dump(mode="json")
    data.update(task="segment", target="mask", loss="dice_ce", augment=augment)
    return TrainingPlan.model_validate(data)


def test_the_plan_states_its_augmentation_and_older_plans_keep_their_hash():
    assert '"augment"' not in make_plan().canonical_json()
    plan = _plan(flip=True, rotate_deg=5)
    assert '"augment"' in plan.canonical_json() and plan.plan_hash != make_plan().plan_hash
    with pytest.raises(ValueError, match="target_jitter: only a synthesize plan"):
        _plan(rotate_deg=5, target_jitter=0.5)
    with pytest.raises(ValueError, match="rotate_deg"):
        _plan(rotate_deg=45)
