"""The approval console's logic: list, review, approve and deny code requests.

Each syft request is read through the admin client and reviewed against the
site: the submitted code must be exactly the medsyft template for its embedded
plan; the plan's researcher must be the account that submitted it; its inputs
must be the plan's dataset and a researcher-owned dict of weights; and the
site's policy file must allow it. Approval is written to the governance DB
(plan hash, policy hash, approver, time) before syft's request is approved;
denial goes to syft with its reason. Both are audited.

No private value is read here: only plans, accounts and dataset sizes.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from policies.checks import CheckResult, check_plan
from policies.schema import PolicyError, load_policy
from researcher.plan import TrainingPlan
from researcher.template import TemplateMismatch, extract_plan
from sites import accounting
from sites.admin import admin_client
from sites.config import SiteConfig
from sites.governance import Governance
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
    checks: list[CheckResult] = field(default_factory=list)
    noise_multiplier: float | None = None
    cohort_n: int | None = None
    policy_hash: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

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


def _review(site_dir: Path, cfg: SiteConfig, req: Any, assets: dict[str, str]) -> RequestView:
    code = req.code
    try:
        plan: TrainingPlan | None = extract_plan(code.raw_code)
        template_error = None
        if plan.function_name != code.service_func_name:
            template_error = "function name does not match the plan"
    except TemplateMismatch as exc:
        plan, template_error = None, str(exc)
    ds_name, inputs_ok = _input_dataset(req, assets)
    view = RequestView(
        id=str(req.id).replace("-", ""), status=_status_name(req.status),
        researcher=str(req.requesting_user_email), function=str(code.service_func_name),
        submitted_at=str(req.request_time), plan=plan, template_error=template_error,
        input_dataset=ds_name, inputs_ok=inputs_ok)
    checks = [CheckResult(rule="code.template", status="fail" if template_error else "pass",
                          seen="submitted code", limit="exact medsyft template",
                          message=template_error or "")]
    checks.append(CheckResult(rule="inputs", status="pass" if inputs_ok else "fail",
                              seen=str(ds_name), limit="plan dataset + weights dict",
                              message="" if inputs_ok else "inputs are not the medsyft pair"))
    if plan is not None:
        checks.append(CheckResult(
            rule="plan.researcher", status="pass" if plan.researcher == view.researcher
            else "fail", seen=plan.researcher, limit=view.researcher,
            message="" if plan.researcher == view.researcher
            else "plan names another researcher than the submitting account"))
        checks.append(CheckResult(
            rule="plan.dataset", status="pass" if plan.dataset == ds_name else "fail",
            seen=plan.dataset, limit=str(ds_name),
            message="" if plan.dataset == ds_name else "plan and input dataset differ"))
        try:
            policy, view.policy_hash = load_policy(cfg.path(site_dir, cfg.policy))
            checks += check_plan(policy, dataset=plan.dataset, researcher=view.researcher,
                                 epsilon=plan.dp.target_epsilon, delta=plan.dp.delta,
                                 rounds=plan.rounds)
        except PolicyError as exc:
            checks.append(CheckResult(rule="policy.file", status="fail", seen="",
                                      limit="valid policy", message=str(exc)))
        record = Governance(site_dir).dataset(plan.dataset)
        if record:
            view.cohort_n = int(record["n"])
            shape = accounting.run_shape(view.cohort_n, plan.batch_size, plan.local_epochs)
            view.noise_multiplier = accounting.derive_noise_multiplier(
                plan.dp.target_epsilon, plan.dp.delta, shape, plan.rounds, plan.dp.accountant)
    view.checks = checks
    return view


def _asset_index(client: Any) -> dict[str, str]:
    out = {}
    for ds in client.datasets.get_all():
        for asset in ds.assets:
            out[str(asset.action_id)] = ds.name
    return out


def list_requests(site_dir: Path) -> list[RequestView]:
    with admin_client(site_dir) as (site_dir, cfg, client):
        assets = _asset_index(client)
        views = [_review(site_dir, cfg, req, assets) for req in client.requests.get_all()]
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
        return _review(site_dir, cfg, _find(client, request_id), _asset_index(client))


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _record_and_apply(site_dir: Path, cfg: SiteConfig, req: Any, view: RequestView,
                      decision: str, reviewer: str, note: str, method: str) -> RequestView:
    """Write the decision to the governance DB (and audit), then apply it in syft."""
    Governance(site_dir).record_decision(
        request_id=view.id,
        plan_hash=view.plan.plan_hash if view.plan else f"unparsed:{view.function}",
        researcher=view.researcher,
        dataset=view.plan.dataset if view.plan else str(view.input_dataset),
        decision=decision, policy_hash=view.policy_hash,
        actor=f"{reviewer} via {cfg.admin_email}", note=note, method=method,
        plan_json=view.plan.canonical_json() if view.plan else "")
    with quiet():
        res = req.approve(disable_warnings=True) if decision == "approved" \
            else req.deny(reason=note)
    if type(res).__name__ == "SyftError":
        raise ConsoleError(f"syft refused the decision ({decision}): {res.message}")
    view.status = decision
    return view


def approve(site_dir: Path, request_id: str, note: str = "", reviewer: str | None = None,
            method: str = "manual") -> RequestView:
    """Approve a request whose every check passes; the governance record comes first."""
    with admin_client(site_dir) as (site_dir, cfg, client):
        req = _find(client, request_id)
        view = _review(site_dir, cfg, req, _asset_index(client))
        if view.plan is None:
            raise ConsoleError(f"request {view.short_id} is not a medsyft plan "
                               f"({view.template_error}); it cannot be approved")
        if view.failing:
            rules = ", ".join(f"{c.rule} ({c.message})" for c in view.failing)
            raise ConsoleError(f"request {view.short_id} fails policy checks: {rules}")
        if view.status == "approved":
            raise ConsoleError(f"request {view.short_id} is already approved")
        return _record_and_apply(site_dir, cfg, req, view, "approved",
                                 reviewer or default_reviewer(), note, method)


def deny(site_dir: Path, request_id: str, reason: str, reviewer: str | None = None) -> RequestView:
    """Deny (or revoke) a request; the researcher reads `reason`."""
    if not reason.strip():
        raise ConsoleError("a denial needs a reason; the researcher will read it")
    with admin_client(site_dir) as (site_dir, cfg, client):
        req = _find(client, request_id)
        view = _review(site_dir, cfg, req, _asset_index(client))
        return _record_and_apply(site_dir, cfg, req, view, "denied",
                                 reviewer or default_reviewer(), reason, "manual")


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
