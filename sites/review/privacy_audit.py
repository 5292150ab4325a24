"""The data owner's privacy audit of a plan: `medsyft console audit-privacy PLAN`.

Attacks what the plan released at this site with the subjects the site held out of
training at publish time (`audit.holdout_fraction`): a loss-threshold membership
inference (score = −loss under the released weights, members = the training part,
non-members = the held-out part, a random stratified split), reported as AUC and TPR
at 1% FPR next to the largest values the plan's reported (ε, δ) allows, and empirical
lower bounds on ε with Clopper–Pearson intervals (`sites.review.audit_math`), against
the researcher's whole ledger on the dataset up to that release (the start weights may
carry what their other plans released there). A
measured value beyond what the guarantee allows is a warning: either the accounting
or the mechanism does not hold what the site claims.

The losses are computed in the sealed training process, from the plan's validated
graph (never researcher Python), on the site's private data. The result goes to the
data owner and the audit log only, never to the researcher, and holds only aggregates:
no per-subject score ever leaves this module.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from datasets.cohort import Cohort
from policies.contract.claims import guarantee
from policies.contract.errors import MedsyftError, Refused
from policies.contract.plan import TrainingPlan
from policies.schema import PolicyError
from sites.operator.admin import admin_client
from sites.review.audit_math import AuditFigures, audit_figures
from sites.runtime import graphs, holdout, releases
from sites.runtime.accounting import accounting_for
from sites.runtime.rounds import _run_child
from sites.sandbox.job import Job

ACTOR = "console"


class AuditError(MedsyftError, RuntimeError):
    """The audit cannot run; the message says what the data owner can do."""


class PrivacyAudit(BaseModel):
    """What the audit measured for one plan at this site, for the data owner."""

    plan_hash: str
    plan: str
    researcher: str
    dataset: str
    round: int
    rounds_charged: int
    plan_epsilon: float
    epsilon: float
    delta: float
    adjacency: str
    accountant: str
    guarantee: str
    figures: AuditFigures
    warnings: list[str]


def _plan(gov, ref: str) -> TrainingPlan:  # noqa: ANN001 - Governance
    """The approved plan a hash prefix (or `name` / `name vN`) names, exactly one."""
    found: dict[str, TrainingPlan] = {}
    for d in gov.decisions():
        if not d["plan_json"]:
            continue
        plan = TrainingPlan.model_validate_json(d["plan_json"])
        if (d["plan_hash"].startswith(ref.lower()) or ref in (plan.name,
                                                               f"{plan.name} v{plan.version}")):
            found[d["plan_hash"]] = plan
    if not found:
        raise AuditError(f"no plan {ref!r} at this site (see `medsyft console plans`)")
    if len(found) > 1:
        raise AuditError(f"{ref!r} names {len(found)} plans; give more of the plan hash")
    return next(iter(found.values()))


def _private_cohort(site_dir: Path, dataset: str) -> Cohort:
    """The published private asset, read by the site admin through syft."""
    with admin_client(site_dir) as (_, _, client):
        for ds in client.datasets.get_all():
            if ds.name == dataset:
                return Cohort.from_asset(ds.assets[0].data)
    raise AuditError(f"dataset {dataset} is not published on this site any more")


def _losses(site, gov, plan: TrainingPlan, cohort: Cohort,  # noqa: ANN001
            weights: dict[str, np.ndarray], max_parameters: int) -> np.ndarray:
    """Each subject's loss under `weights`, computed in the sealed training process."""
    plan_graph = graphs.plan_graph(gov, site.config, plan,
                                   graphs.input_shape(plan, cohort.volume_shape), max_parameters,
                                   cohort.mask_classes)
    job = Job(mode="score", plan_json=plan.canonical_json(), graph_json=plan_graph.graph_json,
              graph_digest=plan_graph.graph.digest(),  # G's own (facts: G with D for a GAN)
              weights={k: torch.from_numpy(v) for k, v in weights.items()},
              sample_rate=1.0, expected_batch=1.0, noise_multiplier=0.0, steps=1,
              threads=site.config.train_threads, device=site.config.device,
              max_parameters=max_parameters, seed=secrets.randbits(62))
    try:
        _, output = _run_child(job, torch.from_numpy(cohort.stacked(list(plan.inputs))),
                               torch.from_numpy(cohort.target(plan.target)),
                               site.config.training_timeout_s,
                               site, max_output=16 * cohort.n + (1 << 20))
    except Refused as exc:
        raise AuditError(f"scoring the subjects failed: {exc}") from None
    losses = output.get("losses") if isinstance(output, dict) else None
    if not isinstance(losses, torch.Tensor) or losses.shape != (cohort.n,):
        raise AuditError("scoring the subjects returned no loss per subject")
    out = losses.double().numpy()
    # a loss that is not finite is the model's least confident answer: the highest loss
    finite = np.isfinite(out)
    return np.where(finite, out, out[finite].max() if finite.any() else 0.0)


def audit_plan(site_dir: Path, plan_ref: str, round_no: int | None = None) -> PrivacyAudit:
    """Run the membership audit on the released weights of one round of a plan (default:
    the last released round) and record it in the audit log.

    Raises:
        AuditError: no such plan, no released weights, no held-out subjects, or the
            site cannot score them (each message says what to do).
    """
    from sites.operator.site import Site

    site = Site.open(site_dir)
    gov = site.governance()
    plan = _plan(gov, plan_ref)
    record = gov.dataset(plan.dataset)
    if record is None:
        raise AuditError(f"dataset {plan.dataset} is not published on this site")
    if not record.get("holdout_seed") or not record.get("holdout_fraction"):
        raise AuditError(f"dataset {plan.dataset} was published without held-out subjects: "
                         "set audit.holdout_fraction in its policy rule (e.g. 0.1) and "
                         "publish it again")
    try:
        rule = site.policy()[0].for_dataset(plan.dataset)
    except PolicyError as exc:
        raise AuditError(str(exc)) from None
    if rule is None:
        raise AuditError(f"no policy rule covers dataset {plan.dataset} any more")
    kept = releases.rounds_kept(site.folder, plan.plan_hash)
    if not kept:
        raise AuditError(f"plan {plan.name} v{plan.version} has released no weights here")
    chosen = kept[-1] if round_no is None else round_no
    if chosen not in kept:
        raise AuditError(f"round {round_no} released no weights here; released: "
                         f"{', '.join(map(str, kept))}")
    members, nonmembers = holdout.parts(record, _private_cohort(site.folder, plan.dataset))
    both = Cohort(volumes={m: np.concatenate([members.volumes[m], nonmembers.volumes[m]])
                           for m in members.volumes},
                  labels=np.concatenate([members.labels, nonmembers.labels]),
                  cohort_id=members.cohort_id, meta=members.meta,
                  masks=None if members.masks is None
                  else np.concatenate([members.masks, nonmembers.masks]))
    losses = _losses(site, gov, plan, both, releases.load(site.folder, plan.plan_hash, chosen),
                     rule.training.max_parameters)
    accounting = accounting_for(gov, record, rule, plan.researcher)
    runs = [r for r in gov.runs(plan.plan_hash) if r.round <= chosen
            and r.status in ("released", "failed", "aborted")]
    plan_epsilon = accounting.epsilon([r.noise for r in runs], plan.dp.delta)
    # the start weights may carry what the researcher's other plans released on the same
    # data: what these weights may reveal is bounded by the whole ledger up to this release
    last = max(r.id for r in runs)
    epsilon = accounting.epsilon([r.noise for r in gov.ledger_history(plan.researcher,
                                                                        plan.dataset)
                                  if r.id <= last], plan.dp.delta)
    figures = audit_figures(-losses[:members.n], -losses[members.n:], epsilon, plan.dp.delta)
    del losses
    warnings = [f"measured {name} exceeds what ε {epsilon:.3g} at δ {plan.dp.delta:g} allows"
                for name in figures.exceeds]
    report = PrivacyAudit(
        plan_hash=plan.plan_hash, plan=f"{plan.name} v{plan.version}",
        researcher=plan.researcher, dataset=plan.dataset, round=chosen,
        rounds_charged=len(runs), plan_epsilon=plan_epsilon, epsilon=epsilon,
        delta=plan.dp.delta,
        adjacency=accounting.adjacency, accountant=accounting.accountant,
        guarantee=guarantee(epsilon, plan.dp.delta, accounting.adjacency),
        figures=figures, warnings=warnings)
    gov.audit(ACTOR, "privacy.audited", plan.plan_hash,
              **json.loads(report.model_dump_json(include={"round", "epsilon", "delta",
                                                           "adjacency", "figures",
                                                           "warnings"})))
    return report

