"""Sticky denials: a plan a data owner refused does not come back in under a new name.

A person's denial of a researcher's plan on a dataset holds that researcher
on that dataset: no later request of theirs there is approved automatically
(rule `history.denied`, never `pass` while the hold lasts); each goes to a
reviewer, who sees the earlier denial, its reviewer and its reason. The hold
ends when a person approves a later plan of that researcher on that dataset.
A plan that is the denied one again, by either of two fingerprints, fails
the rule and can be approved only with a recorded override: its model (the
source's syntax tree, so comments, spacing and layout do not count) or its
training settings (every field but name, version, the researcher and the
model source: inputs, target, loss, optimiser, learning rate, batch, epochs,
rounds, DP target, model class and arguments). Any other plan under the hold
is a warning a reviewer may approve. Fingerprints alone would be easy to
dodge (one changed learning rate), which is why the hold covers every plan.
Refusals the steward made itself (hard failures) hold nothing. A denial also
revokes every plan of that researcher on that dataset that was approved
automatically (`automatic_approvals`), so copies submitted side by side
before it stop with it, however their source differs; plans a person
approved stay for a person to revoke.

Reads decisions from the governance database; never writes (the console records
the decisions).
"""

from __future__ import annotations

import ast
import hashlib
import json
from datetime import datetime

from policies.contract.parsing import TooComplex, bounded_parse
from policies.contract.plan import TrainingPlan
from policies.verdict import CheckResult
from sites.governance.store import AUTO_REVIEWER, Governance

HUMAN_DENIAL_METHODS = ("manual",)
HUMAN_APPROVAL_METHODS = ("manual", "override")


def model_fingerprint(plan: TrainingPlan) -> str:
    try:
        text = ast.dump(bounded_parse(plan.model.source), include_attributes=False)
    except (SyntaxError, TooComplex, RecursionError):
        text = plan.model.source
    return hashlib.sha256(text.encode()).hexdigest()


def settings_fingerprint(plan: TrainingPlan) -> str:
    doc = plan.model_dump(mode="json")
    for key in ("name", "version", "researcher"):
        doc.pop(key)
    doc["model"].pop("source")
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def earlier_denials(gov: Governance, plan: TrainingPlan, request_id: str) -> list[dict]:
    """Human denials of this researcher's plans on this dataset, from requests other than
    `request_id`, that no later human approval there has lifted; each with what of `plan`
    it matches (model, training settings, or nothing)."""
    model_fp, settings_fp = model_fingerprint(plan), settings_fingerprint(plan)
    held: list[dict] = []
    for d in gov.decisions():  # in decision order
        if d["researcher"] != plan.researcher or d["dataset"] != plan.dataset:
            continue
        if d["decision"] == "approved" and d["method"] in HUMAN_APPROVAL_METHODS:
            held = []  # a person approved a later plan here: earlier denials are settled
            continue
        if d["decision"] != "denied" or d["method"] not in HUMAN_DENIAL_METHODS or \
                d["request_id"] == request_id:
            continue
        matched: list[str] = []
        try:
            earlier = TrainingPlan.model_validate_json(d["plan_json"])
            matched = [what for what, mine, theirs in (
                ("model", model_fp, model_fingerprint(earlier)),
                ("training settings", settings_fp, settings_fingerprint(earlier)))
                if mine == theirs]
            label = f"{earlier.name} v{earlier.version}"
        except ValueError:
            label = "a plan"
        held.append(d | {"matched": matched, "earlier_plan": label})
    return held


def automatic_approvals(gov: Governance, plan: TrainingPlan, request_id: str) -> list[str]:
    """Requests other than `request_id` of this researcher on this dataset that are approved
    now, automatically: a person's denial withdraws the policy's automatic trust there, so
    they are revoked with it (copies submitted side by side would otherwise train the denied
    model on; a copy need not have the same syntax tree to behave the same). A plan a person
    approved is left to a person."""
    found: list[str] = []
    for d in gov.decisions():
        if d["researcher"] != plan.researcher or d["dataset"] != plan.dataset or \
                d["request_id"] == request_id or d["request_id"] in found or \
                d["decision"] != "approved":
            continue
        approval = gov.approval(d["plan_hash"])
        if approval is not None and approval.request_id == d["request_id"] and \
                set(approval.reviewers) == {AUTO_REVIEWER}:
            found.append(d["request_id"])
    return found


RULE = "history.denied"
LIMIT = "no denial of this researcher here since a reviewer's last approval"


def denial_check(denials: list[dict]) -> CheckResult:
    """`pass` without a hold; `fail` (overridable) when the plan matches a denied one;
    `warn` under a hold otherwise. Only `pass` allows automatic approval."""
    if not denials:
        return CheckResult(rule=RULE, status="pass", seen="no earlier denial", limit=LIMIT)
    last = max(denials, key=lambda d: (len(d["matched"]), d["decided_at"]))  # closest match
    when = datetime.fromtimestamp(last["decided_at"]).strftime("%Y-%m-%d %H:%M")
    return CheckResult(
        rule=RULE, status="fail" if last["matched"] else "warn",
        seen=f"{last['earlier_plan']} (request {last['request_id'][:8]}), denied {when} by "
             f"{last['reviewer']}",
        limit=LIMIT,
        message=(f"same {' and '.join(last['matched'])} as a plan denied earlier: "
                 if last["matched"] else "a plan of this researcher on this dataset was "
                 "denied and no reviewer has approved one since: ")
        + f"“{last['note']}”" + (f" ({len(denials)} denials)" if len(denials) > 1 else ""))
