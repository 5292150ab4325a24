"""Capability tests of the sandbox (issue 14): a sealed child tries each thing researcher code
must never do, and is refused, as a root site and as an unprivileged one.

Every test starts tests/support/sandbox_probe.py through `sites.sandbox.launcher.spawn`, the
way the site starts its children, hands it a list of attempts over the channel and reads
back what each achieved (an errno name, or "ok"). The probe seals itself first, as every
sandbox child does. Nothing about the temporary "site folder" (site.yaml, a keyring file,
SQLite databases) is passed to the child: it is only told the paths to try.

The `[unprivileged]` runs (`pytest -k unprivileged`) start the parent side as uid 65534: in a
private mount namespace the Python installation (under /root, mode 0700) is bind-mounted
where uid 65534 can reach it, then `setpriv` drops to 65534 with no capability, and that
process spawns the probe through the same launcher (a user namespace of its own, mapping
65534 onto itself). There the child has the site's own uid: only the sandbox stands between
it and the site's files, with no help from file permissions.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sites.sandbox import channel, confine, launcher
from sites.sandbox.confine import SandboxUnavailable
from sites.sandbox.launcher import SandboxSettings
from tests.support import sandbox_probe

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
PROBE = "tests.support.sandbox_probe"
BLOCKED = {"EPERM", "EACCES"}
MARKER = b"MEDSYFT-SITE-SECRET-7f3a"
SETTINGS = {"memory_mib": 2048, "cpu_seconds": 30}

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the sandbox and its probe's raw syscalls are Linux x86_64")


# ----------------------------------------------------------------------------- set-up

def _hidden_ancestor(path: Path) -> Path | None:
    """The topmost folder above `path` that others may not traverse (e.g. /root)."""
    for above in reversed(path.resolve().parents):
        if not above.stat().st_mode & 0o001:
            return above
    return None


@pytest.fixture(scope="module")
def staged():
    """What the unprivileged runs need: the Python installation reachable by uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("the tests run unprivileged already: the in-process runs cover it")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is missing: cannot start an unprivileged parent")
    for needed in (REPO, Path(sys.prefix)):
        if _hidden_ancestor(needed) is not None:
            pytest.skip(f"{needed} is not reachable by uid {NOBODY}")
    base = Path(sys.base_prefix).resolve()
    hidden = _hidden_ancestor(base)
    stage = Path(tempfile.mkdtemp(prefix="medsyft-stage-"))
    stage.chmod(0o755)
    mounts = ""
    if hidden is not None:
        target = stage / base.relative_to(hidden)
        target.mkdir(parents=True)
        for p in [target, *target.parents]:
            if p == stage.parent:
                break
            p.chmod(0o755)
        mounts = (f"mount --bind {shlex.quote(str(base))} {shlex.quote(str(target))} && "
                  f"mount --rbind {shlex.quote(str(stage))} {shlex.quote(str(hidden))} && ")
    script = (f"set -e; {mounts}cd / && exec setpriv --reuid={NOBODY} --regid={NOBODY} "
              "--clear-groups --inh-caps=-all --bounding-set=-all env -i PATH=/usr/bin:/bin "
              f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -P -s "
              f"-m {PROBE} --parent")
    yield ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    """The probe lives in tests/: the child finds it through PYTHONPATH (which the launcher
    passes on, and of which the child may list the repository root, nothing more)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture(scope="module")
def site():
    """A site folder as a hospital has one, owned by uid 65534 (the unprivileged site's own
    uid, so that file permissions never help), in a folder anyone may traverse."""
    root = Path(tempfile.mkdtemp(prefix="medsyft-sandbox-site-"))
    root.chmod(0o755)
    folder = root / "st-agnes"
    folder.mkdir(mode=0o755)
    (folder / "site.yaml").write_bytes(b"name: st-agnes\nsecret: " + MARKER + b"\n")
    (folder / "site.yaml").chmod(0o644)
    (folder / "keyring_pass.cfg").write_bytes(b"[medsyft]\npassword = " + MARKER + b"\n")
    (folder / "keyring_pass.cfg").chmod(0o600)
    for name, mode in (("governance.sqlite", 0o600), ("syft.db", 0o644)):
        with sqlite3.connect(folder / name) as db:
            db.execute("create table t (v text)")
            db.execute("insert into t values (?)", (MARKER.decode(),))
        (folder / name).chmod(mode)
    code = root / "code" / "sites" / "runtime"
    code.mkdir(parents=True)
    shutil.copy(REPO / "sites" / "runtime" / "rounds.py", code / "rounds.py")
    (code / "rounds.py").chmod(0o644)
    writable = root / "writable"
    writable.mkdir(mode=0o755)
    if os.geteuid() == 0:
        for p in [root, *root.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Run:
    returncode: int
    sealed: dict | None
    outcomes: dict[str, str]
    stderr: str
    members_before: list[int] = field(default_factory=list)
    members_after: list[int] = field(default_factory=list)
    seconds_to_seal: float | None = None
    timed_out: bool = False


def _parse(result: dict) -> Run:
    lines = [json.loads(ln) for ln in result["stdout"].splitlines() if ln.startswith("{")]
    sealed = next((ln for ln in lines if "sealed" in ln), None)
    outcomes: dict[str, str] = {}
    for ln in lines:
        if "attempt" in ln:
            key = ln["attempt"]
            while key in outcomes:
                key += "'"
            outcomes[key] = ln["outcome"]
    return Run(result["returncode"], sealed["sealed"] if sealed else None, outcomes,
               result["stderr"], result["members_before"], result["members_after"],
               sealed["at"] - result["started"] if sealed else None, result["timed_out"])


def probe(mode: str, staged_cmd, attempts: list[tuple[str, dict]], settings: dict | None = None,
          timeout: float = 60, fds: list[int] | None = None, **prepare) -> Run:
    """Run `attempts` in one sealed probe child, its parent being this process (root) or
    an unprivileged one; outcomes by attempt name (repeated names get a ')."""
    message = {"attempts": [[name, args] for name, args in attempts], **prepare}
    settings = SETTINGS | (settings or {})
    if mode == "root":
        return _parse(sandbox_probe.run_probe(settings, message, timeout, fds))
    assert not fds, "descriptors do not cross to the unprivileged parent"
    request = {"settings": settings, "message": message, "timeout": timeout}
    done = subprocess.run(staged_cmd, input=json.dumps(request), capture_output=True,
                          text=True, timeout=timeout + 60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["uid"] == NOBODY
    return _parse(result)


@pytest.fixture(params=["root", "unprivileged"])
def mode(request):
    """`root`: the test process (root here) is the parent; `unprivileged`: uid 65534 is."""
    if request.param == "unprivileged":
        return "unprivileged", request.getfixturevalue("staged")
    return "root", None  # (where the tests do not run as root: this user)


def _blocked(run: Run, *names: str) -> None:
    assert run.returncode == 0, run.stderr
    for name in names:
        assert run.outcomes.get(name) in BLOCKED, (name, run.outcomes.get(name), run.stderr)


# ----------------------------------------------------------------------------- the tests

def test_the_machine_has_every_feature_the_sandbox_needs():
    assert confine.missing_features() == []


def test_a_sealed_child_has_no_privilege_left(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("status", {}), ("import_module", {"name": "encodings.idna"})])
    assert run.returncode == 0, run.stderr
    assert run.outcomes["import_module"] == "ok"  # the standard library stays importable
    got = run.sealed
    assert got["uid"] != 0 and got["no_new_privs"] and got["seccomp"]
    assert got["capabilities"] == "0000000000000000"
    assert got["landlock_abi"] >= confine.LANDLOCK_FULL_ABI
    assert {"net", "mnt", "ipc", "uts"} <= set(got["namespaces"])
    assert got["missing"] == [] and not got["relaxed"]
    status = json.loads(run.outcomes["status"])
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert status[caps] == "0000000000000000", caps
    uid = status["Uid"].split()[0]
    assert set(status["Uid"].split()) == {uid} and uid != "0"
    assert status["task_uids"] == [uid]  # every thread
    assert status["Groups"] == ""
    if kind == "root" and os.geteuid() == 0:
        assert got["root_dropped"] and int(uid) >= confine.UID_BASE
    else:  # the site's own uid, in a user namespace of its own
        assert "user" in got["namespaces"] and not got["root_dropped"]
        assert int(uid) == (NOBODY if kind == "unprivileged" else os.geteuid())


SITE_FILES = ("site.yaml", "keyring_pass.cfg", "governance.sqlite", "syft.db")


def test_no_site_file_can_be_read(mode, site):
    """site.yaml and syft.db are 0644, the keyring file and governance.sqlite 0600; for the
    unprivileged site they are the child's own uid's: only the sandbox keeps them closed."""
    kind, cmd = mode
    folder = site / "st-agnes"
    run = probe(kind, cmd, [("read_file", {"path": str(folder / n)}) for n in SITE_FILES]
                + [("list_dir", {"path": str(folder)}), ("list_dir", {"path": str(site)})])
    _blocked(run, *["read_file" + "'" * i for i in range(len(SITE_FILES))], "list_dir",
             "list_dir'")
    assert MARKER.decode() not in json.dumps(run.outcomes)


def test_the_sites_code_outside_the_sandbox_packages_cannot_be_read(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [
        ("read_file", {"path": str(REPO / "sites" / "runtime" / "rounds.py")}),
        ("read_file", {"path": str(REPO / "README.md")}),
        ("import_module", {"name": "sites.runtime.rounds"}),
        ("read_file", {"path": str(REPO / "sites" / "sandbox" / "confine.py")}),  # control
    ])
    _blocked(run, "read_file", "read_file'")
    assert run.outcomes["import_module"] in BLOCKED | {"ModuleNotFoundError"}
    assert run.outcomes["read_file''"].startswith("ok")  # what a child may read, it can


def test_nothing_outside_a_writable_folder_can_be_written(mode, site):
    kind, cmd = mode
    tmp_target = Path(tempfile.gettempdir()) / f"medsyft-probe-{os.getpid()}-{kind}"
    code = site / "code" / "sites" / "runtime" / "rounds.py"
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    run = probe(kind, cmd, [
        ("create_file", {"path": str(tmp_target)}),
        ("mkdir", {"path": str(tmp_target) + ".d"}),
        ("create_file", {"path": str(site / "st-agnes" / "new.txt")}),
        ("write_file", {"path": str(site / "st-agnes" / "site.yaml")}),
        ("write_file", {"path": str(site / "st-agnes" / "governance.sqlite")}),
        ("write_file", {"path": str(code)}),
        ("create_file", {"path": str(site / "writable" / "new.txt")}),  # not writable here
        ("write_file", {"path": "/dev/null"}),  # control: a sink stays usable
    ])
    try:
        _blocked(run, "create_file", "mkdir", "create_file'", "write_file", "write_file'",
                 "write_file''", "create_file''")
        assert run.outcomes["write_file'''"] == "ok"
        assert not tmp_target.exists() and not Path(str(tmp_target) + ".d").exists()
        assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    finally:
        tmp_target.unlink(missing_ok=True)
        shutil.rmtree(str(tmp_target) + ".d", ignore_errors=True)


def test_a_writable_folder_is_writable_and_nothing_else(mode, site):
    kind, cmd = mode
    writable = site / f"writable-{kind}"  # (a root site's child gets it as its own uid's)
    writable.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(writable, NOBODY, NOBODY)
    run = probe(kind, cmd, [
        ("create_file", {"path": str(writable / f"out-{kind}.bin")}),
        ("write_file", {"path": str(writable / f"out-{kind}.bin")}),
        ("create_file", {"path": str(site / "st-agnes" / "new.txt")}),
    ], settings={"writable": str(writable), "file_mib": 1})
    try:
        assert run.outcomes["create_file"] == "ok" and run.outcomes["write_file"] == "ok"
        assert run.outcomes["create_file'"] in BLOCKED
        assert run.sealed["rlimits"]["RLIMIT_FSIZE"] == 1 << 20
    finally:
        (writable / f"out-{kind}.bin").unlink(missing_ok=True)


def test_no_socket_can_be_created(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("socket_of", {"kind": k}) for k in
                            ("tcp", "udp", "tcp6", "unix", "netlink")] + [("socketpair", {})])
    _blocked(run, "socket_of", "socket_of'", "socket_of''", "socket_of'''", "socket_of''''",
             "socketpair")


@pytest.fixture()
def listening():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    yield server
    server.close()


def test_a_listening_loopback_port_cannot_be_reached(mode, listening):
    kind, cmd = mode
    port = listening.getsockname()[1]
    run = probe(kind, cmd, [("connect_tcp", {"port": port})])
    _blocked(run, "connect_tcp")
    with pytest.raises(TimeoutError):
        listening.accept()


def test_a_socket_held_from_before_seal_cannot_connect_or_listen(mode, listening):
    """Defence in depth: were a socket there (seccomp stops their creation), three layers
    stand in the way of each connect and bind: seccomp (EPERM), Landlock's TCP rules
    (EACCES) and the child's own network namespace with a down `lo` (ENETUNREACH,
    EADDRNOTAVAIL)."""
    kind, cmd = mode
    port = listening.getsockname()[1]
    run = probe(kind, cmd, [("connect_presealed", {"port": port}), ("bind_presealed", {})],
                presocket=True)
    assert run.returncode == 0, run.stderr
    for name in ("connect_presealed", "bind_presealed"):
        assert run.outcomes[name] in BLOCKED | {"ENETUNREACH", "EADDRNOTAVAIL"}, name
    with pytest.raises(TimeoutError):
        listening.accept()


def test_no_process_can_be_started_and_none_outlives_the_run(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("fork", {}), ("fork_and_sleep", {}), ("subprocess_run", {}),
                            ("posix_spawn", {}), ("execv", {}), ("thread", {})])
    _blocked(run, "fork", "fork_and_sleep", "subprocess_run", "posix_spawn", "execv")
    assert run.outcomes["thread"] == "ok"  # threads still work (torch needs them)
    assert run.members_before == [] and run.members_after == []


def test_other_processes_cannot_be_traced_signalled_or_read(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("ptrace_parent", {}), ("ptrace_traceme", {}),
                            ("signal_parent", {}), ("read_parent_environ", {}),
                            ("read_parent_cmdline", {}), ("list_processes", {}),
                            ("open_parent_mem", {}), ("read_own_status", {})])
    # the command lines of other processes named the site's folders (red team, issue 14)
    _blocked(run, "ptrace_parent", "ptrace_traceme", "signal_parent", "read_parent_environ",
             "read_parent_cmdline", "list_processes", "open_parent_mem")
    assert run.outcomes["read_own_status"].startswith("ok")  # its own /proc stays readable


def test_no_way_back_to_privilege(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("setuid_root", {}), ("unshare_user", {}), ("mount_tmpfs", {})]
                + [("syscall", {"name": n}) for n in ("bpf", "userfaultfd", "io_uring_setup",
                                                      "keyctl", "perf_event_open", "setns")])
    _blocked(run, "unshare_user", "mount_tmpfs", *["syscall" + "'" * i for i in range(6)])
    # EPERM; EINVAL in a user namespace, where uid 0 does not even exist
    assert run.outcomes["setuid_root"] in {"EPERM", "EINVAL"}


def test_a_thread_started_before_seal_is_confined_too(mode, site):
    """Landlock binds the threads started after enter(), seccomp (TSYNC) every thread."""
    kind, cmd = mode
    run = probe(kind, cmd, [("socket_of", {"kind": "tcp"}),
                            ("read_file", {"path": str(site / "st-agnes" / "site.yaml")}),
                            ("fork", {}), ("setuid_root", {})], thread=True)
    _blocked(run, "socket_of", "read_file", "fork")
    assert run.outcomes["setuid_root"] in {"EPERM", "EINVAL"}


def test_memory_beyond_the_limit_cannot_be_had(mode):
    kind, cmd = mode
    run = probe(kind, cmd, [("allocate", {"mib": 32}), ("allocate", {"mib": 600})],
                settings={"memory_mib": 512})
    assert run.returncode == 0, run.stderr
    assert run.outcomes["allocate"].startswith("ok")
    assert run.outcomes["allocate'"] == "MemoryError"
    assert run.sealed["rlimits"]["RLIMIT_AS"] == 512 << 20


def test_memory_limit_holds_with_torch_loaded():
    run = probe("root", None, [("allocate_torch", {"mib": 64}),
                               ("allocate_torch", {"mib": 3072})],
                settings={"memory_mib": 2048}, torch=True)
    assert run.returncode == 0, run.stderr
    assert run.outcomes["allocate_torch"].startswith("ok")
    assert run.outcomes["allocate_torch'"] == "MemoryError"


def test_cpu_beyond_the_limit_kills_the_child(mode):
    kind, cmd = mode
    t0 = time.monotonic()
    run = probe(kind, cmd, [("burn_cpu", {})], settings={"cpu_seconds": 1}, timeout=20)
    assert run.returncode in (-signal.SIGXCPU, -signal.SIGKILL), run.stderr
    assert "burn_cpu" not in run.outcomes and not run.timed_out
    assert time.monotonic() - t0 < 30
    assert run.members_after == []


def test_dp_sgds_secure_randomness_works_after_the_seal():
    """The training child draws DP-SGD's batches and noise from os.urandom after it is
    sealed: the seccomp filter and Landlock must leave getrandom (or /dev/urandom) open,
    or every round would fail (control for the CSPRNG fix of issue 17)."""
    run = probe("root", None, [("secure_random", {})], torch=True)  # as the child
    assert run.outcomes["secure_random"] == "ok", (run.outcomes, run.stderr[-2000:])


def test_a_handed_descriptor_is_usable():
    """The channel's descriptors are the one way data reaches a child (control)."""
    r, w = os.pipe()
    try:
        run = probe("root", None, [("write_fd", {"fd": None})], fds=[w])
        os.close(w)
        w = -1
        assert run.outcomes["write_fd"] == "ok", run.stderr
        assert os.read(r, 100) == b"through the handed descriptor\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_kill_tree_leaves_nothing_of_the_session_alive():
    mine, theirs = socket.socketpair()
    proc = launcher.spawn(PROBE, SandboxSettings(**SETTINGS), stdin=theirs.fileno(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        channel.send(mine, json.dumps({"attempts": [["sleep", {"seconds": 60}]]}).encode(), [])
        assert not launcher._wait_exit(proc, 1.0)  # it sleeps, sealed
        assert launcher._members(proc.pid) == [proc.pid]
        launcher.kill_tree(proc)
        assert proc.returncode == -signal.SIGKILL
        assert launcher._members(proc.pid) == []
    finally:
        mine.close()
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def test_a_child_dies_with_its_parent(mode):
    """SIGKILL the parent (the site's server process, here a probe parent): the kernel kills
    the child too (the parent-death signal, armed again after the uid change)."""
    kind, cmd = mode
    argv = cmd if kind == "unprivileged" else [sys.executable, "-P", "-s", "-m", PROBE,
                                                "--parent"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    request = {"settings": SETTINGS, "report_child": True, "timeout": 120,
               "message": {"attempts": [["sleep", {"seconds": 120}]]}}
    parent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                              stderr=subprocess.DEVNULL, text=True)
    child = None
    try:
        parent.stdin.write(json.dumps(request))
        parent.stdin.close()
        child = json.loads(parent.stdout.readline())["child"]
        time.sleep(0.5)
        os.kill(child, 0)  # alive and waiting
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_inherits_no_secret(monkeypatch):
    monkeypatch.setenv("SERVER_PRIVATE_KEY", "fake-signing-key-0123")
    monkeypatch.setenv("MEDSYFT_SITE_DIR", "/srv/medsyft/st-agnes")
    mine, theirs = socket.socketpair()
    proc = launcher.spawn(PROBE, SandboxSettings(**SETTINGS), stdin=theirs.fileno(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        raw = open(f"/proc/{proc.pid}/environ", "rb").read()
        names = {e.split(b"=", 1)[0].decode() for e in raw.split(b"\0") if e}
        assert names <= (set(launcher.KEEP_ENV) | set(launcher.PYTHON_ENV)
                         | {"HOME", "PYTHONUNBUFFERED", confine.SPEC_ENV})
        assert b"fake-signing-key" not in raw and b"/srv/medsyft" not in raw
        assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
    finally:
        mine.close()
        launcher.kill_tree(proc)


def test_spawn_refuses_where_a_feature_is_missing_unless_relaxed(monkeypatch):
    monkeypatch.setattr(confine, "missing_features", lambda: ["landlock"])
    with pytest.raises(SandboxUnavailable, match="landlock"):
        launcher.spawn(PROBE, SandboxSettings(**SETTINGS), stdin=subprocess.DEVNULL)
    run = probe("root", None, [("status", {})], settings={"relaxed": True})
    assert run.returncode == 0 and run.sealed["relaxed"], run.stderr


def test_a_child_not_started_by_the_launcher_refuses_to_run():
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-P", "-s", "-m", PROBE], env=env, cwd="/",
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "SandboxUnavailable" in done.stderr


def test_a_child_without_namespaces_of_its_own_refuses_unless_relaxed():
    """The child checks what it got: started with the spec but not in its own namespaces
    (as if the launcher's unshare had been skipped), it stops before running anything."""
    for relaxed in (False, True):
        spec = launcher._spec(PROBE, SandboxSettings(relaxed=relaxed, **SETTINGS))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
               confine.SPEC_ENV: spec.model_dump_json()}
        mine, theirs = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-P", "-s", "-m", PROBE], env=env, cwd="/",
                                stdin=theirs.fileno(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        theirs.close()
        channel.send(mine, json.dumps({"attempts": [["status", {}]]}).encode(), [])
        mine.close()
        out, err = proc.communicate(timeout=60)
        if relaxed:
            assert proc.returncode == 0, err
            sealed = json.loads(out.decode().splitlines()[0])["sealed"]
            assert sealed["relaxed"] and any("net namespace" in m for m in sealed["missing"])
        else:
            assert proc.returncode != 0 and b"SandboxUnavailable" in err
            assert b'"attempt"' not in out


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_channel_refuses_oversized_headers_and_surplus_descriptors():
    r, w = os.pipe()
    try:
        a, b = socket.socketpair()
        with a, b:
            with pytest.raises(channel.ChannelError):
                channel.send(a, b"x" * (channel.MAX_HEADER + 1), [])
            sender = threading.Thread(target=channel.send, args=(a, b"y" * 300_000, [w]))
            sender.start()  # more than a socket buffer holds: sent while it is read
            header, fds = channel.receive(b)
            sender.join(10)
            assert header == b"y" * 300_000 and len(fds) == 1
            os.close(fds[0])
            a.close()
            with pytest.raises(EOFError):
                channel.receive(b)
        a, b = socket.socketpair()
        with a, b:
            before = _open_fds()
            channel.send(a, b"hello", [r, w, r])
            with pytest.raises(channel.ChannelError):
                channel.receive(b, max_fds=2)
            assert _open_fds() == before  # the ones that came were closed
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"\xff\xff\xff\xff")
            with pytest.raises(channel.ChannelError):
                channel.receive(b)
    finally:
        os.close(r)
        os.close(w)
