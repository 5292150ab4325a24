"""The approval console's logic: list, review, approve and deny code requests.

Each syft request is read through the admin client and reviewed:

* hard checks that nothing can override: the requester is an account the
  site registered (`sites.governance.registry`: identity is the site's record, never
  syft's editable profile); the submitted code is exactly the medsyft
  template for its embedded plan; the whole request around it is what the
  client produces (`sites.review.request_review`: one change, the template's
  built-in policies and arguments, inputs pinned to a published dataset and a
  researcher-owned dict); the plan's researcher is that record's email;
* the verdict against the site's policy file (`policies.verdict`), with the
  facts only the site knows (institution, cohort size, derived σ, parameter
  count on the meta device, ε already committed to other plans), and whether
  a person denied this model or these settings before (`sites.governance.denials`).

A review never raises: whatever goes wrong in it (a source too deep to parse,
a malformed request) becomes the hard failure `review`, so one request can
neither be approved by accident nor stall the review of the others.

Approval is written to the governance DB (plan hash, policy hash, reviewer,
time, overrides) before syft's request is approved; with `approvals_required:
2` syft is approved only at the second distinct reviewer. A failing policy rule
needs `override` with a reason, which is recorded and audited. Denials go to
syft with their reason. No private value is read here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from policies.contract import privacy
from policies.contract.errors import MedsyftError, Refused
from policies.contract.plan import TrainingPlan
from policies.contract.template import TemplateMismatch, extract_plan
from policies.schema import PolicyError, SitePolicy
from policies.verdict import CheckResult, Facts, review_plan
from sites.common.syft_client import quiet
from sites.common.syft_guard import MAX_SUBMITTED_CODE
from sites.governance.denials import RULE as DENIAL_RULE
from sites.governance.denials import automatic_approvals, denial_check, earlier_denials
from sites.governance.registry import Registry
from sites.governance.reviewers import Reviewer, Reviewers
from sites.governance.store import REFUSED, Governance
from sites.graph.check import GraphFacts
from sites.operator.admin import admin_client
from sites.operator.config import SiteConfig, load_site
from sites.operator.site import Site
from sites.review.request_review import SiteIdentity, request_checks
from sites.runtime import discriminators, graphs
from sites.runtime.accounting import accounting_for
from sites.sandbox.confine import SandboxUnavailable
from sites.sandbox.tracing import SiteBusy

log = logging.getLogger("medsyft.review")


class ConsoleError(MedsyftError, RuntimeError):
    pass


@dataclass
class RequestView:
    id: str
    status: str
    researcher: str
    function: str
    submitted_at: str
    plan: TrainingPlan | None
    template_error: str | None
    input_dataset: str | None
    inputs_ok: bool
    institution: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    noise_multiplier: float | None = None
    cohort_n: int | None = None  # the accounting's n (the DP count when N is private)
    adjacency: str | None = None
    accountant: str | None = None
    n_parameters: int | None = None
    graph: GraphFacts | None = None
    policy_hash: str = ""
    approvals_required: int = 1
    approvers: list[str] = field(default_factory=list)
    also_revoked: list[str] = field(default_factory=list)
    submitted_ts: float = 0.0  # seconds since the epoch (syft's request time)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    @property
    def hard_failures(self) -> list[CheckResult]:
        return [c for c in self.failing if not c.overridable]

    @property
    def needs_reviewer(self) -> bool:
        """True unless every rule passes and no earlier denial holds the researcher here:
        only then may `approval: auto` approve."""
        return self.plan is None or bool(self.failing) or any(
            c.rule == DENIAL_RULE and c.status != "pass" for c in self.checks)

    def summary(self) -> dict:
        p = self.plan
        return {
            "id": self.id, "status": self.status, "researcher": self.researcher,
            "dataset": p.dataset if p else self.input_dataset, "plan": p.name if p else None,
            "version": p.version if p else None, "rounds": p.rounds if p else None,
            "target_epsilon": p.dp.target_epsilon if p else None,
            "submitted_at": self.submitted_at, "function": self.function,
            "template_ok": self.template_error is None,
            "checks_failed": [c.rule for c in self.failing],
            "approvals": self.approvers, "approvals_required": self.approvals_required,
        }


def status_name(status: Any) -> str:
    """A syft request status as the console names it (`pending`, `approved`, `denied`)."""
    name = getattr(status, "name", str(status)).lower()
    return {"rejected": "denied"}.get(name, name)


def _hard(rule: str, ok: bool, seen: str, limit: str, message: str) -> CheckResult:
    return CheckResult(rule=rule, status="pass" if ok else "fail", seen=seen, limit=limit,
                       message="" if ok else message, overridable=False)


def site_facts(site_dir: Path, policy: SitePolicy, plan: TrainingPlan, researcher: str,
               institution: str | None, n_parameters: int | None = None,
               parameters_error: str | None = None, graph: GraphFacts | None = None) -> Facts:
    """Facts for the verdict that need the governance DB (cohort size, σ, committed ε)."""
    gov = Governance(site_dir)
    record = gov.dataset(plan.dataset)
    rule = policy.for_dataset(plan.dataset)
    accounting = sigma = noise_error = None
    if record and rule:
        accounting = accounting_for(gov, record, rule, researcher)
        try:
            sigma = privacy.noise_for(plan, accounting).noise_multiplier
        except privacy.TargetUnreachable as exc:
            noise_error = str(exc)
    return Facts(researcher=researcher, institution=institution, today=date.today(),
                 has_mask=bool(record.get("mask_classes")) if record else None,
                 cohort_n=accounting.n if accounting else None, noise_multiplier=sigma,
                 noise_error=noise_error,
                 adjacency=accounting.adjacency if accounting else None,
                 accountant=accounting.accountant if accounting else None,
                 n_parameters=n_parameters,
                 parameters_error=parameters_error,
                 graph_summary=graph.summary() if graph else None,
                 activation_mib=graph.activation_bytes / 2**20 if graph else None,
                 epsilon_committed=gov.committed_epsilon(researcher, plan.dataset,
                                                         plan.plan_hash))


@dataclass(frozen=True)
class ReviewContext:
    """What every review on one sweep needs from syft: the published assets (action id →
    dataset) and this site's identity."""

    assets: dict[str, str]
    site: SiteIdentity


def _safe(read: Any, default: str) -> str:
    """One field of a request that may itself fail to read."""
    try:
        return read()
    except Exception:
        return default


def _unreviewable_reason(exc: BaseException) -> str:
    if isinstance(exc, (RecursionError, MemoryError)):
        return "the submission is nested too deeply or is too large to review"
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__


def review_request(site_dir: Path, cfg: SiteConfig, req: Any,
                   context: ReviewContext) -> RequestView:
    """Hard checks plus the policy verdict for one syft request. Never raises: a request
    whose review fails is one hard failure (`review`), so it can neither be approved nor
    stop the review of the others."""
    try:
        return _review(site_dir, cfg, req, context)
    except Exception as exc:
        reason = _unreviewable_reason(exc)
        log.warning("review of request %s failed: %s", _safe(lambda: str(req.id)[:8], "?"),
                    type(exc).__name__)
        view = RequestView(
            id=_safe(lambda: str(req.id).replace("-", ""), ""),
            status=_safe(lambda: status_name(req.status), "pending"), researcher="(unknown)",
            function=_safe(lambda: str(req.code.service_func_name)[:80], "?"),
            submitted_at=_safe(lambda: str(req.request_time), ""), plan=None,
            template_error=f"review failed: {reason}", input_dataset=None, inputs_ok=False)
        view.checks = [_hard("review", False, "request", "a review that completes",
                             f"review failed: {reason}")]
        return view


def _review(site_dir: Path, cfg: SiteConfig, req: Any, context: ReviewContext) -> RequestView:
    code = req.code
    gov = Governance(site_dir)
    verify_key = str(req.requesting_user_verify_key)
    record = Registry(gov).by_verify_key(verify_key)
    researcher = record.email if record else f"unregistered account {verify_key[:12]}"
    raw = code.raw_code
    try:
        if not isinstance(raw, str) or len(raw) > MAX_SUBMITTED_CODE:
            raise TemplateMismatch("submitted code is larger than any medsyft plan")
        plan: TrainingPlan | None = extract_plan(raw)
        template_error = None
        if plan.function_name != code.service_func_name:
            template_error = "function name does not match the plan"
    except TemplateMismatch as exc:
        plan, template_error = None, str(exc)
    shape, ds_name = request_checks(req, code, context.site, context.assets)
    view = RequestView(
        id=str(req.id).replace("-", ""), status=status_name(req.status),
        researcher=researcher, function=str(code.service_func_name)[:80],
        submitted_at=str(req.request_time), plan=plan, template_error=template_error,
        input_dataset=ds_name, inputs_ok=not shape[2].failed,
        institution=record.institution if record else None,
        submitted_ts=float(getattr(req.request_time, "utc_timestamp", 0.0) or 0.0))
    view.approvers = gov.approvers(view.id)
    checks = [
        _hard("researcher.registered", record is not None, researcher,
              "an account the site registered (medsyft site add-researcher)",
              "the account is not one the site's data owner registered"),
        _hard("code.template", template_error is None, "submitted code",
              "exact medsyft template", template_error or ""),
        *shape,
    ]
    if plan is None:
        view.checks = checks
        return view
    checks += [
        _hard("plan.researcher", record is not None and plan.researcher == record.email,
              plan.researcher, researcher,
              "plan names another researcher than the site's record of the submitting account"),
        _hard("plan.dataset", plan.dataset == ds_name, plan.dataset, str(ds_name),
              "plan and input dataset differ"),
    ]
    try:
        policy, view.policy_hash = Site(site_dir, cfg).policy()
    except PolicyError as exc:
        view.checks = checks + [_hard("policy.file", False, "", "valid policy", str(exc))]
        return view
    view.approvals_required = policy.approvals_required
    view.graph, params_error = measured_graph(gov, cfg, policy, plan)
    view.n_parameters = view.graph.parameters if view.graph else None
    facts = site_facts(site_dir, policy, plan, researcher, view.institution,
                       view.n_parameters, params_error, view.graph)
    view.cohort_n, view.noise_multiplier = facts.cohort_n, facts.noise_multiplier
    view.adjacency, view.accountant = facts.adjacency, facts.accountant
    view.checks = checks + review_plan(policy, plan, facts) + [
        denial_check(earlier_denials(gov, plan, view.id))]
    return view


def measured_graph(gov: Governance, cfg: SiteConfig, policy: SitePolicy, plan: TrainingPlan
                   ) -> tuple[GraphFacts | None, str | None]:
    """The plan's training graph as the site measured it (parameters, operators, memory),
    or why there is none. The model is traced in the sealed tracer (the only place its
    code runs), once per model and dataset shape; a site too busy to start the tracer is
    asked again at the next review."""
    rules = policy.for_dataset(plan.dataset)
    record = gov.dataset(plan.dataset)
    if rules is None or record is None:
        return None, "not measured: no published dataset of that name"
    if not record.get("volume_shape"):
        return None, ("not measured: the dataset was published before training graphs; "
                      "its shape is known at the first round")
    shape = graphs.input_shape(plan, [int(v) for v in record["volume_shape"].split(",")])
    try:
        return graphs.plan_graph(gov, cfg, plan, shape, rules.training.max_parameters,
                                 int(record.get("mask_classes") or 0)).facts, None
    except (SiteBusy, SandboxUnavailable) as exc:
        return None, str(exc)
    except Refused as exc:
        return None, str(exc)


def _hex(uid: Any) -> str:
    return str(uid).replace("-", "")


def _context(client: Any) -> ReviewContext:
    assets = {_hex(asset.action_id): ds.name for ds in client.datasets.get_all()
              for asset in ds.assets}
    metadata = client.metadata
    return ReviewContext(assets=assets, site=SiteIdentity(
        server_id=_hex(client.id), verify_key=str(metadata.verify_key)))


@contextlib.contextmanager
def _admin(site_dir: Path, client: Any = None) -> Iterator[tuple[Path, SiteConfig, Any]]:
    """The site's admin client: the one given (the web console holds its own), or a login
    with the keyring's admin password."""
    if client is None:
        with admin_client(site_dir) as opened:
            yield opened
    else:
        site_dir, cfg = load_site(site_dir)
        yield site_dir, cfg, client


def list_requests(site_dir: Path, client: Any = None) -> list[RequestView]:
    with _admin(site_dir, client) as (site_dir, cfg, client):
        context = _context(client)
        views = [review_request(site_dir, cfg, req, context)
                 for req in client.requests.get_all()]
    views.sort(key=lambda v: v.submitted_at)
    return views


def _find(client: Any, request_id: str) -> Any:
    rid = request_id.replace("-", "").lower()
    if len(rid) < 4:
        raise ConsoleError("give at least 4 characters of the request id")
    matches = [r for r in client.requests.get_all() if str(r.id).replace("-", "").startswith(rid)]
    if not matches:
        raise ConsoleError(f"no request with id {request_id}")
    if len(matches) > 1:
        raise ConsoleError(f"request id {request_id} is ambiguous; give more characters")
    return matches[0]


def show(site_dir: Path, request_id: str, client: Any = None) -> RequestView:
    with _admin(site_dir, client) as (site_dir, cfg, client):
        return review_request(site_dir, cfg, _find(client, request_id), _context(client))


def reviewer_name(reviewer: Reviewer | str) -> str:
    """How a decision names who made it: an account's email, or the steward's own name."""
    return reviewer.email if isinstance(reviewer, Reviewer) else reviewer


def _record(site_dir: Path, cfg: SiteConfig, view: RequestView, decision: str,
            reviewer: Reviewer | str, note: str, method: str,
            overridden: list[str] | None = None, via: str = "") -> None:
    who = (f"{reviewer.name} <{reviewer.email}>" if isinstance(reviewer, Reviewer)
           else reviewer)
    try:
        Governance(site_dir).record_decision(
            request_id=view.id,
            plan_hash=view.plan.plan_hash if view.plan else f"unparsed:{view.function}",
            researcher=view.researcher, institution=view.institution,
            dataset=view.plan.dataset if view.plan else str(view.input_dataset),
            decision=decision, policy_hash=view.policy_hash,
            reviewer=reviewer_name(reviewer),
            actor=f"{who} via {via or cfg.admin_email}", note=note, method=method,
            plan_json=view.plan.canonical_json() if view.plan else "",
            overridden=overridden, approvals_required=view.approvals_required,
            verdict=[c.model_dump() for c in view.checks],
            graph_digest=view.graph.digest if view.graph else None)
    except ValueError as exc:
        raise ConsoleError(f"request {view.short_id}: {exc}") from None


def _reviewer_may_decide(site_dir: Path, policy: SitePolicy, reviewer: Reviewer | str) -> None:
    """A person's decision needs their own account, still enabled, named by the policy."""
    if not isinstance(reviewer, Reviewer):
        raise ConsoleError("a reviewer's decision needs the reviewer's own account: log in "
                           "with it (`--reviewer EMAIL`, or the web console)")
    current = Reviewers(Governance(site_dir)).get(reviewer.email)
    if current is None or current.disabled:
        raise ConsoleError(f"{reviewer.email}: this reviewer account no longer exists or is "
                           "disabled")
    if not current.listed_in(policy.reviewers):
        raise ConsoleError(f"{reviewer.email} ({current.name}) is not among the policy's "
                           f"reviewers ({', '.join(policy.reviewers)})")


def _apply_in_syft(req: Any, decision: str, reason: str = "") -> None:
    with quiet():
        res = req.approve(disable_warnings=True) if decision == "approved" \
            else req.deny(reason=reason)
    if type(res).__name__ == "SyftError":
        raise ConsoleError(f"syft refused the decision ({decision}): {res.message}")


def approve_view(site_dir: Path, cfg: SiteConfig, req: Any, view: RequestView,
                 reviewer: Reviewer | str, note: str = "", override: bool = False,
                 method: str = "manual", via: str = "") -> RequestView:
    """Approve a reviewed request (shared by the CLI, the web console and automatic
    approval, whose `reviewer` is the steward's own name). Under four-eyes syft's request
    is approved only at the second distinct account."""
    if view.plan is None:
        raise ConsoleError(f"request {view.short_id} is not a medsyft plan "
                           f"({view.template_error}); it cannot be approved")
    if view.hard_failures:
        rules = ", ".join(f"{c.rule} ({c.message})" for c in view.hard_failures)
        raise ConsoleError(f"request {view.short_id} cannot be approved, not even with an "
                           f"override: {rules}")
    policy, _ = Site(site_dir, cfg).policy()
    if method != "auto":
        _reviewer_may_decide(site_dir, policy, reviewer)
    overridden = [c.rule for c in view.failing]
    if overridden and not override:
        rules = ", ".join(f"{c.rule} ({c.message}: {c.seen} vs {c.limit})" for c in view.failing)
        raise ConsoleError(f"request {view.short_id} fails policy rules: {rules}. Approve "
                           "anyway only with --override --reason")
    if override and not note.strip():
        raise ConsoleError("an override needs --reason; it is recorded in the audit")
    if view.status == "approved":
        raise ConsoleError(f"request {view.short_id} is already approved")
    _record(site_dir, cfg, view, "approved", reviewer, note,
            "override" if overridden else method, overridden, via)
    view.approvers = Governance(site_dir).approvers(view.id)
    if len(view.approvers) >= view.approvals_required:
        _apply_in_syft(req, "approved")
        view.status = "approved"
    else:
        view.status = "awaiting second approval"
    return view


def refuse_view(site_dir: Path, cfg: SiteConfig, req: Any, view: RequestView,
                reviewer: str) -> RequestView:
    """Deny a request whose hard checks fail (no override can pass them), with the rules
    and reasons the researcher reads. Recorded as a refusal, which is not a sticky denial."""
    failing = view.hard_failures or view.failing
    reason = "refused: " + "; ".join(f"{c.rule}: {c.message}" for c in failing)[:900]
    _record(site_dir, cfg, view, "denied", reviewer, reason, REFUSED)
    _apply_in_syft(req, "denied", reason)
    view.status = "denied"
    return view


def approve(site_dir: Path, request_id: str, reviewer: Reviewer, note: str = "",
            override: bool = False, client: Any = None, via: str = "") -> RequestView:
    """Approve a request that passes every rule (or override failing policy rules), as
    the logged-in `reviewer` (`Reviewers.authenticate`)."""
    with _admin(site_dir, client) as (site_dir, cfg, client):
        req = _find(client, request_id)
        view = review_request(site_dir, cfg, req, _context(client))
        return approve_view(site_dir, cfg, req, view, reviewer, note, override, via=via)


def deny(site_dir: Path, request_id: str, reason: str, reviewer: Reviewer,
         client: Any = None, via: str = "") -> RequestView:
    """Deny (or revoke) a request as the logged-in `reviewer`; the researcher reads
    `reason`. The researcher's other plans on the dataset that were approved automatically
    are revoked with it (listed in `view.also_revoked`): a person's no withdraws the
    policy's automatic yes there."""
    if not reason.strip():
        raise ConsoleError("a denial needs a reason; the researcher will read it")
    with _admin(site_dir, client) as (site_dir, cfg, client):
        req = _find(client, request_id)
        context = _context(client)
        view = review_request(site_dir, cfg, req, context)
        if view.status == "denied":
            raise ConsoleError(f"request {view.short_id} is already denied")
        policy, _ = Site(site_dir, cfg).policy()
        _reviewer_may_decide(site_dir, policy, reviewer)
        _record(site_dir, cfg, view, "denied", reviewer, reason, "manual", via=via)
        _apply_in_syft(req, "denied", reason)
        view.status = "denied"
        view.approvers = Governance(site_dir).approvers(view.id)  # none stand after a no
        if view.plan is not None:
            discriminators.forget(site_dir, view.plan.plan_hash)  # a GAN plan ends here
            for other_id in automatic_approvals(Governance(site_dir), view.plan, view.id):
                other = review_request(site_dir, cfg, _find(client, other_id), context)
                if other.plan is not None:
                    discriminators.forget(site_dir, other.plan.plan_hash)
                note = f"revoked with request {view.short_id} (approved automatically): {reason}"
                _record(site_dir, cfg, other, "denied", reviewer, note, "manual", via=via)
                _apply_in_syft(_find(client, other_id), "denied", note)
                view.also_revoked.append(other_id)
        return view


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
