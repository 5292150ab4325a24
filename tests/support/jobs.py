"""Jobs as the runtime prepares them for the sealed training process, and running one."""

from __future__ import annotations

import numpy as np
import torch

from policies.contract.model_code import build_model
from sites.graph import check
from sites.operator.site import Site
from sites.runtime import rounds
from sites.sandbox.job import RUN_FILES, Job, RunStatus, load_output, memory_file, save_private
from tests.support.graphs import graph_of

RESEARCHER = "ada@lovelace-institute.org"


def weights_for(plan) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.detach().numpy() for k, v in build_model(plan.model).named_parameters()}


def make_job(plan, cohort, steps: int = 1, weights=None, graph_json: str | None = None,
             digest: str | None = None, max_parameters: int = 10**6) -> Job:
    """The job of one round of `plan` on `cohort` (its graph traced here: test models are
    trusted), with whatever a test wants to tamper with."""
    if graph_json is None:
        graph, _ = graph_of(build_model(plan.model), [1, 2, *cohort.volume_shape],
                            loss=plan.loss)
        graph_json = graph.canonical_json()
    if digest is None:
        digest = check.parse(graph_json).digest()
    weights = weights_for(plan) if weights is None else weights
    return Job(plan_json=plan.canonical_json(), graph_json=graph_json, graph_digest=digest,
               weights={k: torch.from_numpy(v) for k, v in weights.items()},
               sample_rate=0.5, expected_batch=0.5 * cohort.n, noise_multiplier=1.0, steps=steps,
               device="cpu", threads=1,
               seed=1, max_parameters=max_parameters)


def run_job(site_dir, job: Job, cohort, procs=None, timeout_s: float = 120
            ) -> tuple[RunStatus, object | None]:
    """The job in a sealed training process (the site's, or `procs`), as the runtime starts
    it; its status and, when it has one, its output."""
    files = {name: memory_file(name) for name in RUN_FILES}
    job.save(files["job"])
    save_private(files["private"], torch.from_numpy(cohort.stacked(["mri", "pet"])),
                 torch.from_numpy(cohort.labels))
    for f in files.values():
        f.flush()
        f.seek(0)
    procs = procs or rounds.training_processes(Site.open(site_dir))
    try:
        procs.run(b"run", [f.fileno() for f in files.values()], timeout_s)
        status = RunStatus.load(files["status"])
        return status, (load_output(files["output"], 1 << 30) if status.ok else None)
    finally:
        for f in files.values():
            f.close()
