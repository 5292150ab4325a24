"""`medsyft demo` end to end (two rounds, a quarter of the subjects): the report holds
what it promises."""

from __future__ import annotations

import json
import re

import keyring
import pytest
from rich.console import Console

from sites.common import keychain
from sites.operator import lifecycle
from tests.support.reference import pld_epsilon

pytestmark = pytest.mark.integration

SITE_FIELDS = {"n_k", "sample_rate", "noise_multiplier", "steps", "delta", "epsilon",
               "target_epsilon", "adjacency", "accountant", "guarantee", "ledger_epsilon"}


def test_demo_trains_across_three_hospitals_and_stops_its_servers(tmp_path, memory_keyring):
    from researcher.demo import run_demo

    previous = keyring.get_keyring()
    report_path = tmp_path / "demo-report.json"
    try:
        run_demo(tmp_path / "work", report_path, rounds=2, cohort_scale=0.25,
                 console=Console(file=open(tmp_path / "out.txt", "w"), width=200))
    finally:
        keychain.use_backend(previous)
        keychain.allow_plaintext_keyring(False)
    report = json.loads(report_path.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for rnd in report["rounds"]:
        assert rnd["auc"] is not None and 0.0 <= rnd["auc"] <= 1.0
        assert {s["site"] for s in rnd["sites"]} == {"st-agnes", "riverside", "northgate"}
        for s in rnd["sites"]:
            assert s["ok"] and SITE_FIELDS <= set(s)
            assert s["epsilon"] <= s["target_epsilon"]
            # the relation is stated, and ε is at least dp-accounting's for it, the DP
            # count of a private N included
            words = {"replace_one": "replace-one", "add_remove": "add/remove"}
            assert words[s["adjacency"]] in s["guarantee"]
            count = [(s["count_noise"], 1.0, 1)] if s["adjacency"] == "add_remove" else []
            assert s["epsilon"] >= pld_epsilon(
                count + [(s["noise_multiplier"], s["sample_rate"], s["steps"])], s["delta"],
                s["adjacency"]) - 1e-9
    sizes = {s["site"]: s["n_k"] for s in report["rounds"][0]["sites"]}
    # non-IID: different cohorts (riverside releases a DP-noised, rounded count, which may
    # meet another site's exact one by chance: compare the exact ones)
    assert sizes["st-agnes"] != sizes["northgate"]
    from sites.governance.store import Governance

    for site_yaml in (tmp_path / "work" / "sites").glob("*/site.yaml"):
        assert not lifecycle.status(site_yaml.parent).running
        # the demo's plaintext keyring file is on record: site log and audit log
        events = [e["event"] for e in Governance(site_yaml.parent).audit_entries()]
        assert "keyring.plaintext_allowed" in events
        site_log = (site_yaml.parent / "logs" / "site.log").read_text()
        assert "FolderKeyring keeps this site's secrets in CLEAR" in site_log
    out = (tmp_path / "out.txt").read_text()
    assert "keyring file" in out
    # each hospital's web console is named, and the reviewers approved through it over HTTP
    assert out.count("approval console at http://127.0.0.1:") == 3
    assert re.search(r"approved at http://127\.0\.0\.1:\d+ → ", out)
    # st-agnes: four-eyes, two different reviewer accounts
    assert "your approval is recorded: 1 of 2" in out and "approved: 2 of 2 approvals" in out
    assert "approved automatically" in out  # northgate: approval: auto
    assert "round 2" in out and "global AUC" in out
    # each data owner audited its releases; the demo's plan stays inside its claim
    assert out.count("empirical ε ≥") == 3 and "exceeds" not in out
    relations = {s["site"]: s["adjacency"] for s in report["rounds"][0]["sites"]}
    assert relations == {"st-agnes": "replace_one", "northgate": "replace_one",
                         "riverside": "add_remove"}
