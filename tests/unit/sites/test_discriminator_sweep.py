"""A GAN plan's kept discriminator is deleted once the plan cannot run another round here
(red team, issue 17: a researcher whose record changed left it on disk for good)."""

from __future__ import annotations

import torch

from sites.governance.registry import Registry
from sites.governance.store import Governance
from sites.runtime import discriminators
from tests.support.jobs import RESEARCHER
from tests.support.plans import make_plan


def _approved(gov: Governance, rounds: int, version: int):
    plan = make_plan(researcher=RESEARCHER, rounds=rounds, version=version)
    gov.record_decision(request_id="r-" + plan.plan_hash[:8], plan_hash=plan.plan_hash,
                        researcher=plan.researcher, dataset=plan.dataset, decision="approved",
                        policy_hash="p", reviewer="dpo", actor="test", note="", method="manual",
                        plan_json=plan.canonical_json())
    return plan


def _keep(site_dir, plan) -> None:
    discriminators.save(site_dir, plan.plan_hash, {"w": torch.ones(3)})


def test_a_discriminator_goes_when_its_plan_cannot_run_again(site_dir):
    gov = Governance(site_dir)
    Registry(gov).add(user_id="0" * 32, verify_key="ab" * 32, email=RESEARCHER, name="Ada",
                      institution="Lovelace Institute", actor="test")
    live, done, unknown = (_approved(gov, 3, 1), _approved(gov, 1, 2),
                           make_plan(researcher=RESEARCHER, version=3))
    for plan in (live, done, unknown):
        _keep(site_dir, plan)
    for plan in (live, done):
        run = gov.begin_run(plan.plan_hash, plan.rounds, 1.0, 0.1, 10, "t")
        gov.finish_run(run.id, released=True, actor="t")
    running = gov.begin_run(live.plan_hash, live.rounds, 1.0, 0.1, 10, "t")
    assert discriminators.sweep(site_dir, gov) == sorted([done.plan_hash, unknown.plan_hash])
    assert discriminators.kept(site_dir) == [live.plan_hash]  # rounds left, and one running
    gov.finish_run(running.id, released=True, actor="t")
    assert discriminators.sweep(site_dir, gov) == []  # approved, a round left: kept
    Registry(gov).update(RESEARCHER, actor="test", new_email="ada@elsewhere.org")
    assert discriminators.sweep(site_dir, gov) == [live.plan_hash]  # no researcher: gone
    assert discriminators.kept(site_dir) == []


def test_a_half_written_discriminator_is_deleted_at_site_start_only(site_dir):
    gov = Governance(site_dir)
    folder = site_dir / discriminators.FOLDER
    folder.mkdir(parents=True)
    stray = folder / ("ab" * 32 + ".tmp")
    stray.write_bytes(b"half")
    discriminators.sweep(site_dir, gov)
    assert stray.exists()  # a round may be writing it now
    discriminators.sweep(site_dir, gov, at_start=True)
    assert not stray.exists()


def test_one_odd_entry_never_stops_the_sweep(site_dir):
    """A folder named like a kept file (unlink fails) is logged and left; the other
    entries are still swept (a raise here once would have stopped every steward turn)."""
    gov = Governance(site_dir)
    folder = site_dir / discriminators.FOLDER
    (folder / ("cd" * 32 + ".npz")).mkdir(parents=True)
    orphan = make_plan(researcher=RESEARCHER, version=9)
    _keep(site_dir, orphan)
    deleted = discriminators.sweep(site_dir, gov, at_start=True)
    assert orphan.plan_hash in deleted and "cd" * 32 not in deleted
