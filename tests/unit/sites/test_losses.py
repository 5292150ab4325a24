"""The site's segmentation and synthesis losses: checked against MONAI's (the field's
reference), differentiable per sample under vmap, and never failing on a target a
researcher could use as a probe."""

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss, SSIMLoss

from policies.contract.model_code import build_model
from policies.contract.plan import ModelSpec
from sites.graph import check
from sites.graph.execute import compile_graph
from sites.sandbox import dp_sgd, losses
from tests.support.graphs import graph_of

UNET = open("researcher/examples/small_unet3d.py").read()


def unet(in_channels: int = 1, out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(source=UNET, class_name="SmallUNet3D", kwargs={
        "in_channels": in_channels, "out_channels": out_channels, "width": 4}))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_dice_ce_equal_monais(seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(1, 3, 6, 7, 8, generator=g) * 3
    y = torch.randint(0, 3, (1, 6, 7, 8), generator=g)
    torch.testing.assert_close(losses.dice(out, y), DiceLoss(
        softmax=True, to_onehot_y=True)(out, y.unsqueeze(1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.dice_ce(out, y), DiceCELoss(
        softmax=True, to_onehot_y=True)(out, y.unsqueeze(1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", [5, 9])
def test_ssim_equals_monais_with_the_targets_value_range(side):
    g = torch.Generator().manual_seed(side)
    t = torch.rand(1, side, side, side, generator=g) * 3 - 1
    o = t.unsqueeze(1) + 0.3 * torch.randn(1, 1, side, side, side, generator=g)
    value_range = float(t.max() - t.min())
    reference = 1 - SSIMLoss(spatial_dims=3, data_range=value_range, kernel_type="gaussian",
                             win_size=min(7, side - 1 + side % 2), kernel_sigma=1.5)(
        o, t.unsqueeze(1))
    torch.testing.assert_close(losses.ssim(o, t), reference, rtol=1e-4, atol=1e-5)
    assert losses.ssim(t.unsqueeze(1), t) == pytest.approx(1.0, abs=1e-5)


def test_l1_l2_and_ssim_l1_of_a_perfect_synthesis_are_zero():
    t = torch.rand(1, 6, 6, 6)
    for name in ("l1", "l2", "ssim_l1"):
        assert float(losses.LOSSES[name](t.unsqueeze(1), t)) == pytest.approx(0.0, abs=1e-5)
        assert float(losses.LOSSES[name](t.unsqueeze(1) + 1, t)) > 0.05


def test_a_mask_class_outside_the_networks_channels_weighs_zero_and_never_raises():
    out = torch.randn(1, 2, 4, 4, 4)
    y = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    y_probe = y.clone()
    y_probe[0, 0, 0, 0] = 7  # a class the network cannot hold
    y_probe[0, 1, 0, 0] = -3
    keep = torch.ones_like(y, dtype=torch.bool)
    keep[0, 0, 0, 0] = keep[0, 1, 0, 0] = False
    for name in ("dice", "dice_ce"):
        probe = losses.LOSSES[name](out, y_probe)
        assert torch.isfinite(probe)
        # the same as if those voxels were not in the volume at all: they add to no sum
        onehot, valid = losses._one_hot(y_probe, 2, out)
        assert float(valid.sum()) == float(keep.sum())
    assert float(losses.dice(out, y_probe)) != float(losses.dice(out, y))


@pytest.mark.parametrize("loss,out_channels,target", [
    ("dice", 3, "mask"), ("dice_ce", 3, "mask"), ("l1", 1, "pet"), ("l2", 1, "pet"),
    ("ssim_l1", 1, "pet")])
def test_per_sample_gradients_over_the_unets_graph_equal_the_models_own(loss, out_channels,
                                                                       target):
    from torch.func import functional_call, grad, vmap

    model = unet(out_channels=out_channels)
    shape = [1, 1, 8, 8, 8]
    graph, facts = graph_of(model, shape, loss=loss)
    assert facts.output_shape == [1, out_channels, 8, 8, 8]
    forward = compile_graph(graph)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 1, 8, 8, 8)
    y = torch.randint(0, 3, (3, 8, 8, 8)) if target == "mask" else torch.rand(3, 8, 8, 8)
    fn = dp_sgd.LOSSES[loss]
    via_graph = dp_sgd.per_sample_gradients(forward, params, fn, x, y)

    def eager(p, xi, yi):
        return fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    via_model = vmap(grad(eager), in_dims=(None, 0, 0))(params, x, y)
    for k in params:
        assert torch.isfinite(via_graph[k]).all()
        torch.testing.assert_close(via_graph[k], via_model[k], rtol=1e-4, atol=1e-6)
        # each sample's own: the three differ
        assert not torch.equal(via_graph[k][0], via_graph[k][1])


def test_the_graph_check_names_the_output_each_loss_needs():
    seg, _ = graph_of(unet(out_channels=3), [1, 1, 8, 8, 8], loss="dice")
    text = seg.canonical_json()
    check.validate(text, loss="dice", max_parameters=10**6, classes=3)
    with pytest.raises(check.Refused, match="mask has 2 classes"):
        check.validate(text, loss="dice", max_parameters=10**6, classes=2)
    with pytest.raises(check.Refused, match=r"l1 needs \(1, 1, 8, 8, 8\)"):
        check.validate(text, loss="l1", max_parameters=10**6)
    with pytest.raises(check.Refused, match="one logit"):
        check.validate(text, loss="bce_with_logits", max_parameters=10**6)
    from tests.unit.sites.test_graph import SHAPE, demo_model
    classifier, _ = graph_of(demo_model(), SHAPE)
    with pytest.raises(check.Refused, match="a score per class and voxel"):
        check.validate(classifier.canonical_json(), loss="dice", max_parameters=10**6)


def test_dp_sgd_trains_a_segmenter_and_its_dice_improves():
    from datasets.synthetic import generate_cohort

    cohort = generate_cohort(24, seed=3, shape=(8, 8, 8), lesions=True)
    x = torch.from_numpy(cohort.stacked(["mri"]))
    y = torch.from_numpy(cohort.target("mask"))
    model = unet(out_channels=3)
    graph, _ = graph_of(model, [1, 1, 8, 8, 8], loss="dice_ce")
    forward = compile_graph(graph)
    start = {k: v.detach() for k, v in model.named_parameters()}
    cfg = dp_sgd.DPConfig(sample_rate=0.5, noise_multiplier=0.3, max_grad_norm=1.0, steps=30,
                          loss="dice_ce", optimizer="adam", learning_rate=0.02)
    trained = dp_sgd.train(forward, start, x, y, cfg, torch.device("cpu"))

    def mean_loss(p):
        with torch.no_grad():
            return float(sum(losses.dice_ce(forward(p, x[i:i + 1]), y[i:i + 1])
                             for i in range(len(x))) / len(x))

    assert mean_loss(trained) < mean_loss(start) - 0.1


class _Oracle(torch.nn.Module):
    """Returns a fixed answer per subject: what a perfect (or a wrong) network would."""

    def __init__(self, answers: torch.Tensor) -> None:
        super().__init__()
        self.answers, self.i = answers, 0

    def forward(self, x):
        out = self.answers[self.i:self.i + len(x)]
        self.i += len(x)
        return out


def test_the_researchers_metrics_score_a_perfect_and_a_wrong_answer():
    from datasets.synthetic import generate_cohort
    from researcher.evaluate import evaluate_task
    from tests.support.plans import make_plan

    cohort = generate_cohort(6, seed=4, shape=(8, 8, 8), lesions=True)
    base = make_plan().model_dump(mode="json") | {"inputs": ["mri"]}
    seg = base | {"task": "segment", "target": "mask", "loss": "dice"}
    from policies.contract.plan import TrainingPlan

    mask = torch.from_numpy(cohort.target("mask"))
    perfect = torch.nn.functional.one_hot(mask, 3).movedim(-1, 1).float() * 10
    metrics = evaluate_task(_Oracle(perfect), cohort, TrainingPlan.model_validate(seg))
    assert set(metrics) == {"dice_1", "dice_2", "dice"}
    assert metrics["dice"] == pytest.approx(1.0)
    background = torch.zeros_like(perfect)
    background[:, 0] = 10
    assert evaluate_task(_Oracle(background), cohort,
                         TrainingPlan.model_validate(seg))["dice"] == pytest.approx(0.0)
    syn = base | {"task": "synthesize", "target": "pet", "loss": "l1"}
    pet = torch.from_numpy(cohort.target("pet")).unsqueeze(1)
    good = evaluate_task(_Oracle(pet + 0.01), cohort, TrainingPlan.model_validate(syn))
    bad = evaluate_task(_Oracle(pet + 0.3), cohort, TrainingPlan.model_validate(syn))
    assert good["mae"] == pytest.approx(0.01, abs=1e-4) and bad["mae"] > good["mae"]
    assert good["psnr"] > bad["psnr"] + 10 and good["ssim"] > bad["ssim"]


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_ssim_l1_of_a_constant_target_stays_finite_with_a_finite_gradient(value):
    """A constant target (an empty PET, a probe) has no variance: SSIM's constants must keep
    the loss and its gradient finite, or whether a round failed would say so."""
    t = torch.full((1, 8, 8, 8), value)
    for out in (torch.full((1, 1, 8, 8, 8), value), torch.randn(1, 1, 8, 8, 8)):
        out = out.clone().requires_grad_(True)
        loss = losses.ssim_l1(out, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(out.grad).all()
