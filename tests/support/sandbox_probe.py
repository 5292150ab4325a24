"""A sandbox child that tries what it should not be able to do, and says what happened.

`python -m tests.support.sandbox_probe` is started by `sites.sandbox.launcher.spawn` like any
sandbox child: `confine.enter()` first, then it reads one message from its stdin channel
(the test's instructions: a list of attempts with their arguments, and whether to import
torch, start a thread or hold a socket before sealing, as site code may), then
`confine.seal()`, then the attempts, one after the other. It writes JSON lines to stdout:
`{"sealed": Confinement, "at": time}`, then `{"attempt": name, "outcome": "ok..." | errno
name | exception name}` for each attempt. tests/security/test_sandbox_capabilities.py reads
them.

`python -m tests.support.sandbox_probe --parent` is the parent side for the runs as an
unprivileged site: it reads `{"settings": {...}, "message": {...}}` on stdin, spawns the probe
through the launcher exactly as the site would, and prints `{"returncode", "stdout",
"stderr", "members_after", ...}` as one JSON line (`{"child": pid}` first when the request
says `report_child`).

A probe never prints what it read: only whether it could (and a length or a hash).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:] != ["--parent"]:
    from sites.sandbox import confine

    confine.enter()  # first, while this process has one thread

import ctypes  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def _syscall(nr: int, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_PREPARED: dict[str, Any] = {}


def _attempt(name: str, args: dict) -> str:
    try:
        return ATTEMPTS[name](**args)
    except BaseException as exc:  # the point is to report it
        return _outcome(exc)


def _prepare(message: dict) -> None:
    """What site code may do before seal(): import torch, start a thread, hold a socket."""
    if message.get("torch"):
        import torch

        torch.zeros(4).sum()
    if message.get("thread"):  # a thread started before seal(): is it confined too?
        go = threading.Event()
        results: list[str] = []

        def later() -> None:
            go.wait()
            results.extend(_attempt(name, args) for name, args in message["attempts"])

        worker = threading.Thread(target=later, daemon=True)
        worker.start()
        _PREPARED["thread"] = (go, worker, results)
    if message.get("presocket"):  # as if seccomp let a socket through: the next layers
        import socket

        _PREPARED["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)


# ----------------------------------------------------------------------------- attempts

def read_file(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return f"ok: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


def list_dir(path: str) -> str:
    return f"ok: {len(os.listdir(path))} names"


def write_file(path: str) -> str:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a file size limit shows as EFBIG
    with open(path, "ab") as f:
        f.write(b"written by the sandbox probe\n")
    return "ok"


def create_file(path: str) -> str:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    return "ok"


def mkdir(path: str) -> str:
    os.mkdir(path)
    return "ok"


def socket_of(kind: str) -> str:
    import socket

    family, type_ = {"tcp": (socket.AF_INET, socket.SOCK_STREAM),
                     "udp": (socket.AF_INET, socket.SOCK_DGRAM),
                     "tcp6": (socket.AF_INET6, socket.SOCK_STREAM),
                     "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
                     "netlink": (socket.AF_NETLINK, socket.SOCK_RAW)}[kind]
    socket.socket(family, type_).close()
    return "ok"


def socketpair() -> str:
    import socket

    for s in socket.socketpair():
        s.close()
    return "ok"


def connect_tcp(port: int) -> str:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return "ok"


def connect_presealed(port: int) -> str:
    s = _PREPARED["socket"]
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return "ok"


def bind_presealed() -> str:
    s = _PREPARED["socket"]
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return "ok"


def fork() -> str:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "ok"


def fork_and_sleep() -> str:
    """A process that means to outlive its run."""
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    return f"ok: pid {pid}"


def execv() -> str:
    os.execv("/bin/true", ["true"])
    return "ok"  # not reached: /bin/true prints nothing


def subprocess_run() -> str:
    import subprocess

    subprocess.run(["/bin/true"], check=True)
    return "ok"


def posix_spawn() -> str:
    pid = os.posix_spawn("/bin/true", ["true"], {})
    os.waitpid(pid, 0)
    return "ok"


def thread() -> str:
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(1))
    t.start()
    t.join()
    return "ok" if got else "no"


_PTRACE_TRACEME, _PTRACE_ATTACH = 0, 16
_SYS = {"ptrace": 101, "unshare": 272, "mount": 165, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "keyctl": 250, "perf_event_open": 298, "setns": 308}


def ptrace_parent() -> str:
    _syscall(_SYS["ptrace"], _PTRACE_ATTACH, os.getppid(), 0, 0)
    return "ok"


def ptrace_traceme() -> str:
    _syscall(_SYS["ptrace"], _PTRACE_TRACEME, 0, 0, 0)
    return "ok"


def unshare_user() -> str:
    _syscall(_SYS["unshare"], 0x10000000)  # CLONE_NEWUSER: full capabilities in it
    return "ok"


def mount_tmpfs() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return "ok"


def syscall(name: str) -> str:
    """A call with harmless arguments: is it refused before it looks at them?"""
    args = {"bpf": (0, 0, 0), "userfaultfd": (0,), "io_uring_setup": (1, 0),
            "keyctl": (0, 0), "perf_event_open": (0, 0, -1, -1, 0), "setns": (-1, 0)}[name]
    _syscall(_SYS[name], *args)
    return "ok"


def setuid_root() -> str:
    os.setresuid(0, 0, 0)
    return "ok"


def signal_parent() -> str:
    os.kill(os.getppid(), 0)  # signal 0: permission check only, never hurts the parent
    return "ok"


def read_parent_environ() -> str:
    return read_file(f"/proc/{os.getppid()}/environ")


def read_parent_cmdline() -> str:
    return read_file(f"/proc/{os.getppid()}/cmdline")


def list_processes() -> str:
    return "ok:" + str(sum(name.isdigit() for name in os.listdir("/proc")))


def read_own_status() -> str:
    return read_file("/proc/self/status")


def open_parent_mem() -> str:
    with open(f"/proc/{os.getppid()}/mem", "rb"):
        return "ok"


def import_module(name: str) -> str:
    import importlib

    importlib.import_module(name)
    return "ok"


def allocate(mib: int) -> str:
    block = bytearray(mib << 20)
    block[::4096] = b"x" * len(block[::4096])
    return f"ok: {len(block) >> 20} MiB"


def allocate_torch(mib: int) -> str:
    import torch

    try:
        t = torch.ones(mib << 18)  # float32: 4 bytes each
    except RuntimeError as exc:
        if "alloc" in str(exc).lower():
            raise MemoryError from None
        raise
    return f"ok: {t.numel() >> 18} MiB"


def burn_cpu() -> str:
    deadline = time.monotonic() + 120
    x = 0
    while time.monotonic() < deadline:
        x += 1
    return "ok: not stopped"


def status() -> str:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    tasks = sorted({open(f"/proc/self/task/{t}/status").read().split("Uid:")[1].split("\n")[0]
                    .split()[0] for t in os.listdir("/proc/self/task")})
    keep = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp", "Threads")
    return json.dumps({k: fields.get(k) for k in keep} | {"task_uids": tasks})


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "ok"


def secure_random() -> str:
    """DP-SGD's draws (the operating system's CSPRNG) after the seal: "ok" when they come
    and look like N(0, 1) and U[0, 1) draws (their values are not secret; none printed)."""
    import torch

    from sites.sandbox.randomness import SecureRandomness

    rng = SecureRandomness()
    z = rng.normal((20_000,), 1.0, torch.device("cpu"))
    u = rng.uniform(20_000)
    if not (torch.isfinite(z).all() and 0.95 < float(z.std()) < 1.05
            and 0.0 <= float(u.min()) and float(u.max()) < 1.0):
        return "wrong distribution"
    return "ok"


def write_fd(fd: int) -> str:
    os.write(fd, b"through the handed descriptor\n")
    return "ok"


ATTEMPTS = {f.__name__: f for f in (
    read_file, list_dir, write_file, create_file, mkdir, socket_of, socketpair, connect_tcp,
    connect_presealed, bind_presealed, fork, fork_and_sleep, execv, subprocess_run,
    posix_spawn, thread, ptrace_parent, ptrace_traceme, unshare_user, mount_tmpfs, syscall,
    setuid_root, signal_parent, read_parent_environ, read_parent_cmdline, list_processes,
    read_own_status, open_parent_mem, import_module, allocate,
    allocate_torch, burn_cpu, status, sleep, write_fd, secure_random)}


def _emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def child() -> int:
    from sites.sandbox import channel, confine

    sock = channel.stdin_socket()
    header, fds = channel.receive(sock)
    message = json.loads(header)
    _prepare(message)
    confinement = confine.seal()
    _emit({"sealed": confinement.model_dump(), "at": time.time()})
    attempts = [(name, dict(args, fd=fds[0]) if "fd" in args else args)
                for name, args in message["attempts"]]
    if "thread" in _PREPARED:
        go, worker, results = _PREPARED["thread"]
        go.set()
        worker.join(60)
    else:
        results = []
        for name, args in attempts:
            results.append(_attempt(name, args))
            _emit({"attempt": name, "outcome": results[-1]})
        return 0
    for (name, _), outcome in zip(attempts, results, strict=False):
        _emit({"attempt": name, "outcome": outcome})
    return 0


def run_probe(settings: dict, message: dict, timeout: float = 60, fds: list[int] | None = None,
              on_spawn: Any = None) -> dict:
    """Spawn the probe as the site would (as whoever runs this), hand it `message`, wait at
    most `timeout` without reaping it, then `kill_tree`; what happened, as a dict."""
    import socket
    import subprocess
    from pathlib import Path

    from sites.sandbox import channel, launcher

    settings = dict(settings)
    if settings.get("writable"):
        settings["writable"] = Path(settings["writable"])
    mine, theirs = socket.socketpair()
    started = time.time()
    proc = launcher.spawn("tests.support.sandbox_probe", launcher.SandboxSettings(**settings),
                          stdin=theirs.fileno(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    theirs.close()
    if on_spawn is not None:
        on_spawn(proc.pid)
    output: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: output.__setitem__(k, f.read()),
                                daemon=True)
               for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    channel.send(mine, json.dumps(message).encode(), list(fds or []))
    mine.close()
    exited = launcher._wait_exit(proc, timeout)
    sid = proc.pid
    before = [pid for pid in launcher._members(sid) if pid != sid]
    launcher.kill_tree(proc)
    after = launcher._members(sid)
    for r in readers:
        r.join(10)
    return {"returncode": proc.returncode, "timed_out": not exited,
            "stdout": output.get("stdout", b"").decode(errors="replace"),
            "stderr": output.get("stderr", b"").decode(errors="replace")[-4000:],
            "started": started, "members_before": before, "members_after": after,
            "uid": os.getuid()}


def parent() -> int:
    request = json.loads(sys.stdin.read())

    def report(pid: int) -> None:
        if request.get("report_child"):
            _emit({"child": pid})

    _emit(run_probe(request["settings"], request["message"], request.get("timeout", 60),
                    on_spawn=report))
    return 0


if __name__ == "__main__":
    code = parent() if sys.argv[1:] == ["--parent"] else child()
    sys.stdout.flush()
    os._exit(code)
