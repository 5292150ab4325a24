"""The warm training processes: one sealed process per run, the next one started ahead."""

from __future__ import annotations

import os
import re
import time

import pytest

from datasets.synthetic import generate_cohort
from sites.sandbox.job import RunStatus
from sites.sandbox.launcher import ChildTimeout, SandboxSettings, TrainingProcesses
from tests.support.jobs import RESEARCHER, make_job, run_job
from tests.support.plans import make_plan

SHAPE = (8, 8, 8)


@pytest.fixture()
def procs(tmp_path):
    p = TrainingProcesses(tmp_path / "runs", tmp_path / "logs" / "training.log",
                          SandboxSettings(threads=1, file_mib=64))
    yield p
    p.close()


def _run(procs, job, cohort, timeout_s: float = 120) -> RunStatus:
    return run_job(None, job, cohort, procs=procs, timeout_s=timeout_s)[0]


def test_each_run_gets_a_fresh_process_and_the_next_one_waits(procs, tmp_path):
    cohort = generate_cohort(16, seed=3, shape=SHAPE)
    job = make_job(make_plan(researcher=RESEARCHER), cohort)
    procs.prestart()
    first = procs._spare.proc.pid
    for _ in range(2):
        status = _run(procs, job, cohort)
        assert status.ok and status.train_seconds > 0
    log = (tmp_path / "logs" / "training.log").read_text()
    takers = [int(pid) for pid in re.findall(r"training child (\d+) takes a run", log)]
    assert takers[0] == first and takers[1] != first  # never a second run in one process
    for pid in takers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # each exited after its run
    waiting = procs._spare
    assert waiting.proc.poll() is None and waiting.proc.pid not in takers
    procs.close()  # the server going away: the waiting process exits without a job
    assert waiting.proc.returncode == 0


def test_a_run_past_its_time_limit_is_killed_and_a_new_process_waits(procs):
    cohort = generate_cohort(64, seed=3, shape=SHAPE)
    job = make_job(make_plan(researcher=RESEARCHER), cohort, steps=100_000)
    procs.prestart()
    slow = procs._spare.proc.pid
    t0 = time.monotonic()
    with pytest.raises(ChildTimeout):
        _run(procs, job, cohort, timeout_s=3)
    assert time.monotonic() - t0 < 60  # killed, not waited for
    with pytest.raises(ProcessLookupError):
        os.kill(slow, 0)
    assert procs._spare is not None and procs._spare.proc.poll() is None


def test_a_waiting_process_that_died_is_replaced(procs):
    cohort = generate_cohort(16, seed=3, shape=SHAPE)
    procs.prestart()
    procs._spare.proc.kill()
    procs._spare.proc.wait()
    assert _run(procs, make_job(make_plan(researcher=RESEARCHER), cohort), cohort).ok


def _nice(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            out.add(int(f.read().rpartition(b")")[2].split()[16]))
    return out


def test_a_waiting_process_yields_the_cores_and_its_run_gets_them_back(procs, tmp_path):
    cohort = generate_cohort(16, seed=4, shape=SHAPE)
    job = make_job(make_plan(researcher=RESEARCHER), cohort)
    procs.prestart()
    waiting = procs._spare.proc.pid
    time.sleep(1.0)  # torch's threads start during the warm-up: they must yield too
    assert _nice(waiting) == {19}
    taken = procs._take()
    try:
        assert taken.proc.pid == waiting and _nice(waiting) == {0}
        assert _nice(procs._spare.proc.pid) == {19}  # the next one, started at once
    finally:
        procs._discard(taken)
    assert _run(procs, job, cohort).ok
