"""Reports on the privacy ledger and on plans: `medsyft console ledger` and `console plans`.

The ledger of a researcher on a dataset is the accountant's composition of every
run of all their plans there that touched the data, released or failed (running
ones shown apart as reserved), after the DP count of a private cohort size, at the
policy's δ, against the policy's ε total, under the ledger's stated relation.
Read-only: reservation and commit happen in `Governance.begin_run` / `finish_run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from policies.contract import privacy
from policies.schema import PolicyError
from sites.governance.store import REFUSED, RUN_FINISHED, Governance
from sites.operator.config import load_site
from sites.operator.site import Site
from sites.runtime.accounting import accounting_for


class PlanSpend(BaseModel):
    plan_hash: str
    plan: str
    rounds_charged: int = Field(description="runs that touched the data, released or failed")
    rounds_failed: int
    epsilon: float


class LedgerEntry(BaseModel):
    researcher: str
    dataset: str
    accountant: str
    adjacency: Literal["add_remove", "replace_one"]
    guarantee: str = Field(description="the spent ε in words, with its relation")
    delta: float
    cap: float | None
    spent: float
    reserved: float
    remaining: float | None
    plans: list[PlanSpend]


class PlanProgress(BaseModel):
    plan_hash: str
    plan: str
    researcher: str
    dataset: str
    status: str
    rounds: int
    rounds_done: int
    rounds_left: int
    running: int
    epsilon: float | None


def _plan_docs(gov: Governance) -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for d in gov.decisions():
        if d["plan_json"] and d["method"] != REFUSED:  # refused requests are not plans here
            docs[d["plan_hash"]] = json.loads(d["plan_json"]) | {"_status": d["decision"]}
    return docs


def ledger(site_dir: Path, researcher: str | None = None,
           dataset: str | None = None) -> list[LedgerEntry]:
    """Every ledger (researcher × dataset), composed as the runtime charges it."""
    site_dir, cfg = load_site(site_dir)
    gov = Governance(site_dir)
    try:
        policy = Site(site_dir, cfg).policy()[0]
    except PolicyError:
        policy = None
    docs = _plan_docs(gov)
    out = []
    for r_email, ds in gov.ledger_keys():
        if (researcher and r_email != researcher) or (dataset and ds != dataset):
            continue
        rule = policy.for_dataset(ds) if policy else None
        record = gov.dataset(ds)
        if rule is None or record is None:
            # no rule or no dataset any more: state it under the stricter relation
            accounting = privacy.Accounting("pld", "replace_one", n=1)
        else:
            accounting = accounting_for(gov, record, rule, r_email)
        delta = rule.privacy.delta_max if rule else 1e-5
        cap = rule.privacy.epsilon_total if rule else None
        finished = gov.ledger_history(r_email, ds)
        running = gov.ledger_history(r_email, ds, ("running",))
        spent = accounting.epsilon([r.noise for r in finished], delta)
        with_reserved = accounting.epsilon([r.noise for r in finished + running], delta)
        per_plan: dict[str, list] = {}
        for r in finished:
            per_plan.setdefault(r.plan_hash, []).append(r)
        plans = [PlanSpend(plan_hash=h, plan=_name(docs.get(h)), rounds_charged=len(rs),
                           rounds_failed=sum(r.status != "released" for r in rs),
                           epsilon=accounting.epsilon([r.noise for r in rs], delta))
                 for h, rs in per_plan.items()]
        out.append(LedgerEntry(researcher=r_email, dataset=ds,
                               accountant=accounting.accountant,
                               adjacency=accounting.adjacency,
                               guarantee=privacy.guarantee(spent, delta, accounting.adjacency),
                               delta=delta, cap=cap, spent=spent,
                               reserved=with_reserved - spent,
                               remaining=None if cap is None else max(0.0, cap - with_reserved),
                               plans=plans))
    return out


def _name(doc: dict | None) -> str:
    return f"{doc['name']} v{doc['version']}" if doc else "(unknown)"


def plans(site_dir: Path) -> list[PlanProgress]:
    site_dir, _ = load_site(site_dir)
    gov = Governance(site_dir)
    out = []
    for plan_hash, doc in _plan_docs(gov).items():
        runs = gov.runs(plan_hash)
        done = sum(r.status in RUN_FINISHED for r in runs)
        running = sum(r.status == "running" for r in runs)
        eps = [r.epsilon for r in runs if r.status in RUN_FINISHED and r.epsilon is not None]
        approval = gov.approval(plan_hash)
        status = "approved" if approval else ("denied" if doc["_status"] == "denied"
                                              else "awaiting approval")
        out.append(PlanProgress(
            plan_hash=plan_hash, plan=_name(doc), researcher=doc["researcher"],
            dataset=doc["dataset"], status=status, rounds=int(doc["rounds"]),
            rounds_done=done, rounds_left=max(0, int(doc["rounds"]) - done - running),
            running=running, epsilon=max(eps) if eps else None))
    return out
