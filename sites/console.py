"""The approval console's logic: list, review, approve and deny code requests.

Each syft request is read through the admin client and reviewed:

* hard checks that nothing can override: the submitted code is exactly the
  medsyft template for its embedded plan; the plan's researcher is the account
  that submitted it; the inputs are the plan's dataset and a researcher-owned
  dict of weights;
* the verdict against the site's policy file (`policies.verdict`), with the
  facts only the site knows (institution, cohort size, derived σ, parameter
  count on the meta device, ε already committed to other plans).

Approval is written to the governance DB (plan hash, policy hash, reviewer,
time, overrides) before syft's request is approved; with `approvals_required:
2` syft is approved only at the second distinct reviewer. A failing policy rule
needs `override` with a reason, which is recorded and audited. Denials go to
syft with their reason. No private value is read here.
"""

from __future__ import annotations

import getpass
import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from policies.schema import PolicyError, SitePolicy, load_policy
from policies.verdict import CheckResult, Facts, review_plan
from researcher.plan import TrainingPlan
from researcher.template import TemplateMismatch, extract_plan
from sites import accounting
from sites.admin import admin_client
from sites.config import SiteConfig
from sites.governance import Governance
from sites.model_inspect import InspectError, count_parameters
from sites.syft_client import quiet


class ConsoleError(RuntimeError):
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
    cohort_n: int | None = None
    n_parameters: int | None = None
    policy_hash: str = ""
    approvals_required: int = 1
    approvers: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    @property
    def hard_failures(self) -> list[CheckResult]:
        return [c for c in self.failing if not c.overridable]

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


def _status_name(status: Any) -> str:
    name = getattr(status, "name", str(status)).lower()
    return {"rejected": "denied"}.get(name, name)


def _input_dataset(req: Any, assets: dict[str, str]) -> tuple[str | None, bool]:
    """The dataset behind the request's pinned asset, and whether the inputs are exactly
    {data: that asset, weights: a researcher-owned dict}."""
    kwargs = req.code.input_policy_init_kwargs or {}
    policy_type = getattr(req.code.input_policy_type, "__name__", "")
    if len(kwargs) != 1 or policy_type != "MixedInputPolicy":
        return None, False
    rules = next(iter(kwargs.values()))
    if set(rules) != {"data", "weights"}:
        return None, False
    data, weights = rules["data"], rules["weights"]
    ds = assets.get(str(getattr(data, "val", "")))
    ok = (type(data).__name__ == "Matches" and type(weights).__name__ == "UserOwned"
          and getattr(weights, "type", None) is dict and ds is not None)
    return ds, ok


def _hard(rule: str, ok: bool, seen: str, limit: str, message: str) -> CheckResult:
    return CheckResult(rule=rule, status="pass" if ok else "fail", seen=seen, limit=limit,
                       message="" if ok else message, overridable=False)


def site_facts(site_dir: Path, policy: SitePolicy, plan: TrainingPlan, researcher: str,
               institution: str | None, n_parameters: int | None = None,
               parameters_error: str | None = None) -> Facts:
    """Facts for the verdict that need the governance DB (cohort size, σ, committed ε)."""
    gov = Governance(site_dir)
    record = gov.dataset(plan.dataset)
    n = int(record["n"]) if record else None
    sigma = None
    if n:
        shape = accounting.run_shape(n, plan.batch_size, plan.local_epochs)
        sigma = accounting.derive_noise_multiplier(
            plan.dp.target_epsilon, plan.dp.delta, shape, plan.rounds, plan.dp.accountant)
    return Facts(researcher=researcher, institution=institution, today=date.today(),
                 cohort_n=n, noise_multiplier=sigma, n_parameters=n_parameters,
                 parameters_error=parameters_error,
                 epsilon_committed=gov.committed_epsilon(researcher, plan.dataset,
                                                         plan.plan_hash))


def review_request(site_dir: Path, cfg: SiteConfig, req: Any, assets: dict[str, str],
                   institutions: dict[str, str | None]) -> RequestView:
    """Hard checks plus the policy verdict for one syft request."""
    code = req.code
    try:
        plan: TrainingPlan | None = extract_plan(code.raw_code)
        template_error = None
        if plan.function_name != code.service_func_name:
            template_error = "function name does not match the plan"
    except TemplateMismatch as exc:
        plan, template_error = None, str(exc)
    ds_name, inputs_ok = _input_dataset(req, assets)
    researcher = str(req.requesting_user_email)
    view = RequestView(
        id=str(req.id).replace("-", ""), status=_status_name(req.status),
        researcher=researcher, function=str(code.service_func_name),
        submitted_at=str(req.request_time), plan=plan, template_error=template_error,
        input_dataset=ds_name, inputs_ok=inputs_ok, institution=institutions.get(researcher))
    gov = Governance(site_dir)
    view.approvers = gov.approvers(view.id)
    checks = [
        _hard("code.template", template_error is None, "submitted code",
              "exact medsyft template", template_error or ""),
        _hard("inputs", inputs_ok, str(ds_name), "plan dataset + weights dict",
              "inputs are not the medsyft pair"),
    ]
    if plan is None:
        view.checks = checks
        return view
    checks += [
        _hard("plan.researcher", plan.researcher == researcher, plan.researcher, researcher,
              "plan names another researcher than the submitting account"),
        _hard("plan.dataset", plan.dataset == ds_name, plan.dataset, str(ds_name),
              "plan and input dataset differ"),
    ]
    try:
        policy, view.policy_hash = load_policy(cfg.path(site_dir, cfg.policy))
    except PolicyError as exc:
        view.checks = checks + [_hard("policy.file", False, "", "valid policy", str(exc))]
        return view
    view.approvals_required = policy.approvals_required
    model_json = plan.model.model_dump_json()
    model_hash = hashlib.sha256(model_json.encode()).hexdigest()
    view.n_parameters, params_error = gov.cached_parameters(model_hash), None
    if view.n_parameters is None:
        try:
            view.n_parameters = count_parameters(model_json)
            gov.cache_parameters(model_hash, view.n_parameters)
        except InspectError as exc:
            params_error = str(exc)
    facts = site_facts(site_dir, policy, plan, researcher, view.institution,
                       view.n_parameters, params_error)
    view.cohort_n, view.noise_multiplier = facts.cohort_n, facts.noise_multiplier
    view.checks = checks + review_plan(policy, plan, facts)
    return view


def _asset_index(client: Any) -> dict[str, str]:
    out = {}
    for ds in client.datasets.get_all():
        for asset in ds.assets:
            out[str(asset.action_id)] = ds.name
    return out


def _institutions(client: Any) -> dict[str, str | None]:
    return {u.email: getattr(u, "institution", None) for u in client.users.get_all()}


def _context(client: Any) -> tuple[dict[str, str], dict[str, str | None]]:
    return _asset_index(client), _institutions(client)


def list_requests(site_dir: Path) -> list[RequestView]:
    with admin_client(site_dir) as (site_dir, cfg, client):
        assets, insts = _context(client)
        views = [review_request(site_dir, cfg, req, assets, insts)
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


def show(site_dir: Path, request_id: str) -> RequestView:
    with admin_client(site_dir) as (site_dir, cfg, client):
        return review_request(site_dir, cfg, _find(client, request_id), *_context(client))


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _record(site_dir: Path, cfg: SiteConfig, view: RequestView, decision: str, reviewer: str,
            note: str, method: str, overridden: list[str] | None = None) -> None:
    try:
        Governance(site_dir).record_decision(
            request_id=view.id,
            plan_hash=view.plan.plan_hash if view.plan else f"unparsed:{view.function}",
            researcher=view.researcher, institution=view.institution,
            dataset=view.plan.dataset if view.plan else str(view.input_dataset),
            decision=decision, policy_hash=view.policy_hash, reviewer=reviewer,
            actor=f"{reviewer} via {cfg.admin_email}", note=note, method=method,
            plan_json=view.plan.canonical_json() if view.plan else "",
            overridden=overridden, approvals_required=view.approvals_required,
            verdict=[c.model_dump() for c in view.checks])
    except ValueError as exc:
        raise ConsoleError(f"request {view.short_id}: {exc}") from None


def _apply_in_syft(req: Any, decision: str, reason: str = "") -> None:
    with quiet():
        res = req.approve(disable_warnings=True) if decision == "approved" \
            else req.deny(reason=reason)
    if type(res).__name__ == "SyftError":
        raise ConsoleError(f"syft refused the decision ({decision}): {res.message}")


def approve_view(site_dir: Path, cfg: SiteConfig, req: Any, view: RequestView, reviewer: str,
                 note: str = "", override: bool = False, method: str = "manual") -> RequestView:
    """Approve a reviewed request (shared by the console and automatic approval)."""
    if view.plan is None:
        raise ConsoleError(f"request {view.short_id} is not a medsyft plan "
                           f"({view.template_error}); it cannot be approved")
    if view.hard_failures:
        rules = ", ".join(f"{c.rule} ({c.message})" for c in view.hard_failures)
        raise ConsoleError(f"request {view.short_id} cannot be approved, not even with an "
                           f"override: {rules}")
    policy, _ = load_policy(cfg.path(site_dir, cfg.policy))
    if method != "auto" and reviewer not in policy.reviewers:
        raise ConsoleError(f"{reviewer!r} is not among the policy's reviewers "
                           f"({', '.join(policy.reviewers)}); use --reviewer")
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
            "override" if overridden else method, overridden)
    view.approvers = Governance(site_dir).approvers(view.id)
    if len(view.approvers) >= view.approvals_required:
        _apply_in_syft(req, "approved")
        view.status = "approved"
    else:
        view.status = "awaiting second approval"
    return view


def approve(site_dir: Path, request_id: str, note: str = "", reviewer: str | None = None,
            override: bool = False) -> RequestView:
    """Approve a request that passes every rule (or override failing policy rules)."""
    with admin_client(site_dir) as (site_dir, cfg, client):
        req = _find(client, request_id)
        view = review_request(site_dir, cfg, req, *_context(client))
        return approve_view(site_dir, cfg, req, view, reviewer or default_reviewer(), note,
                            override)


def deny(site_dir: Path, request_id: str, reason: str, reviewer: str | None = None) -> RequestView:
    """Deny (or revoke) a request; the researcher reads `reason`."""
    if not reason.strip():
        raise ConsoleError("a denial needs a reason; the researcher will read it")
    reviewer = reviewer or default_reviewer()
    with admin_client(site_dir) as (site_dir, cfg, client):
        req = _find(client, request_id)
        view = review_request(site_dir, cfg, req, *_context(client))
        _record(site_dir, cfg, view, "denied", reviewer, reason, "manual")
        _apply_in_syft(req, "denied", reason)
        view.status = "denied"
        return view


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
