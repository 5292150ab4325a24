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
                  repo_root / "tests" / "policies" / "auto.yaml", EMAIL, PASSWORD, n=40, seed=8,
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


@pytest.mark.parametrize("task,target,loss,out_channels,metric", [
    ("segment", "mask", "dice_ce", 3, "dice"),
    ("synthesize", "pet", "ssim_l1", 1, "ssim"),
])
def test_a_round_of_each_imaging_task_trains_at_the_site(site, task, target, loss,
                                                         out_channels, metric):
    fed = site["fed"]
    plan = _plan(task, target, loss, out_channels, version=1)
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
