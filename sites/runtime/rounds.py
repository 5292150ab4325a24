"""The trusted training runtime, called by the fixed syft function template.

Runs inside the syft server process, so it never executes researcher code
itself: it checks the plan's approval and round budget in the governance DB,
recognises syft's second call on the mock (returns at once, no training, no
budget), takes the start weights (from the upload a `WeightsRef` names,
`sites.runtime.uploads`, or inline from syft), takes the plan's validated training
graph (`sites.runtime.graphs`: traced once in the sealed tracer, checked again here),
hands the graph, the start weights and the private tensors to a sealed training
process as in-memory files, filters
what comes back (the graph's parameter names, shapes and dtypes, finite values;
nothing else), keeps the release (`sites.runtime.releases`, served by the weights
endpoint) and returns its digest (or, inline, the parameters), n_k and the privacy
accounting.

What it returns is all a researcher ever sees of a run: failures become one
short category from `sites.sandbox.job.CATEGORIES`; tracebacks and anything the
child printed stay in the site log. It must never print.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from datasets.cohort import ASSET_FORMAT, Cohort
from policies.contract import privacy
from policies.contract.errors import Refused
from policies.contract.plan import DISCRIMINATOR_PREFIX, TrainingPlan
from policies.contract.transfer import WeightsRef
from policies.contract.wire import (
    FailureCode,
    RoundAccounting,
    RoundFailure,
    RoundResult,
)
from policies.schema import DatasetPolicy, PolicyError
from policies.verdict import Facts, review_plan
from sites.governance.registry import Registry, Researcher
from sites.governance.store import Approval, Budget, Governance
from sites.operator.site import Site
from sites.runtime import discriminators, graphs, holdout, releases, uploads
from sites.runtime.accounting import accounting_for
from sites.runtime.release import refused, release_filter, validate_weights
from sites.sandbox import confine, launcher, tracing
from sites.sandbox.job import (
    CATEGORIES,
    RUN_FILES,
    Job,
    RunStatus,
    load_output,
    memory_file,
    save_private,
)

log = logging.getLogger("medsyft.runtime")

SITE_DIR_ENV = "MEDSYFT_SITE_DIR"
ACTOR = "runtime"


def _failure(message: str, code: FailureCode, mock: bool = False) -> dict:
    """The wire form of a round that released nothing (the message bounded, so that building
    the answer can never fail in the handler that reports failures)."""
    return RoundFailure(code=code, error=message[:2000], mock=mock).to_wire()


def training_processes(site: Site, gpu: bool = False) -> launcher.TrainingProcesses:
    """The site's sealed training processes (one per run, the next one started ahead)."""
    cfg = site.config
    return launcher.for_site(site.runs_dir, site.training_log,
                             graphs.settings(cfg, "train", cfg.training_timeout_s, gpu=gpu),
                             cfg.warm_training_process)


def _run_child(job: Job, x: torch.Tensor, y: torch.Tensor, timeout_s: int, site: Site,
               max_output: int) -> tuple[RunStatus, object]:
    """Run the job in a sealed training process; its four files live in memory only."""
    files = {name: memory_file(name) for name in RUN_FILES}
    try:
        job.save(files["job"])
        save_private(files["private"], x, y)
        for f in files.values():
            f.flush()
            f.seek(0)
        gpu = job.device != "cpu" and torch.cuda.is_available()
        try:
            training_processes(site, gpu).run(b"run", [f.fileno() for f in files.values()],
                                              timeout_s)
        except launcher.ChildTimeout:
            raise refused("timeout") from None
        files["private"].close()  # the child has exited: the private copy goes now
        status = RunStatus.load(files["status"])
        if not status.ok:
            raise refused(status.category or "internal")
        try:
            output = load_output(files["output"], max_output)
        except ValueError:
            raise refused("release") from None
        return status, output
    finally:
        for f in files.values():
            f.close()


def _graph(site: Site, gov: Governance, plan: TrainingPlan, shape: list[int],
           max_parameters: int, classes: int) -> graphs.PlanGraph:
    """The plan's validated graph; a site that cannot seal its sandbox runs nothing."""
    try:
        return graphs.plan_graph(gov, site.config, plan, shape, max_parameters, classes)
    except tracing.SiteBusy:
        raise refused("timeout") from None
    except confine.SandboxUnavailable as exc:
        log.error("researcher code refused: %s", exc)
        raise refused("sandbox") from None


def execute_round(plan_json: str, data: Any, weights: Any) -> dict:
    """One round of an approved plan at this site. Called by the syft template only."""
    site_dir = Path(os.environ[SITE_DIR_ENV])
    try:
        return _execute(site_dir, plan_json, data, weights)
    except Refused as exc:
        return _failure(str(exc), exc.code or FailureCode.INVALID)
    except Exception:
        log.exception("runtime internal error")
        internal = refused("internal")
        return _failure(str(internal), internal.code or FailureCode.INTERNAL)


def _recheck_policy(site: Site, gov: Governance, plan: TrainingPlan, approval: Approval,
                    record: Researcher, dataset: dict
                    ) -> tuple[DatasetPolicy, privacy.Accounting]:
    """Re-run the verdict against the current policy file before every round.

    Rules overridden at approval stay overridden only while the policy file is the one
    approved under; the parameter cap is enforced by the training child itself. The
    access rules read the site's current record of the researcher (a data owner's change
    of institution applies from the next round).
    """
    try:
        policy, policy_hash = site.policy()
    except PolicyError:
        log.error("policy file is invalid; refusing every run until it is fixed")
        raise Refused("the site's policy file is invalid; no run is possible",
                      code=FailureCode.POLICY) from None
    dataset_policy = policy.for_dataset(plan.dataset)
    if dataset_policy is None:
        raise Refused(f"policy changed: no rule covers dataset {plan.dataset} any more",
                      code=FailureCode.POLICY)
    changed = policy_hash != approval.policy_hash
    accounting = accounting_for(gov, dataset, dataset_policy, plan.researcher)
    try:
        sigma = privacy.noise_for(plan, accounting).noise_multiplier
    except privacy.TargetUnreachable as exc:
        raise Refused(f"policy: {exc}", code=FailureCode.POLICY) from None
    facts = Facts(researcher=plan.researcher, institution=record.institution,
                  today=date.today(), cohort_n=accounting.n, n_parameters=0,
                  has_mask=bool(dataset.get("mask_classes")),
                  noise_multiplier=sigma, adjacency=accounting.adjacency,
                  accountant=accounting.accountant,
                  epsilon_committed=gov.committed_epsilon(plan.researcher, plan.dataset,
                                                          plan.plan_hash))
    waived = set() if changed else set(approval.overridden)
    for line in review_plan(policy, plan, facts):
        if line.failed and line.rule not in waived:
            prefix = "policy changed" if changed else "policy"
            gov.audit(ACTOR, "run.refused", plan.plan_hash, reason=line.rule,
                      policy_hash=policy_hash)
            raise Refused(f"{prefix}: {line.message} ({line.rule}: {line.seen}, "
                          f"limit {line.limit})", code=FailureCode.POLICY)
    return dataset_policy, accounting


def _execute(site_dir: Path, plan_json: str, data: Any, weights: Any) -> dict:
    t_start = time.perf_counter()
    site = Site.open(site_dir)
    cfg = site.config
    try:
        plan = TrainingPlan.model_validate_json(plan_json)
    except ValidationError:
        raise Refused("invalid plan", code=FailureCode.INVALID) from None
    gov = site.governance()

    # syft runs every call a second time on the mock: recognise it, spend nothing.
    dataset = gov.dataset(plan.dataset)
    is_asset = isinstance(data, dict) and data.get("format") == ASSET_FORMAT
    if not is_asset or dataset is None or data.get("cohort_id") != dataset["cohort_id"]:
        if is_asset and data.get("cohort_id") in gov.private_cohort_ids():
            raise Refused("input is not the plan's dataset", code=FailureCode.INVALID)
        return _failure("mock data: no training is done on mocks", FailureCode.MOCK, mock=True)

    approval = gov.approval(plan.plan_hash)
    if approval is None:
        gov.audit(ACTOR, "run.refused", plan.plan_hash, reason="not approved")
        raise Refused("plan is not approved at this site", code=FailureCode.NOT_APPROVED)
    record = Registry(gov).by_email(plan.researcher)
    if record is None:
        gov.audit(ACTOR, "run.refused", plan.plan_hash, reason="researcher not registered")
        raise Refused("the site has no record of the plan's researcher any more (an email "
                      "changed or the account was removed); resubmit the plan",
                      code=FailureCode.NOT_APPROVED)
    if approval.researcher != plan.researcher or approval.dataset != plan.dataset:
        raise Refused("plan is not approved at this site", code=FailureCode.NOT_APPROVED)
    dataset_policy, accounting = _recheck_policy(site, gov, plan, approval, record, dataset)

    ref = _weights_ref(weights)
    if ref is not None:  # the weights came over the weights endpoint; syft carried their digest
        weights = uploads.load(site.folder, plan.plan_hash, ref.sha256, ref.round, ref.size)
        if weights is None:
            raise Refused(f"no upload of these weights for round {ref.round} is waiting at "
                          "the site (each round uses its upload once): upload them to the "
                          "weights endpoint again", code=FailureCode.INVALID)
    start = validate_weights(weights, dataset_policy.training.max_parameters)
    d_offered = {k[len(DISCRIMINATOR_PREFIX):]: start.pop(k) for k in list(start)
                 if k.startswith(DISCRIMINATOR_PREFIX)}
    if plan.adversarial is None and d_offered:
        raise refused("weights_mismatch")
    if not start:
        raise Refused("weights must hold the model's parameters", code=FailureCode.INVALID)
    try:
        cohort, _ = holdout.parts(dataset, Cohort.from_asset(data))
    except holdout.SplitMismatch:
        log.error("dataset %s: the private asset does not match its publish record",
                  plan.dataset)
        raise refused("internal") from None
    missing = [m for m in plan.inputs if m not in cohort.volumes]
    if plan.target == "mask" and cohort.masks is None or \
            plan.target in ("mri", "pet") and plan.target not in cohort.volumes:
        missing.append(plan.target)  # the schema is public: the mock has the same keys
    if missing:
        raise Refused(f"dataset {plan.dataset} has no {', '.join(missing)} images",
                      code=FailureCode.INVALID)
    plan_graph = _graph(site, gov, plan, graphs.input_shape(plan, cohort.volume_shape),
                        dataset_policy.training.max_parameters, cohort.mask_classes)
    if approval.graph_digest is not None and approval.graph_digest != plan_graph.facts.digest:
        # traced again (a torch upgrade, a lost cache) into another graph than was reviewed
        gov.audit(ACTOR, "run.refused", plan.plan_hash, reason="training.graph changed",
                  approved=approval.graph_digest, traced=plan_graph.facts.digest)
        raise Refused("the model's training graph differs from the one approved; the data "
                      "owner must review the plan again", code=FailureCode.POLICY)
    if {p.name: tuple(p.shape) for p in plan_graph.graph.params} != \
            {k: tuple(v.shape) for k, v in start.items()}:
        raise refused("weights_mismatch")
    d_start = _discriminator_start(site, plan, plan_graph, d_offered)
    noise = privacy.noise_for(plan, accounting)
    sigma = noise.noise_multiplier
    budget = Budget(
        researcher=plan.researcher, dataset=plan.dataset,
        cap=dataset_policy.privacy.epsilon_total,
        epsilon_of=lambda h: accounting.epsilon(h, dataset_policy.privacy.delta_max))
    run = gov.begin_run(plan.plan_hash, plan.rounds, sigma, noise.sample_rate, noise.steps,
                        ACTOR, budget=budget, adjacency=accounting.adjacency,
                        accountant=accounting.accountant)
    log.info("run %s: plan %s round %d/%d started (n=%d, accounting n=%d, %s, q=%.4f, "
             "sigma=%.4f, steps=%d, graph %s)", run.id, plan.plan_hash[:12], run.round,
             plan.rounds, cohort.n, accounting.n, accounting.adjacency, noise.sample_rate,
             sigma, noise.steps, plan_graph.facts.digest[:12])
    # ε of the plan with this run charged, released or not: the run reaches the data now
    released = False
    category = CATEGORIES["internal"][0]
    eps = None
    try:
        # (every run of the plan up to this one, finished or not: red team, issue 17);
        # inside the try, so that no fault leaves the run 'running' (and the plan busy)
        eps = accounting.epsilon(gov.history_through(run), plan.dp.delta)
        gan = plan_graph.discriminator_facts is not None
        job = Job(plan_json=plan.canonical_json(), graph_json=plan_graph.graph_json,
                  graph_digest=plan_graph.graph.digest(),
                  weights=start,
                  discriminator_json=plan_graph.discriminator_json,
                  discriminator_digest=plan_graph.facts.digest if gan else None,
                  discriminator_weights=d_start,
                  sample_rate=noise.sample_rate, expected_batch=noise.expected_batch,
                  noise_multiplier=sigma, steps=noise.iterations,
                  step_work=step_work(noise, accounting, plan.dp.delta)
                  if dataset_policy.release.pad_seconds else None,
                  threads=cfg.train_threads,
                  device=cfg.device if dataset_policy.training.device == "auto"
                  else dataset_policy.training.device,
                  max_parameters=dataset_policy.training.max_parameters,
                  seed=secrets.randbits(62))
        timeout = min(cfg.training_timeout_s, dataset_policy.training.max_wall_time_s)
        param_bytes = sum(v.numel() * 4 for v in [*start.values(), *(d_start or {}).values()])
        status, output = _run_child(
            job, torch.from_numpy(cohort.stacked(list(plan.inputs))),
            torch.from_numpy(cohort.target(plan.target)), timeout, site,
            max_output=2 * param_bytes + (1 << 20))
        if d_start is not None:  # the site keeps its discriminator; only θ_G may leave
            if not isinstance(output, dict) or "discriminator" not in output:
                raise refused("release")
            d_trained = release_filter({"params": output.pop("discriminator")}, d_start)
            discriminators.save(site.folder, plan.plan_hash,
                                {k: torch.from_numpy(v) for k, v in d_trained.items()})
        params = release_filter(output, start)
        _, digest, size = releases.keep(site.folder, plan.plan_hash, run.round, params)
        gov.finish_run(run.id, released=True, actor=ACTOR, n_k=cohort.n, epsilon=eps,
                       weights_sha256=digest)
        released = True
        log.info("run %s released in %.3fs (training %ss), epsilon %.3f", run.id,
                 time.perf_counter() - t_start, status.train_seconds, eps)
        steps_so_far = sum(h[2] for h in gov.history_through(run))
        ledger_delta = dataset_policy.privacy.delta_max
        # every run of the researcher's ledger up to this one, running ones included (a
        # round of another plan of theirs may be reading the data now: red team, issue 17)
        ledger_eps = accounting.epsilon(
            gov.ledger_through(run, plan.researcher, plan.dataset), ledger_delta)
        return RoundResult(
            site=cfg.name, round=run.round, rounds=plan.rounds, plan_hash=plan.plan_hash,
            params=None if ref is not None else params,
            weights_bytes=size if ref is not None else None,
            n_k=dataset_policy.release.count(accounting.n),
            device="cuda" if status.device == "cuda" else "cpu", weights_sha256=digest,
            accounting=RoundAccounting(
                sample_rate=noise.sample_rate, noise_multiplier=sigma,
                steps=steps_so_far, round_steps=noise.steps,
                delta=plan.dp.delta, epsilon=eps, target_epsilon=plan.dp.target_epsilon,
                accountant=accounting.accountant, adjacency=accounting.adjacency,
                ledger_epsilon=ledger_eps, ledger_delta=ledger_delta,
                count_noise=accounting.count_noise, max_grad_norm=plan.dp.max_grad_norm),
        ).to_wire()
    except Refused as exc:
        category = str(exc)
        log.warning("run %s failed (charged, counted as round %d): %s", run.id, run.round, exc)
        raise Refused(f"{exc}; the round was charged to the plan's privacy budget and counts "
                      f"as round {run.round} of {plan.rounds}", code=exc.code) from None
    except Exception:
        log.exception("run %s failed inside the runtime", run.id)
        raise refused("internal") from None
    finally:
        if not released:
            gov.finish_run(run.id, released=False, actor=ACTOR, category=category,
                           epsilon=eps)
        if ref is not None:  # the upload has served its round
            uploads.forget(site.folder, plan.plan_hash, ref.sha256, ref.round)
        if plan.adversarial is not None and (run.round >= plan.rounds
                                             or gov.approval(plan.plan_hash) is None):
            # the plan has ended here, or was revoked while this round ran (the revocation
            # deletes what is kept, then this round may have saved again)
            discriminators.forget(site.folder, plan.plan_hash)
        _pad(t_start, dataset_policy.release.pad_seconds)


def _weights_ref(weights: Any) -> WeightsRef | None:
    """The `WeightsRef` syft carried instead of the weights, or None for weights sent
    inline (the syft-only path)."""
    if not WeightsRef.is_ref(weights):
        return None
    try:
        return WeightsRef.model_validate(weights)
    except ValidationError:
        raise Refused("invalid reference to uploaded weights", code=FailureCode.INVALID
                      ) from None


def _discriminator_start(site: Site, plan: TrainingPlan, plan_graph: graphs.PlanGraph,
                         offered: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A GAN plan's discriminator at the start of this round: the one the site kept from
    its last round here, or else the researcher's initial parameters (made before any
    data was seen: they carry nothing private). None for any other plan."""
    if plan_graph.discriminator is None:
        return None
    expected = {p.name: tuple(p.shape) for p in plan_graph.discriminator.params}
    kept = discriminators.load(site.folder, plan.plan_hash)
    if kept is not None and {k: tuple(v.shape) for k, v in kept.items()} == expected:
        return kept
    if {k: tuple(v.shape) for k, v in offered.items()} != expected:
        raise Refused("a GAN plan's first round at a site needs the discriminator's initial "
                      f"parameters, under the key prefix {DISCRIMINATOR_PREFIX!r}, matching "
                      "its model", code=FailureCode.MODEL)
    return offered


def step_work(noise: privacy.RoundNoise, accounting: privacy.Accounting, delta: float) -> int:
    """The per-sample gradients a padded round's every step computes (the draw, then
    zero-weighted stand-ins): L = ⌈μ + z·√μ⌉ with μ = B + z·q·s, the expected draw at a
    cohort z standard deviations s of the DP count above Ñ, and z the normal quantile at
    δ / (2·steps). A step's work, and so the round's duration and whether it meets the
    time limit, then depends on how many subjects the draw took (and, through it, on N)
    only when a draw exceeds L: about δ/2 per run from the draw and δ/2 from N. Not part of
    ε: stated in the README's threat model."""
    from scipy.stats import norm

    z = float(norm.isf(delta / (2 * max(1, noise.steps))))
    mu = noise.expected_batch + z * noise.sample_rate * (accounting.count_noise or 0.0)
    return int(math.ceil(mu + z * math.sqrt(mu)))


def _pad(t_start: float, pad_seconds: int) -> None:
    """Sleep until the time since `t_start` is a whole multiple of `pad_seconds`: what a
    researcher's clock sees of a run is then the number of buckets, not the batch sizes."""
    if pad_seconds <= 0:
        return
    elapsed = time.perf_counter() - t_start
    buckets = max(1, math.ceil(elapsed / pad_seconds))
    time.sleep(max(0.0, buckets * pad_seconds - elapsed))

