"""Check a plan against a site's public policy before submitting it.

Uses the same verdict code as the site (`policies.verdict.review_plan`) on the
published part of the policy. Who may access a dataset is not published, so
access rules come back as "warn: not checked"; σ is derived from the published
cohort size when the site releases it; the parameter count is measured
locally on the meta device (it is the researcher's own code).
"""

from __future__ import annotations

from datetime import date

import torch

from policies.contract import privacy
from policies.contract.model_code import build_model, parameter_count
from policies.contract.plan import TrainingPlan
from policies.schema import Access, SitePolicy
from policies.verdict import CheckResult, Facts, review_plan


def _policy_from_public(doc: dict) -> SitePolicy:
    datasets = {}
    for name, ds in doc["datasets"].items():
        ds = {k: v for k, v in ds.items() if k in ("privacy", "training", "model_code",
                                                  "release")}
        expires = (doc["datasets"][name].get("access") or {}).get("expires")
        datasets[name] = ds | {"access": Access(domains=["*"], expires=expires).model_dump()}
    return SitePolicy.model_validate({"version": doc["version"], "reviewers": ["(private)"],
                                      "datasets": datasets})


def precheck(doc: dict, plan: TrainingPlan) -> list[CheckResult]:
    policy = _policy_from_public(doc)
    ds = doc["datasets"].get(plan.dataset) or doc["datasets"].get("*") or {}
    n = ds.get("cohort_n")
    sigma = privacy.noise_for(plan, int(n)).noise_multiplier if n else None
    try:
        with torch.device("meta"):
            n_params = parameter_count(build_model(plan.model))  # as the site counts
        params_error = None
    except Exception as exc:
        n_params, params_error = None, f"{type(exc).__name__}: {exc}"[:200]
    facts = Facts(researcher=plan.researcher or "you", today=date.today(), cohort_n=n,
                  noise_multiplier=sigma, n_parameters=n_params, parameters_error=params_error)
    out = []
    for line in review_plan(policy, plan, facts):
        if line.rule in ("access.researcher", "access.institution", "privacy.epsilon_total"):
            line = line.model_copy(update={"status": "warn", "seen": "-",
                                           "limit": "private", "message": "checked by the site"})
        elif line.rule == "privacy.noise_multiplier" and sigma is None:
            line = line.model_copy(update={"status": "warn", "message": "cohort size not "
                                           "published; the site derives σ"})
        out.append(line)
    return out
