"""What each console page shows, as pydantic models (the JSON variant of every page).

Built from the review (`sites.review.console`), the ledger and plan reports
(`sites.review.ledger`), the governance database and the policy file. Shows the
data owner what they decide on and what the site released: plans, verdicts, ε,
audit entries. Must never read a private value (no voxel, no label, no subject
identifier): nothing here opens the cohort.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from policies.contract import privacy
from policies.contract.claims import guarantee
from policies.explain import explain
from policies.schema import PolicyError
from policies.verdict import CheckResult
from sites.governance.denials import model_fingerprint
from sites.governance.store import REFUSED, RUN_FINISHED, Governance
from sites.operator.config import load_site
from sites.operator.site import Site
from sites.review.console import RequestView
from sites.review.ledger import LedgerEntry, PlanProgress, ledger, plans
from sites.runtime.accounting import accounting_for

#: Most points a ledger's ε-over-time curve is computed at (each is one accountant call).
MAX_CURVE_POINTS = 40


class RequestRow(BaseModel):
    id: str
    short_id: str
    status: str
    researcher: str
    institution: str | None
    dataset: str | None
    plan: str | None
    rounds: int | None
    target_epsilon: float | None
    submitted_at: str
    age_seconds: float | None
    passed: int
    failed: int
    warned: int
    hard_failures: int
    approvals: list[str]
    approvals_required: int
    needs_action: bool = Field(description="pending, and this site's reviewers must decide")


class EarlierDecision(BaseModel):
    request_id: str
    plan: str
    decision: str
    reviewer: str
    method: str
    note: str
    decided_at: float


class RequestDetail(BaseModel):
    row: RequestRow
    template_error: str | None
    function: str
    checks: list[CheckResult]
    overridable_failures: list[str]
    plan: dict | None
    model_source: str | None
    model_class: str | None
    discriminator_source: str | None = None  # a GAN plan's: researcher code too
    noise_multiplier: float | None
    cohort_n: int | None
    adjacency: str | None
    accountant: str | None
    guarantee: str | None
    n_parameters: int | None
    operators: dict[str, int]
    activation_mib: float | None
    graph_digest: str | None
    earlier: list[EarlierDecision]


def _counts(checks: list[CheckResult]) -> tuple[int, int, int]:
    c = Counter(x.status for x in checks)
    return c["pass"], c["fail"], c["warn"]


def request_row(v: RequestView, now: float | None = None) -> RequestRow:
    now = time.time() if now is None else now
    p = v.plan
    passed, failed, warned = _counts(v.checks)
    return RequestRow(
        id=v.id, short_id=v.short_id, status=v.status, researcher=v.researcher,
        institution=v.institution, dataset=p.dataset if p else v.input_dataset,
        plan=f"{p.name} v{p.version}" if p else None, rounds=p.rounds if p else None,
        target_epsilon=p.dp.target_epsilon if p else None, submitted_at=v.submitted_at,
        age_seconds=max(0.0, now - v.submitted_ts) if v.submitted_ts else None,
        passed=passed, failed=failed, warned=warned, hard_failures=len(v.hard_failures),
        approvals=v.approvers, approvals_required=v.approvals_required,
        needs_action=v.status == "pending" and v.plan is not None and not v.hard_failures)


def request_rows(views: list[RequestView]) -> list[RequestRow]:
    """Pending first (oldest first among them), then the rest, newest first."""
    now = time.time()
    rows = [request_row(v, now) for v in views]
    pending = sorted((r for r in rows if r.status == "pending"),
                     key=lambda r: -(r.age_seconds or 0))
    rest = sorted((r for r in rows if r.status != "pending"),
                  key=lambda r: r.age_seconds or 0)
    return pending + rest


def earlier_decisions(gov: Governance, v: RequestView) -> list[EarlierDecision]:
    """Decisions on other requests whose model is this one's (same fingerprint)."""
    if v.plan is None:
        return []
    from policies.contract.plan import TrainingPlan

    mine = model_fingerprint(v.plan)
    out = []
    for d in gov.decisions():
        if d["request_id"] == v.id or not d["plan_json"]:
            continue
        try:
            other = TrainingPlan.model_validate_json(d["plan_json"])
        except ValueError:
            continue
        if model_fingerprint(other) == mine:
            out.append(EarlierDecision(
                request_id=d["request_id"], plan=f"{other.name} v{other.version}",
                decision=d["decision"], reviewer=d["reviewer"], method=d["method"],
                note=d["note"], decided_at=d["decided_at"]))
    return out


def request_detail(site_dir: Path, v: RequestView) -> RequestDetail:
    p = v.plan
    return RequestDetail(
        row=request_row(v), template_error=v.template_error, function=v.function,
        checks=v.checks,
        overridable_failures=[c.rule for c in v.failing if c.overridable],
        plan=p.model_dump(mode="json", exclude={"model": True,
                                                "adversarial": {"discriminator": {"source"}}})
        if p else None,
        model_source=p.model.source if p else None,
        discriminator_source=p.adversarial.discriminator.source
        if p and p.adversarial else None,
        model_class=f"{p.model.class_name}({p.model.kwargs})" if p else None,
        noise_multiplier=v.noise_multiplier, cohort_n=v.cohort_n, adjacency=v.adjacency,
        accountant=v.accountant,
        guarantee=guarantee(p.dp.target_epsilon, p.dp.delta, v.adjacency)
        if p and v.adjacency else None,
        n_parameters=v.n_parameters,
        operators=dict(v.graph.operators) if v.graph else {},
        activation_mib=v.graph.activation_bytes / 2**20 if v.graph else None,
        graph_digest=v.graph.digest if v.graph else None,
        earlier=earlier_decisions(Governance(site_dir), v))


# -- ledger ---------------------------------------------------------------------------

class CurvePoint(BaseModel):
    at: float
    epsilon: float


class LedgerView(BaseModel):
    entry: LedgerEntry
    curve: list[CurvePoint] = Field(description="ε spent after each finished run")


def ledger_curve(site_dir: Path, researcher: str, dataset: str) -> list[CurvePoint]:
    """ε of the ledger after each finished run (at most `MAX_CURVE_POINTS` points, the
    last run always among them), composed as `ledger` composes it."""
    site_dir, cfg = load_site(site_dir)
    gov = Governance(site_dir)
    try:
        rule = Site(site_dir, cfg).policy()[0].for_dataset(dataset)
    except PolicyError:
        rule = None
    record = gov.dataset(dataset)
    if rule is None or record is None:
        accounting = privacy.Accounting("pld", "replace_one", n=1)
    else:
        accounting = accounting_for(gov, record, rule, researcher)
    delta = rule.privacy.delta_max if rule else 1e-5
    runs = [r for r in gov.ledger_history(researcher, dataset, RUN_FINISHED)]
    if not runs:
        return []
    step = max(1, -(-len(runs) // MAX_CURVE_POINTS))
    picks = sorted(set(range(step - 1, len(runs), step)) | {len(runs) - 1})
    return [CurvePoint(at=runs[i].ended_at or runs[i].started_at,
                       epsilon=accounting.epsilon([r.noise for r in runs[:i + 1]], delta))
            for i in picks]


def ledgers(site_dir: Path) -> list[LedgerEntry]:
    return ledger(site_dir)


# -- plans ----------------------------------------------------------------------------

class PlanRow(BaseModel):
    progress: PlanProgress
    last_release: float | None
    failures: dict[str, int] = Field(description="failed or aborted runs by category")


def plan_rows(site_dir: Path) -> list[PlanRow]:
    gov = Governance(load_site(site_dir)[0])
    out = []
    for p in plans(site_dir):
        runs = gov.runs(p.plan_hash)
        released = [r.ended_at for r in runs if r.status == "released" and r.ended_at]
        failures = Counter((r.category or r.status) for r in runs
                           if r.status in ("failed", "aborted"))
        out.append(PlanRow(progress=p, last_release=max(released) if released else None,
                           failures=dict(failures)))
    return out


# -- audit ----------------------------------------------------------------------------

class AuditView(BaseModel):
    entries: list[dict]
    total: int
    head_hash: str | None = Field(description="the chain's last hash: anchor it elsewhere")
    head_seq: int | None
    events: list[str]


def audit_view(site_dir: Path, event: str = "", actor: str = "", subject: str = "",
               since: float = 0.0, limit: int = 500) -> AuditView:
    gov = Governance(load_site(site_dir)[0])
    entries = gov.audit_entries(since)
    head = entries[-1] if entries else None
    if since:
        every = gov.audit_entries()
        head = every[-1] if every else None
    events = sorted({e["event"] for e in entries})

    def keep(e: dict) -> bool:
        return ((not event or e["event"] == event or e["event"].startswith(event + "."))
                and (not actor or actor.lower() in e["actor"].lower())
                and (not subject or subject.lower() in e["subject"].lower()))

    chosen = [e for e in entries if keep(e)]
    return AuditView(entries=chosen[-limit:][::-1], total=len(chosen),
                     head_hash=head["hash"] if head else None,
                     head_seq=head["seq"] if head else None, events=events)


class VerifyResult(BaseModel):
    ok: bool
    entries: int
    message: str


def verify(site_dir: Path) -> VerifyResult:
    ok, n, message = Governance(load_site(site_dir)[0]).verify_audit()
    return VerifyResult(ok=ok, entries=n, message=message)


def audit_lines(site_dir: Path) -> str:
    """Every entry with its hashes, as JSON lines (what `console audit --export` writes)."""
    entries = Governance(load_site(site_dir)[0]).audit_entries()
    return "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)


# -- policy ---------------------------------------------------------------------------

class PolicyVersion(BaseModel):
    policy_hash: str
    loaded_at: float


class PolicyView(BaseModel):
    file: str
    policy_hash: str | None
    version: int | None
    explained: list[str]
    error: str | None
    text: str
    history: list[PolicyVersion]


def policy_view(site_dir: Path) -> PolicyView:
    site = Site.open(site_dir)
    gov = Governance(site.folder)
    history = [PolicyVersion(policy_hash=e["details"].get("policy_hash", ""), loaded_at=e["at"])
               for e in gov.audit_entries() if e["event"] == "policy.loaded"][::-1]
    text = site.policy_file.read_text(errors="replace") if site.policy_file.exists() else ""
    try:
        policy, digest = site.policy()
        return PolicyView(file=str(site.policy_file), policy_hash=digest,
                          version=policy.version, explained=explain(policy), error=None,
                          text=text, history=history)
    except PolicyError as exc:
        return PolicyView(file=str(site.policy_file), policy_hash=None, version=None,
                          explained=[], error=str(exc), text=text, history=history)


def decisions_of(gov: Governance, request_id: str) -> list[dict]:
    return [d for d in gov.decisions() if d["request_id"] == request_id
            and d["method"] != REFUSED]
