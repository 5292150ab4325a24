"""Training children: one process per run, the next one waiting, nothing inherited."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

from datasets.synthetic import generate_cohort
from sites.sandbox import launcher as training_process
from sites.sandbox.launcher import ChildTimeout, TrainingProcesses
from tests.support.jobs import RESEARCHER, write_job
from tests.support.plans import make_plan

SHAPE = (8, 8, 8)

HANGS = '''
class Hangs(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(in_channels, 1)
        while True:
            pass

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3, 4)))
'''


@pytest.fixture()
def procs(tmp_path):
    p = TrainingProcesses(tmp_path / "runs", tmp_path / "logs" / "training.log", threads=1)
    yield p
    p.close()


def _takers(log_text: str) -> dict[str, int]:
    return {run: int(pid) for pid, run in
            re.findall(r"training child (\d+) takes run (\S+)", log_text)}


def test_each_run_gets_a_fresh_process_and_the_next_one_waits(procs, tmp_path):
    cohort = generate_cohort(16, seed=3, shape=SHAPE)
    plan = make_plan(researcher=RESEARCHER)
    procs.prestart()
    first = procs._spare.pid
    for name in ("run-1", "run-2"):
        write_job(tmp_path / "runs" / name, plan, cohort)
        assert procs.run(tmp_path / "runs" / name, 120) == 0
        status = json.loads((tmp_path / "runs" / name / "status.json").read_text())
        assert status["ok"] is True and status["train_seconds"] > 0
    takers = _takers((tmp_path / "logs" / "training.log").read_text())
    assert takers["run-1"] == first  # the waiting process took the first run
    assert takers["run-2"] != takers["run-1"]  # and never a second one
    for pid in takers.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # each exited after its run
    waiting = procs._spare
    assert waiting.poll() is None and waiting.pid not in takers.values()
    procs.close()  # the server going away closes its stdin: it exits without a job
    assert waiting.wait(timeout=30) == 0


def test_a_waiting_process_inherits_no_secret(procs, monkeypatch):
    monkeypatch.setenv("SERVER_PRIVATE_KEY", "fake-signing-key-0123")
    monkeypatch.setenv("DEFAULT_ROOT_PASSWORD", "fake-admin-password-4567")
    monkeypatch.setenv("MEDSYFT_ANYTHING", "fake-value-89")
    procs.prestart()
    pid = procs._spare.pid
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert names <= set(training_process.KEEP_ENV) | {"HOME", "PYTHONUNBUFFERED"}
    raw = b"\0".join(environ)
    for secret in (b"fake-signing-key", b"fake-admin-password", b"fake-value"):
        assert secret not in raw


def test_a_run_past_its_time_limit_is_killed_and_a_new_process_waits(procs, tmp_path):
    cohort = generate_cohort(8, seed=3, shape=SHAPE)
    plan = make_plan(researcher=RESEARCHER, source=HANGS, class_name="Hangs")
    weights = {"head.weight": np.zeros((1, 2), np.float32), "head.bias": np.zeros(1, np.float32)}
    write_job(tmp_path / "runs" / "run-hang", plan, cohort, weights=weights)
    procs.prestart()
    hung = procs._spare.pid  # the waiting process takes the run (it may be killed before it
    t0 = time.monotonic()    # logs so on a loaded machine: the limit counts from the hand-over)
    with pytest.raises(ChildTimeout):
        procs.run(tmp_path / "runs" / "run-hang", 8)
    assert time.monotonic() - t0 < 60  # killed, not waited for
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)
    assert procs._spare is not None and procs._spare.poll() is None


def test_a_waiting_process_that_died_is_replaced(procs, tmp_path):
    cohort = generate_cohort(16, seed=3, shape=SHAPE)
    procs.prestart()
    procs._spare.kill()
    procs._spare.wait()
    write_job(tmp_path / "runs" / "run-1", make_plan(researcher=RESEARCHER), cohort)
    assert procs.run(tmp_path / "runs" / "run-1", 120) == 0


ENV_PROBE = """
class EnvProbe(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        env = torch.serialization.os.environ
        self.secret = nn.Linear(1, 1 + len(env.get("MEDSYFT_PROBE_SECRET", "")), bias=False)
        self.names = nn.Linear(1, len(env), bias=False)

    def forward(self, x):
        return x
"""


def test_the_inspecting_child_starts_under_the_same_clean_environment(monkeypatch):
    """Both kinds of sandbox child share one launch policy: the model's `__init__` (which
    runs in the inspecting child) sees no secret of the server's and only the kept names."""
    from policies.contract.plan import ModelSpec
    from sites.sandbox.model_inspect import count_parameters

    monkeypatch.setenv("MEDSYFT_PROBE_SECRET", "fake-secret-0123456789")
    spec = ModelSpec(source=ENV_PROBE, class_name="EnvProbe", kwargs={"in_channels": 2})
    n = count_parameters(spec.model_dump_json(), timeout_s=60)
    visible = n - 1  # the `secret` layer has one weight unless the variable is visible
    allowed = set(training_process.KEEP_ENV) | {"HOME", "PYTHONUNBUFFERED"}
    assert 0 < visible <= len(allowed)
