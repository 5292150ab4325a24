"""Checks of a training plan against a site policy, one result per rule.

Pure functions over pydantic models: they decide nothing by themselves; the
console shows them and refuses to approve a failing plan.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from policies.schema import SitePolicy


class CheckResult(BaseModel):
    rule: str
    status: Literal["pass", "fail", "warn"]
    seen: str
    limit: str
    message: str = ""


def check_plan(policy: SitePolicy, *, dataset: str, researcher: str, epsilon: float,
               delta: float, rounds: int) -> list[CheckResult]:
    dp = policy.for_dataset(dataset)
    if dp is None:
        return [CheckResult(rule="dataset", status="fail", seen=dataset,
                            limit=", ".join(sorted(policy.datasets)) or "(none)",
                            message="no policy covers this dataset")]

    def result(rule: str, ok: bool, seen: object, limit: object, msg: str) -> CheckResult:
        return CheckResult(rule=rule, status="pass" if ok else "fail", seen=str(seen),
                           limit=str(limit), message="" if ok else msg)

    return [
        result("access.researcher", dp.access.allows(researcher), researcher,
               ", ".join(dp.access.researchers) or "(nobody)", "researcher not allowed"),
        result("privacy.epsilon_per_plan", epsilon <= dp.privacy.epsilon_per_plan, epsilon,
               dp.privacy.epsilon_per_plan, "ε target above the cap"),
        result("privacy.delta_max", delta <= dp.privacy.delta_max, delta, dp.privacy.delta_max,
               "δ above the cap"),
        result("training.max_rounds", rounds <= dp.training.max_rounds, rounds,
               dp.training.max_rounds, "too many rounds"),
    ]
