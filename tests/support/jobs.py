"""Run folders as the runtime prepares them for the training child, and running one."""

from __future__ import annotations

import numpy as np
import torch

from policies.contract.model_code import build_model
from sites.sandbox import launcher
from sites.sandbox.job import Job, RunStatus, save_private

RESEARCHER = "ada@lovelace-institute.org"


def weights_for(plan) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.detach().numpy() for k, v in build_model(plan.model).named_parameters()}


def write_job(run_dir, plan, cohort, steps: int = 1, weights=None,
              max_parameters: int = 10**6) -> None:
    """A run folder as the runtime prepares it for the training child."""
    run_dir.mkdir(parents=True)
    weights = weights_for(plan) if weights is None else weights
    Job(plan_json=plan.canonical_json(),
        weights={k: torch.from_numpy(v) for k, v in weights.items()}, sample_rate=0.5,
        noise_multiplier=1.0, steps=steps, device="cpu", threads=1, seed=1,
        max_parameters=max_parameters).save(run_dir)
    save_private(run_dir, torch.from_numpy(cohort.stacked(["mri", "pet"])),
                 torch.from_numpy(cohort.labels))


def run_child(site_dir, run_dir) -> RunStatus:
    """The run folder's job in a training child, as the runtime starts it."""
    launcher.for_site(site_dir / "runs", site_dir / "logs" / "training.log", 1,
                      warm=False).run(run_dir, 120)
    return RunStatus.load(run_dir)
