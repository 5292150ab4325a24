"""Segmentation and MRI→PET synthesis against a real datasite: a cohort published with
lesion masks, plans approved by the site's policy, rounds trained in the sealed process
with the site's Dice and SSIM losses, and ε stated as dp-accounting states it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic import generate_cohort
from policies.contract.plan import TrainingPlan
from researcher.federation import initial_weights
from tests.support.plans import make_plan
from tests.support.reference import pld_epsilon
from tests.support.sites import one_site, wait_for

pytestmark = pytest.mark.integration

EMAIL = "ada@lovelace-institute.org"
PASSWORD = "imaging-tasks-pw-1"
SHAPE = (8, 8, 8)
SITE = "hotel"
UNET = (Path(__file__).resolve().parents[2] / "researcher" / "examples"
        / "small_unet3d.py").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring, repo_root):
    with one_site(tmp_path_factory.mktemp("tasks"), SITE,
                  repo_root / "tests" / "policies" / "imaging.yaml", EMAIL, PASSWORD, n=40, seed=8,
                  shape=SHAPE, lesions=True) as env:
        yield env


def _plan(task: str, target: str, loss: str, out_channels: int, version: int
          ) -> TrainingPlan:
    data = make_plan(rounds=1, version=version).model_dump(mode="json")
    data.update(name=f"tiny_{task}", task=task, target=target, loss=loss, inputs=["mri"],
                optimizer="adam", learning_rate=0.02,
                model={"source": UNET, "class_name": "SmallUNet3D",
                       "kwargs": {"in_channels": 1, "out_channels": out_channels, "width": 4}})
    return TrainingPlan.model_validate(data)


def _claim_holds(site_report) -> None:
    s = site_report
    assert s.ok and s.epsilon <= s.target_epsilon
    count = [(s.count_noise, 1.0, 1)] if s.adjacency == "add_remove" else []
    assert s.epsilon >= pld_epsilon(count + [(s.noise_multiplier, s.sample_rate, s.steps)],
                                    s.delta, s.adjacency) - 1e-9


@pytest.mark.parametrize("task,target,loss,out_channels,metric,augment", [
    ("segment", "mask", "dice_ce", 3, "dice", {"flip": True, "rotate_deg": 10}),
    ("synthesize", "pet", "ssim_l1", 1, "ssim",
     {"rotate_deg": 5, "translate_vox": 1, "intensity": 0.1, "target_jitter": 0.5}),
])
def test_a_round_of_each_imaging_task_trains_at_the_site(site, task, target, loss,
                                                         out_channels, metric, augment):
    """A round of each task, with the site's augmentation of each sample inside DP-SGD."""
    fed = site["fed"]
    plan = _plan(task, target, loss, out_channels, version=1)
    plan = TrainingPlan.model_validate({**plan.model_dump(mode="json"), "augment": augment})
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    validation = generate_cohort(10, seed=99, shape=SHAPE, lesions=True)
    report = fed.run(plan, validation=validation)
    (rnd,) = report.rounds
    (s,) = rnd.sites
    _claim_holds(s)
    assert metric in rnd.metrics and np.isfinite(rnd.metrics[metric])
    if task == "segment":
        assert {"dice_1", "dice_2"} <= set(rnd.metrics)
    else:
        assert {"mae", "psnr"} <= set(rnd.metrics)
    start = initial_weights(fed.bind(plan))
    assert any(not np.allclose(start[k], fed.weights[k]) for k in start)  # it trained


def test_a_segmenter_whose_classes_differ_from_the_mask_is_refused_at_review(site):
    from sites.review import console

    fed, d = site["fed"], site["dir"]
    plan = _plan("segment", "mask", "dice", 2, version=2)  # the mask has 3 classes
    fed.submit(plan)
    bound = fed.bind(plan)
    view = wait_for(lambda: next((v for v in console.list_requests(d) if v.plan == bound
                                  and v.checks), None))
    graph = next(c for c in view.checks if c.rule == "training.graph")
    assert graph.failed and "3 classes" in graph.seen
    assert fed.status(plan)[SITE].status != "approved"


DISCRIMINATOR = (Path(__file__).resolve().parents[2] / "researcher" / "examples"
                 / "patch_discriminator3d.py").read_text()


def _gan_plan(version: int) -> TrainingPlan:
    data = _plan("synthesize", "pet", "ssim_l1", 1, version).model_dump(mode="json")
    data.update(name="tiny_gan", rounds=2, adversarial={
        "discriminator": {"source": DISCRIMINATOR, "class_name": "PatchDiscriminator3D",
                          "kwargs": {"in_channels": 2, "width": 4}},
        "weight": 0.1})
    return TrainingPlan.model_validate(data)


def _bytes_of(arrays) -> bytes:
    return b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in arrays)


def test_a_gan_keeps_its_discriminator_at_the_site_and_charges_both_updates(site):
    """Two rounds of a GAN plan: the site releases the generator only; its discriminator
    trains there, is kept between rounds (the second round runs from it, not from what
    the researcher sends) and is deleted when the plan ends; ε is dp-accounting's for
    both networks' updates."""
    from researcher.federation import initial_discriminator
    from sites.runtime import discriminators

    fed, d = site["fed"], site["dir"]
    plan = _gan_plan(version=1)
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    bound = fed.bind(plan)
    start = initial_weights(bound)
    d_init = {k.split("/", 1)[1]: v for k, v in initial_discriminator(bound).items()}

    from researcher.federation import FederationError

    with pytest.raises(FederationError, match="initial parameters"):  # nothing to start D
        fed.run_site_round(SITE, bound, start, extra={})
    first = fed.run_site_round(SITE, bound, start)
    assert first.round == 1  # the refusal above charged no round
    assert set(first.params) == set(start)  # the generator only, name for name
    kept = discriminators.load(d, bound.plan_hash)
    assert kept is not None and set(kept) == set(d_init)
    assert any(not np.allclose(kept[k].numpy(), d_init[k]) for k in d_init)  # it trained
    path = d / discriminators.FOLDER / f"{bound.plan_hash}.npz"
    assert path.stat().st_mode & 0o077 == 0
    # nothing the researcher received holds the site's discriminator
    released = _bytes_of(first.params.values())
    for k, v in kept.items():
        if v.numel() >= 4:
            assert v.numpy().astype(np.float32).tobytes() not in released, k
    acc = first.accounting
    assert acc.round_steps % 2 == 0  # a discriminator and a generator update per iteration
    count = [(acc.count_noise, 1.0, 1)] if acc.adjacency == "add_remove" else []
    reference = pld_epsilon(count + [(acc.noise_multiplier, acc.sample_rate, acc.steps)],
                            acc.delta, acc.adjacency)
    assert reference - 1e-9 <= acc.epsilon <= acc.target_epsilon
    half = pld_epsilon(count + [(acc.noise_multiplier, acc.sample_rate, acc.steps // 2)],
                       acc.delta, acc.adjacency)
    assert half < acc.epsilon  # the generator's updates alone would claim less

    # round 2 sends no discriminator at all: the site trains on from its own
    second = fed.run_site_round(SITE, bound, first.params, extra={})
    assert set(second.params) == set(start) and second.round == 2
    assert second.accounting.steps == 2 * acc.steps
    assert discriminators.load(d, bound.plan_hash) is None  # the plan ended: deleted
    assert not path.exists()

    # the data owner audits the released generators after the plan (its D is gone): the
    # scoring run reads G alone, on members and held-out subjects
    import json

    from typer.testing import CliRunner

    from sites.entrypoint import app

    ran = CliRunner().invoke(app, ["console", "audit-privacy", bound.plan_hash[:12],
                                   "--site", str(d), "--json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.output)
    assert (report["figures"]["members"], report["figures"]["nonmembers"]) == (30, 10)
    assert report["plan_epsilon"] == pytest.approx(second.accounting.epsilon, rel=1e-6)


def test_discriminator_weights_sent_with_a_plain_plan_are_refused(site):
    from policies.contract.plan import DISCRIMINATOR_PREFIX
    from researcher.federation import FederationError

    fed = site["fed"]
    plan = _plan("synthesize", "pet", "l1", 1, version=3)
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    bound = fed.bind(plan)
    weights = initial_weights(bound)
    extra = {DISCRIMINATOR_PREFIX + "x": np.zeros(3, np.float32)}
    # refused by the weights endpoint from the header, and by the runtime when inline
    with pytest.raises(FederationError, match="not the plan's parameters.*wrong_names"):
        fed.run_site_round(SITE, bound, weights, extra=extra)
    from researcher.federation import Federation

    inline = Federation(fed.config, transport="syft")
    inline._clients = fed._clients
    with pytest.raises(FederationError, match="weights do not match"):
        inline.run_site_round(SITE, bound, weights, extra=extra)


def test_a_monai_unet_segments_at_the_site(site):
    """The example plan's MONAI U-Net (monai.networks.nets.UNet), traced by the site's
    sealed tracer, trains a round under DP-SGD; the researcher loads the released weights
    back into their own MONAI model for the Dice."""
    from policies.contract.plan import load_plan

    example = load_plan(Path(__file__).resolve().parents[2] / "researcher" / "examples"
                        / "segment_monai.yaml", researcher=EMAIL)
    plan = example.model_copy(update={"rounds": 1, "batch_size": 8, "version": 5})
    plan = TrainingPlan.model_validate(plan.model_dump())  # hash of the changed plan
    fed = site["fed"]
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)[SITE].status == "approved")
    report = fed.run(plan, validation=generate_cohort(10, seed=98, shape=SHAPE, lesions=True))
    (rnd,) = report.rounds
    (s,) = rnd.sites
    _claim_holds(s)
    assert {"dice", "dice_1", "dice_2"} <= set(rnd.metrics)
    start = initial_weights(fed.bind(plan))
    assert set(fed.weights) == set(start)
    assert any(not np.allclose(start[k], fed.weights[k]) for k in start)
