"""How sandbox children are started and ended: one launch policy for every process that
handles researcher input.

`spawn` starts `python -P -s -m MODULE` with a clean environment (`child_env`: no secret, no
syft or keyring setting) plus the sandbox spec (`MEDSYFT_SANDBOX`), cwd `/`, every inherited
descriptor closed, in a session of its own. Between fork and exec it turns core dumps off,
asks for SIGKILL should the site go away, and unshares the network (only a down `lo`),
mount, IPC and UTS namespaces, plus a user namespace where the site is not root. The child
does the rest itself (`sites.sandbox.confine`: Landlock, a uid of its own, seccomp,
rlimits). On a machine that lacks a kernel feature `spawn` refuses, unless the site is
`relaxed`. `kill_tree` ends a child's whole session.

Training child processes (`TrainingProcesses`): a fresh process for every run, the next
one started ahead. A run's child imports torch and warms up before it seals itself and
waits on its stdin, a unix socket, for the one message of its run (`sites.sandbox.channel`:
a header and the descriptors it may use). So the start-up can happen before the round
arrives: at server start, and whenever a run takes the waiting process, the next one is
started and left waiting. A process never serves two runs, and one that waits holds no data
at all. If the server goes away, the waiting process reads end-of-file and exits, and the
kernel kills any child whose parent died.

This module starts, feeds and ends processes. It must never pass a child a secret, a path
of the site's or any descriptor but those it is given to pass; never interpret what a child
writes (its output is copied to the site's training log, at most `LOG_CAP` bytes a process);
never leave a process of a run alive once the run is over.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import queue
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.contract.errors import MedsyftError
from sites.sandbox import channel, confine
from sites.sandbox.confine import SandboxSpec, SandboxUnavailable

log = logging.getLogger("medsyft.runtime")

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "TMPDIR")
#: The operator's own Python layout, passed on when set (the child may read those folders'
#: medsyft packages only, see `_code_paths`).
PYTHON_ENV = ("PYTHONHOME", "PYTHONPATH")
#: The medsyft packages every sandbox child may read (besides its own entry module's).
SANDBOX_PACKAGES = ("sites.sandbox", "sites.graph", "policies.contract")
#: Most bytes of one child's output that reach the training log.
LOG_CAP = 1 << 20
TRAIN_MODULE = "sites.sandbox.train_child"

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP = 1, 24
_libc = ctypes.CDLL(None, use_errno=True)


class ChildTimeout(MedsyftError):
    """The run's process was killed at its time limit."""


@dataclass(frozen=True)
class SandboxSettings:
    """How a site's sandbox children are confined (from site.yaml)."""

    relaxed: bool = False  # run even where the kernel lacks a feature (`sandbox: relaxed`)
    memory_mib: int | None = 8192  # RLIMIT_AS after imports (None: no cap; never with gpu)
    cpu_seconds: int = 3600  # CPU seconds after imports (RLIMIT_CPU)
    gpu: bool = False  # the NVIDIA device nodes are usable
    threads: int = 0  # OMP/MKL threads (0: the libraries' default)
    writable: Path | None = None  # normally None: children get data through descriptors
    # RLIMIT_FSIZE: the largest regular file a child may write, descriptors it is handed
    # included; None: 0 without a writable folder (pipes and sockets only), 1 GiB with one
    file_mib: int | None = None


def child_env(home: Path, threads: int) -> dict[str, str]:
    """The whole environment of a sandbox child: `KEEP_ENV` only (no secret, no syft or
    keyring setting), HOME in its own folder, and the thread count."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env |= {"PYTHONUNBUFFERED": "1", "HOME": str(home)}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


# ----------------------------------------------------------------------------- spawn

def _package_dirs(name: str) -> list[str]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{name} is not a package this process can find")
    return [os.path.realpath(p) for p in spec.submodule_search_locations]


def _code_paths(module: str) -> tuple[list[str], list[str]]:
    """What of medsyft a child of `module` may read: the sandbox's own packages and the
    module's package, each whole; of the packages above them only `__init__.py` (and its
    cached bytecode) and the names in their folder, which the import system lists. A
    folder on PYTHONPATH holding one of them may be listed too, nothing in it read."""
    read: set[str] = set()
    listed: set[str] = set()
    pythonpath = {os.path.realpath(p) for p in
                  os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    package, _, _ = module.rpartition(".")
    wanted = list(SANDBOX_PACKAGES) + ([package] if package else [])
    if not package:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise ValueError(f"no module {module}")
        read.add(os.path.realpath(spec.origin))
        tops = [os.path.dirname(os.path.realpath(spec.origin))]
    else:
        tops = []
    for name in wanted:
        read.update(_package_dirs(name))
        parts = name.split(".")
        for i in range(1, len(parts)):
            above = importlib.util.find_spec(".".join(parts[:i]))
            assert above is not None
            if above.origin:
                origin = os.path.realpath(above.origin)
                read.add(origin)
                cached = importlib.util.cache_from_source(origin)
                if os.path.exists(cached):
                    read.add(cached)
            listed.update(_package_dirs(".".join(parts[:i])))
        tops += [os.path.dirname(d) for d in _package_dirs(parts[0])]
    listed.update(t for t in tops if t in pythonpath)
    return sorted(read), sorted(listed - read)


def _spec(module: str, settings: SandboxSettings) -> SandboxSpec:
    read, listed = _code_paths(module)
    file_mib = settings.file_mib
    if file_mib is None:
        file_mib = 0 if settings.writable is None else 1024
    return SandboxSpec(
        read=read, list_only=listed,
        writable=None if settings.writable is None else str(settings.writable.resolve()),
        gpu=settings.gpu, relaxed=settings.relaxed, memory_mib=settings.memory_mib,
        cpu_seconds=settings.cpu_seconds, file_mib=file_mib, threads=settings.threads,
        parent_pid=os.getpid(), parent_namespaces=confine.namespace_ids())


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _preexec(relaxed: bool) -> Callable[[], None]:
    """What runs in the child between fork and exec (prepared here: no import, no lookup
    there). Everything here affects only the new process."""
    parent = os.getpid()
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS
    if uid != 0:
        flags |= _CLONE_NEWUSER
    maps = [("/proc/self/setgroups", b"deny"), ("/proc/self/uid_map", b"%d %d 1" % (uid, uid)),
            ("/proc/self/gid_map", b"%d %d 1" % (gid, gid))]
    last_cap = _last_cap()
    unshare, prctl = _libc.unshare, _libc.prctl

    def preexec() -> None:
        # no core dumps: a crash never writes the child's memory (private data) to disk
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_PDEATHSIG")
        if os.getppid() != parent:  # the site went before the signal was armed
            os._exit(1)
        if unshare(flags) != 0:
            if relaxed:
                return
            raise OSError(ctypes.get_errno(), "unshare")
        if uid != 0:  # map the site's own uid and gid (files it creates keep their owner)
            for path, line in maps:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            # the new user namespace gave this process every capability in it: empty the
            # bounding set now (after exec a non-root process could not), so that nothing
            # can come back even in the namespace
            for cap in range(last_cap + 1):
                if prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")

    return preexec


class _Spawner:
    """Forks every child from one long-lived thread: the parent-death signal fires when the
    *thread* that forked a child ends, and a round's thread may end before its child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def call(self, fn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._loop, args=(self._jobs,),
                                                name="medsyft-sandbox-spawner", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
            jobs = self._jobs
        done: Future[subprocess.Popen] = Future()
        jobs.put((fn, done))
        return done.result()

    @staticmethod
    def _loop(jobs: queue.SimpleQueue) -> None:
        while True:
            fn, done = jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()
_OWN_KWARGS = ("args", "env", "cwd", "preexec_fn", "start_new_session", "close_fds",
               "executable", "shell", "user", "group", "extra_groups", "process_group",
               "umask")


def spawn(module: str, settings: SandboxSettings, **popen: Any) -> subprocess.Popen:
    """Start `python -P -s -m module` in the sandbox (see the module docstring); `popen`
    takes the child's stdio and the like, never its environment, cwd or start-up. Raises
    `SandboxUnavailable` before starting anything when the kernel lacks a feature and the
    site is not relaxed."""
    clash = sorted(set(popen) & set(_OWN_KWARGS))
    if clash:
        raise TypeError(f"spawn() sets {', '.join(clash)} itself")
    missing = confine.missing_features()
    if missing and not settings.relaxed:
        raise SandboxUnavailable(
            f"this machine lacks {', '.join(missing)}: researcher code runs only in a full "
            "sandbox unless the operator sets `sandbox: relaxed`")
    if missing:
        log.warning("sandbox relaxed: running without %s", ", ".join(missing))
    spec = _spec(module, settings)
    home = settings.writable.resolve() if settings.writable is not None else Path("/nonexistent")
    env = child_env(home, settings.threads)
    env |= {k: os.environ[k] for k in PYTHON_ENV if k in os.environ}
    env[confine.SPEC_ENV] = spec.model_dump_json()
    argv = [sys.executable, "-P", "-s", "-m", module]
    preexec = _preexec(settings.relaxed)

    def start() -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, cwd="/", preexec_fn=preexec,
                                start_new_session=True, close_fds=True, **popen)

    try:
        proc = _SPAWNER.call(start)
    except subprocess.SubprocessError as exc:  # the preexec step failed in the child
        raise SandboxUnavailable(
            "the sandbox could not give the child namespaces of its own") from exc
    if settings.writable is not None and os.geteuid() == 0:
        # the child will run as a uid of its own: its folder becomes its own before the
        # child can get any message (it reads none before it is sealed and sent one)
        uid = confine.UID_BASE + proc.pid
        os.chown(home, uid, uid)
        home.chmod(0o700)
    return proc


def _members(sid: int) -> list[int]:
    """Processes whose session or process group is `sid` (a child's whole tree: nothing it
    starts can leave the session without first starting a process, which seal() forbids)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and sid in (int(fields[2]), int(fields[3])):
            found.append(int(entry))
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything in its session, then reap it. Before the child is
    reaped its pid (its session's and group's id) cannot be reused, so nothing else is hit."""
    if proc.returncode is None:
        for pid in _members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the child exits (True) or `timeout_s` passes (False), without reaping."""
    if proc.returncode is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], max(timeout_s, 0))
        return bool(readable)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- training

def _relay(read_fd: int, log_path: Path, cap: int) -> None:
    """Copy one child's output to the training log, at most `cap` bytes (a child cannot
    fill the site's disk), then drain the rest unread."""
    written = 0
    with open(read_fd, "rb", buffering=0, closefd=True) as src, open(log_path, "ab") as dst:
        while chunk := src.read(1 << 16):
            if written < cap:
                part = chunk[:cap - written]
                dst.write(part)
                dst.flush()
                written += len(part)
                if written >= cap:
                    dst.write(b"\n[sandbox: this process's further output was dropped]\n")
                    dst.flush()


@dataclass
class _Child:
    proc: subprocess.Popen
    sock: socket.socket


class TrainingProcesses:
    """One site's training children, keyed by what they are started with."""

    def __init__(self, runs_dir: Path, log_path: Path, settings: SandboxSettings,
                 warm: bool = True) -> None:
        self.runs_dir, self.log_path, self.settings, self.warm = (runs_dir, log_path,
                                                                  settings, warm)
        self._spare: _Child | None = None
        self._lock = threading.Lock()

    def _start(self) -> _Child:
        self.runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        try:
            proc = spawn(TRAIN_MODULE, self.settings, stdin=child.fileno(), stdout=out_w,
                         stderr=out_w)
        except BaseException:
            parent.close()
            os.close(out_r)
            raise
        finally:
            child.close()
            os.close(out_w)
        threading.Thread(target=_relay, args=(out_r, self.log_path, LOG_CAP),
                         name=f"medsyft-sandbox-log-{proc.pid}", daemon=True).start()
        return _Child(proc, parent)

    def prestart(self) -> None:
        """Leave a process waiting for the next run (no-op when one is already waiting).

        It starts at the lowest CPU priority (nice 19): its imports and warm-up (about
        2.7 s of a core) then yield to a round in progress instead of taking its cores;
        `_take` gives it normal priority back for its run."""
        if not self.warm:
            return
        with self._lock:
            if self._spare is None or _exited(self._spare.proc):
                if self._spare is not None:
                    self._discard(self._spare)
                self._spare = self._start()
                _set_priority(self._spare.proc.pid, SPARE_NICE)

    @staticmethod
    def _discard(child: _Child) -> None:
        child.sock.close()
        kill_tree(child.proc)

    def _take(self) -> _Child:
        """The waiting process (or a new one), at normal priority; the next one is started
        at once at the lowest priority, so that its start-up uses what this run leaves of
        the cores (on a many-core or GPU site, nearly all of it) and never slows it."""
        with self._lock:
            child, self._spare = self._spare, None
        if child is None or _exited(child.proc):
            if child is not None:
                self._discard(child)
            child = self._start()
        else:
            _set_priority(child.proc.pid, 0)
        self.prestart()
        return child

    def run(self, header: bytes, fds: list[int], timeout_s: float) -> int:
        """Run one job in a process of its own: hand it `header` and `fds`, wait for it
        (at most `timeout_s` from the hand-over) and return its exit status. Whatever the
        outcome, nothing of the process is left alive."""
        child = self._take()
        try:
            try:
                channel.send(child.sock, header, fds)
            except OSError:  # the waiting process died: start afresh
                self._discard(child)
                child = self._start()
                channel.send(child.sock, header, fds)
            child.sock.close()  # one message per process: the child reads end-of-file next
            if not _wait_exit(child.proc, timeout_s):
                kill_tree(child.proc)
                raise ChildTimeout()
        finally:
            child.sock.close()
            kill_tree(child.proc)
            try:
                self.prestart()  # should the one started ahead have died meanwhile
            except OSError:
                log.exception("could not start the next training process; the next run "
                              "starts its own")
        assert child.proc.returncode is not None
        return child.proc.returncode

    def close(self) -> None:
        with self._lock:
            child, self._spare = self._spare, None
        if child is not None:
            child.sock.close()  # the waiting process reads end-of-file and exits
            _wait_exit(child.proc, 10)
            kill_tree(child.proc)


#: CPU priority of a waiting training process (the lowest): see `TrainingProcesses.prestart`.
SPARE_NICE = 19


def _set_priority(pid: int, nice: int) -> None:
    """Set the nice value of every thread of process `pid` (Linux keeps it per thread).
    Raising a child's value is always allowed; lowering it back may need privilege
    (RLIMIT_NICE): where it is refused the run keeps the low priority, which only makes
    it yield to other work on the machine."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass


_REGISTRY: dict[tuple[str, str, SandboxSettings, bool], TrainingProcesses] = {}
_REGISTRY_LOCK = threading.Lock()


def for_site(runs_dir: Path, log_path: Path, settings: SandboxSettings,
             warm: bool = True) -> TrainingProcesses:
    """The process manager of one site folder (one per server process and settings)."""
    key = (str(runs_dir), str(log_path), settings, warm)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = TrainingProcesses(runs_dir, log_path, settings, warm)
        return _REGISTRY[key]
