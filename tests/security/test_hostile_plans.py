"""Hostile plans against a real datasite: researcher code runs only in the sealed tracer.

Every attack here once worked against a live site (issue 14): the model's Python
reached `os.system` through a rebound `self`, replaced the site's DP-SGD, switched
the noise off, wrote the private batch to /tmp, left a process behind, opened a
listening socket, and read the keyring, the databases and the site folder before
the review had even run. The plans are approved behind the review's back (the
syntax-tree review is feedback, not the boundary), so each attack really runs.
"""

# ruff: noqa: E501 - the attack sources are kept as a hostile researcher writes them
from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from policies.contract.plan import ModelSpec
from researcher.federation import initial_weights
from sites.common.syft_client import login, quiet
from sites.governance.store import Governance
from sites.operator import lifecycle
from sites.review import console
from sites.sandbox.confine import UID_BASE
from tests.support.plans import TEST_POLICY, make_plan
from tests.support.sites import one_site, wait_for

pytestmark = pytest.mark.integration

EMAIL = "mallory@lovelace-institute.org"
PASSWORD = "hostile-pw-0451"
SHAPE = (8, 8, 8)

#: Everything a model could try from its constructor; outcomes go into `report`.
ATTEMPTS = '''
import os, socket, sys, json, glob
report = {}
tried = []
def attempt(name, fn):
    tried.append(name)
    try:
        out = fn()
        report[name] = "OK" if out is None or out is True else ("OK:" + str(out)[:40])
    except BaseException as exc:
        pass  # blocked: only what worked is reported (the error text is bounded)
def read(path):
    with open(path, "rb") as f:
        return len(f.read())
def fork():
    pid = os.fork()
    if pid == 0:
        import time
        time.sleep(600)
    return pid
def listen():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0)); s.listen(1)
    KEEP.append(s)
KEEP = []
attempt("gov", lambda: read("SITE/governance.sqlite"))
attempt("cfg", lambda: read("SITE/site.yaml"))
attempt("syftdb", lambda: [read(p) for p in glob.glob("SITE/storage/**/*.sqlite", recursive=True)] or None)
attempt("ls_site", lambda: os.listdir("SITE"))
attempt("code", lambda: open("REPO/sites/runtime/MARK.py", "w").write("# pwned\\n"))
attempt("home", lambda: open(os.path.join(os.environ.get("HOME", "/"), "MARK"), "w").write("x"))
def fill():
    import tempfile
    fd = os.open(os.path.join(tempfile.gettempdir(), "MARK-fill"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 1 << 30)
attempt("fill", fill)
attempt("procs", lambda: sum(p.isdigit() for p in os.listdir("/proc")))
attempt("tmp", lambda: open("/tmp/MARK-write", "w").write("x"))
attempt("system", lambda: os.system("touch /tmp/MARK-system") == 0 or None.fail)
attempt("rebound", lambda: (lambda self: self.serialization.os.system("touch /tmp/MARK-rebound"))(torch) == 0 or None.fail)
attempt("fork", fork)
attempt("exec", lambda: os.execv("/bin/sh", ["sh", "-c", "touch /tmp/MARK-exec"]))
attempt("listen", listen)
attempt("connect", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("uid0", lambda: os.getuid() == 0 or None.fail)
attempt("secrets", lambda: [k for k in os.environ if "KEY" in k or "PASS" in k or "SYFT" in k] or None.fail)
'''

PROBE = '''
class Probe(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        ATTEMPTS
        raise RuntimeError("PROBED" + json.dumps({"n": len(tried), "ok": report}, separators=(",", ":")) + "DONE")

    def forward(self, x):
        return x
'''

HOSTILE = '''
class Hostile(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)
        ATTEMPTS
        # the site's DP-SGD and noise, replaced where this code runs (the tracer)
        dp = sys.modules.get("sites.sandbox.dp_sgd")
        if dp is not None:
            dp.add_noise = lambda summed, std, gen: summed
            dp.train = lambda forward, start, x, y, *a, **k: {n: x.flatten()[:v.numel()].reshape(v.shape) for n, v in start.items()}

    def forward(self, x):
        try:  # a shell and the batch on disk, from the code that sees the batch's shape
            (lambda self: self.serialization.os.system("touch /tmp/MARK-forward"))(torch)
        except BaseException:
            pass
        try:
            open("/tmp/MARK-batch", "w").write(f"{x.flatten()[:8].tolist()}")
        except BaseException:
            pass
        x = F.relu(self.norm(self.conv(x)))
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def _source(template: str, site_dir: Path, port: int, mark: str, repo: Path) -> str:
    body = "\n".join("        " + line for line in ATTEMPTS.strip().splitlines())
    src = template.replace("        ATTEMPTS", body)
    return (src.replace("SITE", str(site_dir)).replace("REPO", str(repo))
            .replace("PORT", str(port)).replace("MARK", mark))


def _force_approve(site_dir: Path, plan) -> None:
    """Approve as a fooled data owner would: in syft, and in the governance record under
    the current policy with every failing rule overridden (hard checks included, which
    the console itself would never let through)."""
    cfg = lifecycle.load_site(site_dir)[1]
    view = next(v for v in console.list_requests(site_dir)
                if v.plan and v.plan.plan_hash == plan.plan_hash)
    client = login(cfg.host, cfg.port, cfg.admin_email, lifecycle.admin_password(cfg))
    req = next(r for r in client.requests.get_all()
               if r.code.service_func_name == plan.function_name)
    with quiet():
        req.approve(disable_warnings=True)
    Governance(site_dir).record_decision(
        request_id=view.id, plan_hash=plan.plan_hash,
        researcher=plan.researcher, dataset=plan.dataset, decision="approved",
        policy_hash=view.policy_hash, reviewer="dpo", actor="test", note="fooled",
        method="manual", plan_json=plan.canonical_json(),
        overridden=[c.rule for c in view.failing])


def _uid(pid: int | str) -> tuple[int, int] | None:
    """(uid, ppid) of a live, non-zombie process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if "zombie" in status:
        return None
    return (int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)),
            int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1)))


def _sandbox_processes(site_dir: Path) -> list[int]:
    """Live processes under a sandbox uid that this site's server started (or that were
    orphaned from a sandbox), except the site's one warm training child (a fresh
    `train_child` the server started for the next round and that has taken nothing).
    Sandbox processes of other sites (another test file's, running beside this one) are
    theirs to check: a process whose first non-sandbox ancestor is another server is not
    counted."""
    server = int((site_dir / "run" / "server.pid").read_text())
    found: list[int] = []
    warm_ones: list[int] = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        info = _uid(pid)
        if info is None or info[0] < UID_BASE:
            continue
        ancestor = info[1]
        while ancestor > 1 and (up := _uid(ancestor)) is not None and up[0] >= UID_BASE:
            ancestor = up[1]
        if ancestor > 1 and ancestor != server:
            continue  # started by another site's server
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        parent = _uid(info[1])
        warm = (b"sites.sandbox.train_child" in cmdline and info[1] > 1
                and parent is not None and parent[0] < UID_BASE)
        (warm_ones if warm else found).append(int(pid))
    return found + (warm_ones if len(warm_ones) > 1 else [])


@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring):
    root = tmp_path_factory.mktemp("hostile")
    with one_site(root, "victim", TEST_POLICY, EMAIL, PASSWORD, n=24, seed=3,
                  shape=SHAPE) as env:
        yield env


def _submitted(site, template: str, class_name: str, name: str, repo_root: Path,
               approve: bool = True):
    """(plan, mark): the attack submitted (and approved behind the review's back), its
    files named after a mark of its own."""
    mark = f"medsyft-{name}-{uuid.uuid4().hex[:8]}"
    cfg = lifecycle.load_site(site["dir"])[1]
    plan = site["fed"].bind(make_plan(
        name=name, rounds=1, class_name=class_name, researcher=EMAIL,
        source=_source(template, site["dir"], cfg.port, mark, repo_root)))
    site["fed"].submit(plan)
    db = Governance(site["dir"]).path
    # the steward's own review traces the model first: once its verdict is in, no sealed
    # tracer of this plan is still running, and whatever is left later is a leftover
    wait_for(lambda: sqlite3.connect(db).execute(
        "SELECT 1 FROM verdicts WHERE plan_hash = ?", (plan.plan_hash,)).fetchone(),
        timeout_s=180)
    if approve:
        _force_approve(site["dir"], plan)
    return plan, mark


def _nothing_left(mark: str, repo_root: Path, site_dir: Path) -> None:
    """No file the attack named, no shell's mark, no process outlived it."""
    assert not list(Path("/tmp").glob(f"{mark}-*"))
    assert not list((repo_root / "sites/runtime").glob(f"{mark}*"))
    assert _sandbox_processes(site_dir) == []


def test_the_tracer_sees_no_site_file_no_secret_no_network_and_can_do_nothing(site, repo_root):
    fed = site["fed"]
    plan, mark = _submitted(site, PROBE, "Probe", "probe", repo_root)
    results, errors = fed.run_round(plan, {"w": np.zeros(1, np.float32)}, retries=0)
    assert not results
    message = errors["victim"]
    found = re.search(r"PROBED(\{.*?\})DONE", message)
    assert found, message
    report = json.loads(found.group(1))
    assert report["n"] == ATTEMPTS.count("\nattempt(")  # every attempt ran to its end
    # nothing worked but the glob over the site's syft databases, which found none
    assert report["ok"] == {"syftdb": "OK"}, report
    assert Governance(site["dir"]).runs(plan.plan_hash) == []  # nothing ran, nothing spent
    _nothing_left(mark, repo_root, site["dir"])


def _benign_start() -> dict[str, np.ndarray]:
    """Start weights from the benign twin (same layers): the hostile constructor never runs
    in the test process."""
    return initial_weights(make_plan())


def test_a_hostile_model_trains_harmlessly_and_releases_only_dp_weights(site, repo_root):
    fed = site["fed"]
    plan, mark = _submitted(site, HOSTILE, "Hostile", "hostile", repo_root)
    start = _benign_start()
    results, errors = fed.run_round(plan, start, retries=0)
    assert not errors, errors
    released = results["victim"]
    assert released.accounting.epsilon > 0
    params = released.params
    assert set(params) == set(start)
    assert any(not np.array_equal(params[k], start[k]) for k in start)  # trained
    private = np.concatenate([site["cohort"].stacked(["mri", "pet"]).ravel(),
                              site["cohort"].labels.ravel()]).astype(np.float32)
    values = np.concatenate([v.ravel() for v in params.values()]).astype(np.float32)
    assert not np.isin(values, private).any()  # not one released value is a private voxel
    _nothing_left(mark, repo_root, site["dir"])  # no shell, no file, no batch on disk, no process


def test_review_traces_the_model_in_the_sandbox_before_anything_else(site, repo_root):
    """The console measures a plan by tracing it: hostile constructor code runs then, sealed."""
    plan, mark = _submitted(site, HOSTILE, "Hostile", "reviewed", repo_root, approve=False)
    view = next(v for v in console.list_requests(site["dir"])
                if v.plan and v.plan.plan_hash == plan.plan_hash)
    graph_line = next(c for c in view.checks if c.rule == "training.graph")
    assert graph_line.status == "pass" and view.graph is not None
    assert view.graph.parameters == sum(int(np.prod(v.shape))
                                        for v in _benign_start().values())
    _nothing_left(mark, repo_root, site["dir"])
    assert any(c.failed for c in view.checks if c.rule.startswith("model_code"))  # feedback


#: A yes/no question about the batch, asked through the release (red team, issue 14):
#: the gradient of `a.bias` is inf exactly when some voxel exceeds the threshold `t.bias`
#: the researcher sends in the start weights. One inf sample once made the whole update
#: NaN, and "release filter rejected the result" answered the question without noise
#: (the cohort's maximum voxel came back to 4 digits in 29 rounds).
NAN_PROBE = '''
class NanProbe(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.t = nn.Linear(1, 1)
        self.a = nn.Linear(1, 1)

    def forward(self, x):
        m = x.amax(dim=(1, 2, 3, 4)).reshape(1, 1)
        d = F.relu(m - self.t.bias)
        v = 1.0 - torch.clamp(d * 1e30, max=1.0)
        return torch.sqrt(v + self.a.bias).reshape(1, 1)
'''


def test_whether_a_round_is_released_answers_no_question_about_the_data(site):
    fed, cohort = site["fed"], site["cohort"]
    plan = make_plan(name="nan_probe", rounds=4, source=NAN_PROBE, class_name="NanProbe",
                     researcher=EMAIL).model_copy(update={"batch_size": 64})  # q = 1
    plan = fed.bind(plan)
    fed.submit(plan)
    _force_approve(site["dir"], plan)
    peak = float(cohort.stacked(["mri", "pet"]).max())
    start = initial_weights(plan)
    outcomes = {}
    for t in (peak + 1.0, peak - 1e-3):  # "no voxel above t", then "some voxel above t"
        w = {k: v.copy() for k, v in start.items()}
        w["t.bias"][:] = t
        w["a.bias"][:] = 0.0
        results, errors = fed.run_round(plan, w, retries=0)
        outcomes[t] = (bool(results), errors)
        assert not errors, errors
        assert all(np.isfinite(v).all() for v in results["victim"].params.values())
    assert [ok for ok, _ in outcomes.values()] == [True, True]


def test_constructor_arguments_are_numbers_lists_or_safe_words():
    for bad in ({"cmd": "$(touch /tmp/x)"}, {"cmd": "a;b"}, {"path": "/etc/passwd"},
                {"many": list(range(100))}):
        with pytest.raises(ValueError):
            ModelSpec(source="x", class_name="A", kwargs=bad)
    ok = ModelSpec(source="x", class_name="A",
                   kwargs={"width": 8, "p": 0.1, "bias": True, "act": "gelu", "k": [3, 3, 3]})
    assert ok.kwargs["act"] == "gelu"
