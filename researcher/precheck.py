"""Check a plan against a site's public policy before submitting it.

Uses the same verdict code as the site (`policies.verdict.review_plan`) on the
published part of the policy. Who may access a dataset is not published, so
access rules come back as "warn: not checked"; σ is derived under the site's
published accounting terms (relation, accountant, and the N or DP count q derives
from), as the site will; the model is traced into its training
graph locally and checked against the site's operator allowlist, as the site will
do in its sealed tracer (it is the researcher's own code, on their own machine).
"""

from __future__ import annotations

from datetime import date

import torch

from policies.contract import privacy
from policies.contract.model_code import build_model, parameter_count
from policies.contract.plan import TrainingPlan
from policies.schema import Access, SitePolicy
from policies.verdict import CheckResult, Facts, review_plan
from sites.graph import check
from sites.graph.export import trace


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
    terms = ds.get("accounting") or {}
    accounting = sigma = noise_error = None
    if terms.get("n"):
        accounting = privacy.Accounting(accountant=terms["accountant"],
                                        adjacency=terms["adjacency"], n=int(terms["n"]),
                                        count_noise=terms.get("count_noise"))
        try:
            sigma = privacy.noise_for(plan, accounting).noise_multiplier
        except privacy.TargetUnreachable as exc:
            noise_error = str(exc)
    n = accounting.n if accounting else None
    graph_facts, params_error = None, None
    shape = ds.get("volume_shape")
    try:
        if shape:
            graph = trace(build_model(plan.model), [1, len(plan.inputs), *shape])
            # the cap is the verdict's line, not a reason to stop measuring
            _, graph_facts = check.validate(graph.canonical_json(), loss=plan.loss,
                                            max_parameters=1 << 62)
            if plan.adversarial is not None:  # the sites check both networks together
                d_graph = trace(build_model(plan.adversarial.discriminator),
                                [1, len(plan.inputs) + 1, *shape])
                _, d_facts = check.validate(d_graph.canonical_json(),
                                            loss=check.DISCRIMINATOR, max_parameters=1 << 62)
                graph_facts = check.combine(graph_facts, d_facts)
            n_params = graph_facts.parameters
        else:
            with torch.device("meta"):
                n_params = parameter_count(build_model(plan.model))  # as the site counts
                if plan.adversarial is not None:
                    n_params += parameter_count(build_model(plan.adversarial.discriminator))
    except Exception as exc:
        n_params, params_error = None, f"{type(exc).__name__}: {exc}"[:300]
    facts = Facts(researcher=plan.researcher or "you", today=date.today(), cohort_n=n,
                  noise_multiplier=sigma, noise_error=noise_error,
                  adjacency=terms.get("adjacency"), accountant=terms.get("accountant"),
                  n_parameters=n_params, parameters_error=params_error,
                  graph_summary=graph_facts.summary() if graph_facts else None,
                  activation_mib=graph_facts.activation_bytes / 2**20 if graph_facts else None)
    out = []
    for line in review_plan(policy, plan, facts):
        if line.rule in ("access.researcher", "access.institution", "privacy.epsilon_total"):
            line = line.model_copy(update={"status": "warn", "seen": "-",
                                           "limit": "private", "message": "checked by the site"})
        elif line.rule == "training.graph" and not shape and n_params is not None:
            line = line.model_copy(update={"status": "warn", "seen": "-", "message":
                                           "volume shape not published; the site traces"})
        elif line.rule == "privacy.noise_multiplier" and sigma is None and not noise_error:
            line = line.model_copy(update={"status": "warn", "message": "cohort size not "
                                           "published; the site derives σ"})
        out.append(line)
    return out
