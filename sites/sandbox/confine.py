"""Confinement a sandbox child applies to itself: Landlock, a fresh uid, seccomp, rlimits.

A child started by `sites.sandbox.launcher.spawn` already runs in namespaces of its own
(network with only a down `lo`, mount, IPC, UTS, and a user namespace where the site is not
root), set up by the launcher between fork and exec. Inside it, two calls finish the job:

* `enter()` is the first thing the child's entry module does, before `import torch` or
  anything else that starts a thread (Landlock binds the calling thread and the threads it
  starts later, so it must be applied while the process has one thread). It reads the spec
  the launcher wrote into `MEDSYFT_SANDBOX` and restricts the filesystem to reading the
  system's libraries, the Python installation and the few medsyft packages the spec names,
  with write access to nothing but the spec's writable folder (normally none) and execute
  access to nothing at all; no TCP bind or connect; no signal to, and no abstract unix
  socket of, any process outside the sandbox. A root child whose Python lies below a folder
  others may not traverse (/root, 0700) first gets, in its own mount namespace, a view of
  that folder holding only what it needs, so that its own uid still reaches it after seal().
* `seal()` comes after the imports and the warm-up, before the child reads any input: it
  empties the capability bounding set, moves a root child to a uid and gid of its own
  (`UID_BASE + pid`: no two sandboxes ever share one), sets no_new_privs, loads a seccomp
  filter for every thread (no sockets, no exec, no new process, no ptrace, no namespace, mount,
  BPF, perf, io_uring or keyring call) and sets the rlimits (address space, CPU seconds, file
  size, open files, processes, no core dump). It returns what the child really got.

Where a kernel feature is missing the child refuses to run (`SandboxUnavailable`) unless the
spec says `relaxed` (the operator's `sandbox: relaxed`); then it runs with what there is and
reports what it lacks in `Confinement.missing`.

Must never: import torch or anything else that starts threads at module level; grant write
access to anything the spec does not name; run a child unconfined without `relaxed`; swallow
a failure to apply a layer the kernel has.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import math
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policies.contract.errors import MedsyftError

#: The environment variable that carries the launcher's `SandboxSpec` (JSON) to the child.
SPEC_ENV = "MEDSYFT_SANDBOX"
#: A root child becomes uid and gid `UID_BASE + its pid`: unused on any normal system, and
#: distinct for every sandbox alive at the same time.
UID_BASE = 2_000_000_000
#: Namespaces the launcher unshares (`user` only where the site is not root).
NAMESPACES = ("net", "mnt", "ipc", "uts", "user")
#: The lowest Landlock ABI that has everything enter() applies (TCP rules: 4, scopes: 6).
LANDLOCK_FULL_ABI = 6
#: Open files a sealed child may hold (at least this many more than it holds at seal()).
NOFILE = 64

# System paths a child may read: shared libraries, the dynamic linker's cache, the CPU
# topology that OpenMP and glibc read. Nothing of /etc but what glibc and Python look up
# (no shadow, no host keys, no TLS keys), never /home, /root, /srv, /var, /tmp or /work.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime",
               "/etc/nsswitch.conf", "/sys/devices/system/cpu", "/dev/urandom",
               "/dev/random", "/dev/zero")
#: Of /proc, the machine's shape only; plus the child's own /proc/<pid> (`_rules`). Not the
#: listing, and no other process: their command lines named the site's folders and venv
#: (red team, issue 14).
PROC_READ = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/kernel/cap_last_cap",
             "/proc/sys/vm/overcommit_memory")
SINKS = ("/dev/null",)  # may be opened for writing too: it keeps nothing
GPU_READ = ("/sys", "/proc/driver/nvidia")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
               "/dev/nvidia-modeset", "/dev/nvidia[0-9]*", "/dev/nvidia-caps/*")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

# prctl(2)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21

# Landlock (the syscall numbers are the same on every architecture medsyft runs on)
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
#: What each kind of path grants; nothing anywhere grants FS_EXECUTE: a child never execs.
READ = FS_READ_FILE | FS_READ_DIR
LIST = FS_READ_DIR
SINK = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE
DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV
WRITE_DIR = (READ | FS_WRITE_FILE | FS_TRUNCATE | FS_REMOVE_DIR | FS_REMOVE_FILE
             | FS_MAKE_DIR | FS_MAKE_REG | FS_REFER)

# clone(2) flags (argument 0 on x86_64 and aarch64)
CLONE_THREAD = 0x00010000


class SandboxUnavailable(MedsyftError):
    """The kernel lacks a feature the sandbox needs and the site is not `sandbox: relaxed`:
    no researcher code runs here until it is fixed or the operator relaxes the sandbox."""


class SandboxSpec(BaseModel):
    """What the launcher tells a child to apply (JSON in `MEDSYFT_SANDBOX`); no secret, no
    site path: only the code it may read, limits, and the parent's namespaces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read: list[str] = Field(default_factory=list)  # directories and files, read-only
    list_only: list[str] = Field(default_factory=list)  # directories: names only
    writable: str | None = None
    gpu: bool = False
    relaxed: bool = False
    memory_mib: int | None = 8192
    cpu_seconds: int = 3600
    file_mib: int = 0  # RLIMIT_FSIZE
    threads: int = 0
    parent_pid: int = 0
    parent_namespaces: dict[str, int] = Field(default_factory=dict)


class Confinement(BaseModel):
    """What a child really got (the parent logs it)."""

    uid: int
    root_dropped: bool
    namespaces: list[str]
    landlock_abi: int
    seccomp: bool
    no_new_privs: bool
    capabilities: str  # CapEff from /proc/self/status, hex
    rlimits: dict[str, int]
    relaxed: bool
    missing: list[str]


# ----------------------------------------------------------------------------- probes

def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none, or disabled at boot)."""
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def _status_fields() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _caps_effective() -> int:
    return int(_status_fields().get("CapEff", "0"), 16)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _seccomp_usable() -> bool:
    if _libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:  # kernel without CONFIG_SECCOMP
        return False
    try:
        actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False
    if "errno" not in actions:
        return False
    try:
        import pyseccomp  # noqa: F401  (finds the system's libseccomp.so.2)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP, _CAP_SYS_ADMIN = 6, 7, 8, 21


def missing_features() -> list[str]:
    """The kernel features the sandbox needs that this machine lacks ([] when none); cheap,
    run by the parent before it starts a child."""
    missing = []
    abi = landlock_abi()
    if abi < 1:
        missing.append("landlock")
    else:
        if abi < 4:
            missing.append("landlock network rules (ABI 4)")
        if abi < LANDLOCK_FULL_ABI:
            missing.append("landlock scoping of signals and abstract sockets (ABI 6)")
    if not _seccomp_usable():
        missing.append("seccomp")
    if not all(os.path.exists(f"/proc/self/ns/{ns}") for ns in NAMESPACES):
        missing.append("namespaces")
    elif os.geteuid() == 0:
        caps = _caps_effective()
        if not caps >> _CAP_SYS_ADMIN & 1:
            missing.append("namespaces (root without CAP_SYS_ADMIN)")
        if not (caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1
                and caps >> _CAP_SETPCAP & 1):
            missing.append("uid switch (root without CAP_SETUID/SETGID/SETPCAP)")
    elif (_read_int("/proc/sys/user/max_user_namespaces") == 0
          or _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0
          or _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1):
        missing.append("user namespaces")
    return missing


def namespace_ids() -> dict[str, int]:
    """This process's namespace inodes (the launcher sends its own, so that a child can
    tell which namespaces it really has of its own)."""
    ids = {}
    for ns in NAMESPACES:
        try:
            ids[ns] = os.stat(f"/proc/self/ns/{ns}").st_ino
        except OSError:
            pass
    return ids


# ----------------------------------------------------------------------------- enter

class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _rules(spec: SandboxSpec) -> list[tuple[str, int]]:
    """(path, rights) for every path the child may touch; paths that do not exist are
    left out (a /lib64 on aarch64, a driver file on a machine without it)."""
    rules = [(p, READ) for p in SYSTEM_READ] + [(p, SINK) for p in SINKS]
    rules += [(p, READ) for p in PROC_READ] + [(f"/proc/{os.getpid()}", READ)]
    rules += [(p, READ) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)]
    rules += [(p, READ) for p in spec.read] + [(p, LIST) for p in spec.list_only]
    if spec.gpu:
        rules += [(p, READ) for p in GPU_READ]
        rules += [(dev, DEVICE) for pattern in GPU_DEVICES for dev in glob.glob(pattern)]
    if spec.writable is not None:
        rules.append((spec.writable, WRITE_DIR))
    return rules


def _landlock(spec: SandboxSpec, abi: int) -> None:
    fs = _fs_rights(abi)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        raise _oserror("landlock_create_ruleset")
    try:
        for path, rights in _rules(spec):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_RIGHTS
                rule = _PathBeneath(rights & fs, fd)
                if _libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH,
                                 ctypes.byref(rule), 0) != 0:
                    raise _oserror(f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _oserror("PR_SET_NO_NEW_PRIVS")
        if _libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise _oserror("landlock_restrict_self")
    finally:
        os.close(ruleset)


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(v: str | None) -> bytes | None:
        return None if v is None else os.fsencode(v)

    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                   enc(data)) != 0:
        raise _oserror(f"mount {target}")


def _hidden_above(path: str) -> str | None:
    """The topmost folder above `path` that others may not traverse (/root, mode 0700)."""
    for above in reversed(Path(path).parents):
        try:
            if not os.stat(above).st_mode & 0o001:
                return str(above)
        except OSError:
            return None
    return None


def _reveal(paths: list[str]) -> None:
    """Root child, in its own mount namespace only: where a path it must read lies below a
    folder others may not traverse (Python under /root), replace that folder, in this
    namespace, with an empty tmpfs that holds just those paths, bound read-only. After
    seal() the child's own uid then reaches them (lazy imports keep working) and sees
    nothing else of the folder. Nothing here is visible outside the child."""
    groups: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}):
        top = _hidden_above(path)
        if top is not None and not any(path.startswith(p + "/")
                                       for p in groups.get(top, [])):
            groups.setdefault(top, []).append(path)
    if not groups:
        return
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # never propagates to the site's view
    for top, needed in groups.items():
        fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in needed}
        try:
            _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                   "mode=0755,size=64k")
            for path, fd in fds.items():
                for folder in reversed(Path(path).parents):
                    if str(folder).startswith(top + "/") and not folder.exists():
                        folder.mkdir()
                        folder.chmod(0o755)
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.mkdir(path, 0o755)
                else:
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
                _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
                _mount(None, path, None,
                       _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            _mount(None, top, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
                   | _MS_NOEXEC)
        finally:
            for fd in fds.values():
                os.close(fd)


_state: dict[str, Any] = {}


def _threads() -> int:
    return int(_status_fields().get("Threads", "1"))


def _require(spec: SandboxSpec, missing: list[str], feature: str) -> None:
    missing.append(feature)
    if not spec.relaxed:
        raise SandboxUnavailable(
            f"the sandbox needs {feature}, which this machine lacks; researcher code runs "
            "only in a full sandbox unless the operator sets `sandbox: relaxed`")


def enter() -> None:
    """Apply Landlock from the launcher's spec: call first, while the process has one
    thread (before importing torch). Raises `SandboxUnavailable` when the kernel lacks a
    feature and the spec is not relaxed, or when the process was not started by the
    launcher."""
    if _state:
        raise RuntimeError("confine.enter() called twice")
    raw = os.environ.pop(SPEC_ENV, None)  # read once; the researcher's code never sees it
    if raw is None:
        raise SandboxUnavailable("this process was not started by the sandbox launcher")
    spec = SandboxSpec.model_validate_json(raw)
    if _threads() != 1:
        raise RuntimeError("confine.enter() must run before any thread is started")
    missing: list[str] = []
    own = namespace_ids()
    namespaces = [ns for ns, ino in spec.parent_namespaces.items() if own.get(ns) != ino]
    for ns in ("net", "mnt", "ipc", "uts") + (() if os.geteuid() == 0 else ("user",)):
        if ns not in namespaces:
            _require(spec, missing, f"a {ns} namespace of its own")
    if os.geteuid() != 0 and _caps_effective():
        _require(spec, missing, "no capabilities in its user namespace")
    if os.geteuid() == 0 and "mnt" in namespaces:  # before Landlock, which forbids mounts
        _reveal([p for p, _ in _rules(spec)])
    try:  # before Landlock: the library finds libseccomp.so.2 by running ldconfig
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        pass
    abi = landlock_abi()
    if abi < 1:
        _require(spec, missing, "landlock")
    else:
        if abi < 4:
            _require(spec, missing, "landlock network rules (ABI 4)")
        if abi < LANDLOCK_FULL_ABI:
            _require(spec, missing, "landlock scoping of signals and abstract sockets (ABI 6)")
        _landlock(spec, abi)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _oserror("PR_SET_NO_NEW_PRIVS")
    _state.update(spec=spec, missing=missing, abi=abi, namespaces=sorted(namespaces))


# ----------------------------------------------------------------------------- seal

#: Calls a sealed child never makes: EPERM. Creating sockets (of any family), executing,
#: starting processes, reading or writing other processes, namespaces and mounts, kernel
#: interfaces a sandbox has no use for (BPF, perf, io_uring, keyrings, modules, kexec,
#: handles that bypass path checks) and those that need a capability anyway.
DENIED = (
    "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect",
    "execve", "execveat", "fork", "vfork",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
    "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "personality",
    "acct", "swapon", "swapoff", "reboot", "sethostname", "setdomainname", "syslog",
    "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl",
    "ioperm", "vhangup", "lookup_dcookie", "uselib", "mknod", "mknodat",
)
_TIOCSTI = 0x5412  # ioctl that types into a terminal


def _seccomp(spec: SandboxSpec) -> None:
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread of the process, not just this one
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # no way round it via another ABI
    for name in DENIED:  # a name the architecture lacks resolves to a no-op pseudo-call
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    # clone3 takes its flags in memory the filter cannot read: ENOSYS makes glibc fall
    # back to clone(2), whose flags are a register; only threads may be created.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    f.load()


def _drop_bounding_set() -> bool:
    if int(_status_fields().get("CapBnd", "1"), 16) == 0:
        return True
    last = _read_int("/proc/sys/kernel/cap_last_cap") or 40
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            return False
    return int(_status_fields().get("CapBnd", "1"), 16) == 0


def _limit(name: str, value: int, applied: dict[str, int]) -> None:
    which = getattr(resource, name)
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
    applied[name] = value


def _rlimits(spec: SandboxSpec, own_uid: bool) -> dict[str, int]:
    applied: dict[str, int] = {}
    if spec.memory_mib is not None and not spec.gpu:  # CUDA maps far more than it uses
        _limit("RLIMIT_AS", spec.memory_mib << 20, applied)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(usage.ru_utime + usage.ru_stime) + spec.cpu_seconds
    which = resource.RLIMIT_CPU
    hard = resource.getrlimit(which)[1]
    soft = cpu if hard == resource.RLIM_INFINITY else min(cpu, hard)
    # SIGXCPU at the soft limit, SIGKILL a second later even if the child ignores it
    resource.setrlimit(which, (soft, soft + 1 if hard == resource.RLIM_INFINITY
                               else min(soft + 1, hard)))
    applied["RLIMIT_CPU"] = soft
    _limit("RLIMIT_FSIZE", spec.file_mib << 20, applied)
    highest = max((int(fd) for fd in os.listdir("/proc/self/fd")), default=2)
    _limit("RLIMIT_NOFILE", max(NOFILE, highest + 16), applied)
    if own_uid:  # the count is per uid: with a uid of its own it counts only this process
        _limit("RLIMIT_NPROC", _threads() + (spec.threads or os.cpu_count() or 1) + 16,
               applied)
    _limit("RLIMIT_CORE", 0, applied)
    _limit("RLIMIT_MSGQUEUE", 0, applied)
    _limit("RLIMIT_RTPRIO", 0, applied)
    if not spec.gpu:
        _limit("RLIMIT_MEMLOCK", 0, applied)
    return applied


def seal() -> Confinement:
    """The last step before a child reads input: after it, the process has no privilege,
    no way to start a process, open a socket or exec, and hard resource limits. Returns
    what it got (`missing` lists what the kernel lacked, only possible when relaxed)."""
    if not _state:
        raise RuntimeError("confine.seal() needs confine.enter() first")
    if _state.get("sealed"):
        raise RuntimeError("confine.seal() called twice")
    spec: SandboxSpec = _state["spec"]
    missing: list[str] = list(_state["missing"])
    root = os.geteuid() == 0
    # (a non-root child's launcher emptied it before exec, in the child's user namespace)
    if not _drop_bounding_set():
        _require(spec, missing, "an empty capability bounding set")
    root_dropped = False
    if root:
        uid = UID_BASE + os.getpid()
        try:  # glibc applies each to every thread of the process
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            root_dropped = True
        except OSError:
            _require(spec, missing, "a uid of its own")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _oserror("PR_SET_NO_NEW_PRIVS")
    # a change of uid clears the parent-death signal: arm it again, and leave at once if
    # the parent already went
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise _oserror("PR_SET_PDEATHSIG")
    if spec.parent_pid and os.getppid() != spec.parent_pid:
        os._exit(1)
    rlimits = _rlimits(spec, own_uid=root_dropped)
    seccomp = False
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        _require(spec, missing, "seccomp")
    else:
        _seccomp(spec)
        seccomp = True
    status = _status_fields()
    _state["sealed"] = True
    if int(status.get("CapEff", "1"), 16) != 0 and not spec.relaxed:
        raise SandboxUnavailable("the child still holds capabilities after seal()")
    return Confinement(
        uid=os.getuid(), root_dropped=root_dropped, namespaces=_state["namespaces"],
        landlock_abi=_state["abi"], seccomp=seccomp and status.get("Seccomp") == "2",
        no_new_privs=status.get("NoNewPrivs") == "1", capabilities=status.get("CapEff", ""),
        rlimits=rlimits, relaxed=spec.relaxed, missing=missing)
