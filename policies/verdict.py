"""The verdict report: one line per policy rule for a training plan.

`review_plan` is pure: the site gathers the facts it needs (the account's
institution, today, the cohort size, the derived noise multiplier, the
parameter count measured on the meta device, ε already committed to other
plans) and this module compares them with the policy. It decides nothing by
itself: the console refuses to approve a failing plan without a recorded
override, `approval: auto` approves only a verdict without failures, and the
runtime re-runs it when the policy changed since approval.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict

from policies.code_review import review_model_code
from policies.contract.plan import TrainingPlan
from policies.schema import SitePolicy


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule: str
    status: Literal["pass", "fail", "warn"]
    seen: str
    limit: str
    message: str = ""
    overridable: bool = True

    @property
    def failed(self) -> bool:
        return self.status == "fail"


class Facts(BaseModel):
    """What the site knows about a request beyond the plan itself."""

    researcher: str
    institution: str | None = None
    today: date
    cohort_n: int | None = None  # the accounting's n: exact N, or the DP count when private
    noise_multiplier: float | None = None
    noise_error: str | None = None
    adjacency: str | None = None
    accountant: str | None = None
    n_parameters: int | None = None
    parameters_error: str | None = None
    graph_summary: str | None = None
    activation_mib: float | None = None
    epsilon_committed: float = 0.0
    has_mask: bool | None = None  # whether the dataset was published with a voxel mask


def _line(rule: str, ok: bool, seen: object, limit: object, message: str,
          warn: bool = False) -> CheckResult:
    status = "pass" if ok else ("warn" if warn else "fail")
    return CheckResult(rule=rule, status=status, seen=str(seen), limit=str(limit),
                       message="" if ok else message)


def review_plan(policy: SitePolicy, plan: TrainingPlan, facts: Facts) -> list[CheckResult]:
    dp = policy.for_dataset(plan.dataset)
    if dp is None:
        return [_line("dataset", False, plan.dataset, ", ".join(sorted(policy.datasets)),
                      "no policy covers this dataset")]
    a, p, t = dp.access, dp.privacy, dp.training
    lines = [
        _line("access.researcher", a.email_allowed(facts.researcher), facts.researcher,
              ", ".join(a.researchers + [f"@{d}" for d in a.domains]) or "(nobody)",
              "researcher not allowed on this dataset"),
        _line("access.institution", a.institution_allowed(facts.institution),
              facts.institution or "(none)", ", ".join(a.institutions) or "(any)",
              "institution not allowed"),
        _line("access.expires", a.expires is None or facts.today <= a.expires,
              facts.today.isoformat(), a.expires.isoformat() if a.expires else "(never)",
              "access has expired"),
        _line("privacy.delta", plan.dp.delta <= p.delta_max, plan.dp.delta, p.delta_max,
              "δ above the cap"),
        _line("privacy.epsilon_per_plan", plan.dp.target_epsilon <= p.epsilon_per_plan,
              plan.dp.target_epsilon, p.epsilon_per_plan, "ε target above the cap"),
        _line("privacy.epsilon_total",
              facts.epsilon_committed + plan.dp.target_epsilon <= p.epsilon_total,
              f"{facts.epsilon_committed:g} committed + {plan.dp.target_epsilon:g}",
              p.epsilon_total, "this plan would take the researcher over their total ε"),
        _line("privacy.max_grad_norm", plan.dp.max_grad_norm <= p.max_grad_norm,
              plan.dp.max_grad_norm, p.max_grad_norm, "clipping norm above the cap"),
    ]
    adjacency = facts.adjacency or dp.release.adjacency
    lines.append(_line("privacy.relation", True,
                       f"{adjacency}, {facts.accountant or dp.ledger_accountant}",
                       f"sample_count {dp.release.sample_count}", ""))
    if facts.cohort_n is not None:
        # a private N: q = 1 would make the update's scale and the batch a count of N
        q_one = plan.batch_size >= facts.cohort_n
        lines.append(_line(
            "privacy.sample_rate", adjacency == "replace_one" or not q_one,
            f"batch {plan.batch_size}", f"at most {max(1, facts.cohort_n - 1)}",
            f"the batch would sample every subject (q = 1) of a cohort whose size is "
            f"private; the largest batch allowed here is {max(1, facts.cohort_n - 1)}"
        ).model_copy(update={"overridable": False}))
    if facts.noise_multiplier is None:
        lines.append(_line("privacy.noise_multiplier", False,
                           facts.noise_error or "unknown (dataset not published?)",
                           p.min_noise_multiplier, "cannot derive σ"))
    else:
        lines.append(_line("privacy.noise_multiplier",
                           facts.noise_multiplier >= p.min_noise_multiplier,
                           f"{facts.noise_multiplier:.3f}", p.min_noise_multiplier,
                           "the ε target gives too little noise for this site"))
    lines.append(_line("training.task", plan.task_word in t.tasks,
                       f"{plan.task_word} ({plan.target}, {plan.loss}"
                       + (f" + {plan.adversarial.weight:g}·adversarial" if plan.adversarial
                          else "") + ")", ", ".join(t.tasks),
                       f"this dataset's policy allows {', '.join(t.tasks)}"))
    if plan.target == "mask" and facts.has_mask is False:
        lines.append(_line("dataset.target", False, "no mask", "a voxel mask published with "
                           "the dataset", "the dataset has no voxel mask to segment"
                           ).model_copy(update={"overridable": False}))
    lines += [
        _line("training.rounds", plan.rounds <= t.max_rounds, plan.rounds, t.max_rounds,
              f"rounds limited to {t.max_rounds}"),
        _line("training.local_epochs", plan.local_epochs <= t.max_local_epochs,
              plan.local_epochs, t.max_local_epochs, f"local epochs limited to "
              f"{t.max_local_epochs}"),
        _line("training.batch_size", t.batch_size.min <= plan.batch_size <= t.batch_size.max,
              plan.batch_size, f"{t.batch_size.min}..{t.batch_size.max}",
              "batch size outside the range"),
        _line("training.wall_time", True, "enforced per round", f"{t.max_wall_time_s} s", ""),
    ]
    if facts.n_parameters is None:
        lines.append(CheckResult(
            rule="training.graph", status="fail", seen=facts.parameters_error or "unknown",
            limit="a static graph of allowed operators", overridable=False,
            message="the model could not be traced into a training graph the site accepts"))
    else:
        lines.append(_line("training.graph", True, facts.graph_summary or "validated",
                           "a static graph of allowed operators", ""))
        lines.append(_line("training.parameters", facts.n_parameters <= t.max_parameters,
                           f"{facts.n_parameters:,}", f"{t.max_parameters:,}",
                           "model too large"))
        if facts.activation_mib is not None:
            lines.append(_line("training.activation_memory",
                               facts.activation_mib <= t.max_activation_mib,
                               f"{facts.activation_mib:.1f} MiB per sample",
                               f"{t.max_activation_mib} MiB",
                               "the model needs more memory per sample than the site allows"))
    findings = [("", f) for f in review_model_code(
        plan.model.source, plan.model.class_name, dp.model_code.layers,
        dp.model_code.functions, dp.model_code.monai_nets)]
    if plan.adversarial is not None:  # the discriminator is researcher code as well
        d = plan.adversarial.discriminator
        findings += [("discriminator ", f) for f in review_model_code(
            d.source, d.class_name, dp.model_code.layers, dp.model_code.functions,
            dp.model_code.monai_nets)]
    if findings:
        for where, f in findings:
            lines.append(CheckResult(rule=f.rule, status="fail", seen=f"{where}line {f.line}",
                                     limit="policy model_code", message=f.message,
                                     overridable=False))
    else:
        lines.append(_line("model_code", True, "reviewed", "policy model_code", ""))
    return lines


def first_failure(lines: list[CheckResult]) -> CheckResult | None:
    return next((c for c in lines if c.failed), None)
