"""The trusted training runtime, called by the fixed syft function template.

Runs inside the syft server process, so it never executes researcher code
itself: it checks the plan's approval and round budget in the governance DB,
recognises syft's second call on the mock (returns at once, no training, no
budget), hands the private tensors and start weights to a child process with a
clean environment, filters what comes back (the plan's parameter names, shapes
and dtypes, finite values; nothing else) and returns parameters, n_k and the
privacy accounting.

What it returns is all a researcher ever sees of a run: failures become one
short category from `train_child.CATEGORIES`; tracebacks and anything the
child printed stay in the site log. It must never print.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from datasets.cohort import ASSET_FORMAT, Cohort
from policies.schema import DatasetPolicy, PolicyError, load_policy
from policies.verdict import Facts, review_plan
from researcher.plan import TrainingPlan
from sites import accounting, training_process
from sites.config import SiteConfig, load_site
from sites.governance import Approval, Budget, Governance, RoundRefused
from sites.registry import Registry, Researcher
from sites.train_child import CATEGORIES

log = logging.getLogger("medsyft.runtime")

WIRE_VERSION = 1
MAX_WEIGHT_TENSORS = 10_000
MAX_WEIGHT_BYTES = 2 * 1024**3
SITE_DIR_ENV = "MEDSYFT_SITE_DIR"
ACTOR = "runtime"


class Refused(Exception):
    """A run that may not happen; the message is safe for the researcher."""


def _failure(message: str, **extra: Any) -> dict:
    return {"medsyft": WIRE_VERSION, "ok": False, "error": message, **extra}


def _validate_weights(weights: Any, max_parameters: int | None = None
                      ) -> dict[str, torch.Tensor]:
    if not isinstance(weights, dict) or not weights:
        raise Refused("weights must be a non-empty dict of parameter name to array")
    if len(weights) > MAX_WEIGHT_TENSORS:
        raise Refused("too many weight tensors")
    out: dict[str, torch.Tensor] = {}
    total = 0
    for name, arr in weights.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise Refused("weights must map parameter names to numpy arrays")
        if arr.dtype not in (np.float32, np.float64):
            raise Refused(f"weights[{name[:60]!r}] must be float32")
        total += arr.size * 4
        if total > MAX_WEIGHT_BYTES:
            raise Refused("weights exceed the size cap")
        if max_parameters is not None and total > max_parameters * 4:
            raise Refused(CATEGORIES["too_large"])
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise Refused(f"weights[{name[:60]!r}] has non-finite values")
        out[name] = t
    return out


def _release_filter(output: Any, start: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Exactly the start weights' names, shapes and dtype, all finite; else nothing."""
    if not isinstance(output, dict) or set(output) != {"params"}:
        raise Refused(CATEGORIES["release"])
    params = output["params"]
    if not isinstance(params, dict) or set(params) != set(start):
        raise Refused(CATEGORIES["release"])
    released: dict[str, np.ndarray] = {}
    for name, ref in start.items():
        t = params[name]
        if (not isinstance(t, torch.Tensor) or t.shape != ref.shape
                or t.dtype != torch.float32 or not torch.isfinite(t).all()):
            raise Refused(CATEGORIES["release"])
        released[name] = t.numpy().copy()
    return released


def weights_digest(params: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode() + b"\0" + str(params[name].shape).encode() + b"\0")
        h.update(np.ascontiguousarray(params[name]).tobytes())
    return h.hexdigest()


def _run_child(run_dir: Path, timeout_s: int, site_dir: Path, cfg: SiteConfig) -> dict:
    procs = training_process.for_site(site_dir / "runs", site_dir / "logs" / "training.log",
                                      cfg.train_threads, cfg.warm_training_process)
    try:
        procs.run(run_dir, timeout_s)
    except training_process.ChildTimeout:
        raise Refused(CATEGORIES["timeout"]) from None
    status_file = run_dir / "status.json"
    if not status_file.exists():
        raise Refused(CATEGORIES["internal"])
    try:
        status = json.loads(status_file.read_text())
    except ValueError:
        raise Refused(CATEGORIES["internal"]) from None
    if not status.get("ok"):
        raise Refused(CATEGORIES.get(str(status.get("category")), CATEGORIES["internal"]))
    train_s = status.get("train_seconds")
    return {"device": "cuda" if status.get("device") == "cuda" else "cpu",
            "train_seconds": float(train_s) if isinstance(train_s, int | float) else None}


def execute_round(plan_json: str, data: Any, weights: Any) -> dict:
    """One round of an approved plan at this site. Called by the syft template only."""
    site_dir = Path(os.environ[SITE_DIR_ENV])
    try:
        return _execute(site_dir, plan_json, data, weights)
    except Refused as exc:
        return _failure(str(exc))
    except RoundRefused as exc:
        return _failure(str(exc))
    except Exception:
        log.exception("runtime internal error")
        return _failure(CATEGORIES["internal"])


def _recheck_policy(site_dir: Path, cfg: SiteConfig, gov: Governance, plan: TrainingPlan,
                    approval: Approval, record: Researcher, n: int) -> DatasetPolicy:
    """Re-run the verdict against the current policy file before every round.

    Rules overridden at approval stay overridden only while the policy file is the one
    approved under; the parameter cap is enforced by the training child itself. The
    access rules read the site's current record of the researcher (a data owner's change
    of institution applies from the next round).
    """
    try:
        policy, policy_hash = load_policy(cfg.path(site_dir, cfg.policy))
    except PolicyError:
        log.error("policy file is invalid; refusing every run until it is fixed")
        raise Refused("the site's policy file is invalid; no run is possible") from None
    dataset_policy = policy.for_dataset(plan.dataset)
    if dataset_policy is None:
        raise Refused(f"policy changed: no rule covers dataset {plan.dataset} any more")
    changed = policy_hash != approval.policy_hash
    shape = accounting.run_shape(n, plan.batch_size, plan.local_epochs)
    facts = Facts(researcher=plan.researcher, institution=record.institution,
                  today=date.today(), cohort_n=n, n_parameters=0,
                  noise_multiplier=accounting.derive_noise_multiplier(
                      plan.dp.target_epsilon, plan.dp.delta, shape, plan.rounds,
                      plan.dp.accountant),
                  epsilon_committed=gov.committed_epsilon(plan.researcher, plan.dataset,
                                                          plan.plan_hash))
    waived = set() if changed else set(approval.overridden)
    for line in review_plan(policy, plan, facts):
        if line.failed and line.rule not in waived:
            prefix = "policy changed" if changed else "policy"
            gov.audit(ACTOR, "run.refused", plan.plan_hash, reason=line.rule,
                      policy_hash=policy_hash)
            raise Refused(f"{prefix}: {line.message} ({line.rule}: {line.seen}, "
                          f"limit {line.limit})")
    return dataset_policy


def _execute(site_dir: Path, plan_json: str, data: Any, weights: Any) -> dict:
    site_dir, cfg = load_site(site_dir)
    try:
        plan = TrainingPlan.model_validate_json(plan_json)
    except ValidationError:
        raise Refused("invalid plan") from None
    gov = Governance(site_dir)

    # syft runs every call a second time on the mock: recognise it, spend nothing.
    dataset = gov.dataset(plan.dataset)
    is_asset = isinstance(data, dict) and data.get("format") == ASSET_FORMAT
    if not is_asset or dataset is None or data.get("cohort_id") != dataset["cohort_id"]:
        if is_asset and data.get("cohort_id") in gov.private_cohort_ids():
            raise Refused("input is not the plan's dataset")
        return _failure("mock data: no training is done on mocks", mock=True)

    approval = gov.approval(plan.plan_hash)
    if approval is None:
        gov.audit(ACTOR, "run.refused", plan.plan_hash, reason="not approved")
        raise Refused("plan is not approved at this site")
    record = Registry(gov).by_email(plan.researcher)
    if record is None:
        gov.audit(ACTOR, "run.refused", plan.plan_hash, reason="researcher not registered")
        raise Refused("the site has no record of the plan's researcher any more (an email "
                      "changed or the account was removed); resubmit the plan")
    if approval.researcher != plan.researcher or approval.dataset != plan.dataset:
        raise Refused("plan is not approved at this site")
    dataset_policy = _recheck_policy(site_dir, cfg, gov, plan, approval, record,
                                     int(dataset["n"]))

    start = _validate_weights(weights, dataset_policy.training.max_parameters)
    cohort = Cohort.from_asset(data)
    missing = [m for m in plan.inputs if m not in cohort.volumes]
    if missing:
        raise Refused(f"dataset {plan.dataset} has no {', '.join(missing)} images")
    shape = accounting.run_shape(cohort.n, plan.batch_size, plan.local_epochs)
    sigma = accounting.derive_noise_multiplier(
        plan.dp.target_epsilon, plan.dp.delta, shape, plan.rounds, plan.dp.accountant)
    ledger_accountant = dataset_policy.privacy.accountants[0]
    budget = Budget(
        researcher=plan.researcher, dataset=plan.dataset,
        cap=dataset_policy.privacy.epsilon_total,
        epsilon_of=lambda h: accounting.epsilon_spent(h, dataset_policy.privacy.delta_max,
                                                      ledger_accountant))
    run = gov.begin_run(plan.plan_hash, plan.rounds, sigma, shape.sample_rate, shape.steps,
                        ACTOR, budget=budget)
    log.info("run %s: plan %s round %d/%d started (n=%d, q=%.4f, sigma=%.4f, steps=%d)",
             run.id, plan.plan_hash[:12], run.round, plan.rounds, cohort.n,
             shape.sample_rate, sigma, shape.steps)
    t0 = time.perf_counter()
    run_dir = site_dir / "runs" / f"run-{run.id}"
    released = False
    category = CATEGORIES["internal"]
    try:
        run_dir.mkdir(parents=True, mode=0o700)
        torch.save({"plan_json": plan.canonical_json(), "weights": start,
                    "sample_rate": shape.sample_rate, "noise_multiplier": sigma,
                    "steps": shape.steps, "threads": cfg.train_threads,
                    "device": cfg.device if dataset_policy.training.device == "auto"
                    else dataset_policy.training.device,
                    "max_parameters": dataset_policy.training.max_parameters,
                    "seed": secrets.randbits(62)}, run_dir / "job.pt")
        x = torch.from_numpy(cohort.stacked(list(plan.inputs)))
        y = torch.from_numpy(cohort.labels)
        torch.save({"x": x, "y": y}, run_dir / "private.pt")
        del x, y
        timeout = min(cfg.training_timeout_s, dataset_policy.training.max_wall_time_s)
        info = _run_child(run_dir, timeout, site_dir, cfg)
        output = torch.load(run_dir / "output.pt", weights_only=True)
        params = _release_filter(output, start)
        history = gov.released_history(plan.plan_hash) + [(sigma, shape.sample_rate,
                                                             shape.steps)]
        eps = accounting.epsilon_spent(history, plan.dp.delta, plan.dp.accountant)
        digest = weights_digest(params)
        seconds = time.perf_counter() - t0
        gov.finish_run(run.id, released=True, actor=ACTOR, n_k=cohort.n, epsilon=eps,
                       weights_sha256=digest)
        released = True
        log.info("run %s released in %.1fs, epsilon %.3f", run.id, seconds, eps)
        return {
            "medsyft": WIRE_VERSION, "ok": True, "site": cfg.name, "round": run.round,
            "rounds": plan.rounds, "plan_hash": plan.plan_hash, "params": params,
            "n_k": dataset_policy.release.count(cohort.n),
            "seconds": round(seconds, 3), "train_seconds": info["train_seconds"],
            "device": info["device"],
            "weights_sha256": digest,
            "accounting": {
                "sample_rate": shape.sample_rate, "noise_multiplier": sigma,
                "steps": sum(h[2] for h in history), "round_steps": shape.steps,
                "delta": plan.dp.delta, "epsilon": eps,
                "target_epsilon": plan.dp.target_epsilon, "accountant": plan.dp.accountant,
                "max_grad_norm": plan.dp.max_grad_norm,
            },
        }
    except Refused as exc:
        category = str(exc)
        log.warning("run %s failed: %s", run.id, exc)
        raise
    except Exception:
        log.exception("run %s failed inside the runtime", run.id)
        raise Refused(CATEGORIES["internal"]) from None
    finally:
        if not released:
            gov.finish_run(run.id, released=False, actor=ACTOR, category=category)
        shutil.rmtree(run_dir, ignore_errors=True)
