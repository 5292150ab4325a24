"""How the sandbox's children are started: one launch policy for all researcher input.

Every child (training, model inspection) gets `child_env` (a clean environment) and
`child_limits` (no core dumps), and closes every inherited file descriptor.

Training child processes: a fresh process for every run, the next one started ahead.

A run's child is `python -m sites.sandbox.train_child --wait`, started with a clean
environment (no secrets), core dumps off, output to the site's training log. It
imports torch and the runtime and warms up torch.func (about 4 s on 2 cores),
then blocks until the runtime writes the run folder on its stdin, and runs
exactly that one job. So the start-up can happen before the round arrives: at
server start, and whenever a run takes the waiting process, the next one is
started and left waiting. Isolation is unchanged: a
process never serves two runs, and one that waits holds no data at all. If the
server goes away, the waiting process reads end-of-file and exits.

This module starts and waits for processes; it never reads what they write
besides the exit status, and never passes anything but the run folder's path.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

from policies.contract.errors import MedsyftError

log = logging.getLogger("medsyft.runtime")

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "TMPDIR")


class ChildTimeout(MedsyftError):
    """The run's process was killed at its time limit."""


def child_limits() -> None:
    """Limits every sandbox child starts under (run between fork and exec): no core dumps,
    so a crash never writes the child's memory (private data) to disk."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child_env(home: Path, threads: int) -> dict[str, str]:
    """The whole environment of a sandbox child: `KEEP_ENV` only (no secret, no syft or
    keyring setting), HOME in its own folder, and the thread count."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env |= {"PYTHONUNBUFFERED": "1", "HOME": str(home)}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


class TrainingProcesses:
    """One site's training children, keyed by what they are started with."""

    def __init__(self, runs_dir: Path, log_path: Path, threads: int, warm: bool = True) -> None:
        self.runs_dir, self.log_path, self.threads, self.warm = runs_dir, log_path, threads, warm
        self._spare: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        self.runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            return subprocess.Popen(
                [sys.executable, "-m", "sites.sandbox.train_child", "--wait"],
                cwd=self.runs_dir, env=child_env(self.runs_dir, self.threads),
                stdin=subprocess.PIPE, stdout=logf, stderr=logf, preexec_fn=child_limits,
                close_fds=True)

    def prestart(self) -> None:
        """Leave a process waiting for the next run (no-op when one is already waiting)."""
        if not self.warm:
            return
        with self._lock:
            if self._spare is None or self._spare.poll() is not None:
                self._spare = self._start()

    def _take(self) -> subprocess.Popen:
        """The waiting process (or a new one); the next one is started at once, so that its
        start-up (~4 CPU-seconds) overlaps this run's training, not the next round."""
        with self._lock:
            proc, self._spare = self._spare, None
        if proc is None or proc.poll() is not None:
            proc = self._start()
        self.prestart()
        return proc

    def run(self, run_dir: Path, timeout_s: float) -> int:
        """Run the job in `run_dir` in a process of its own; returns its exit status."""
        proc = self._take()
        try:
            proc.stdin.write(f"{run_dir}\n".encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):  # the waiting process died: start afresh
            proc.kill()
            proc = self._start()
            proc.stdin.write(f"{run_dir}\n".encode())
            proc.stdin.close()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ChildTimeout() from None

    def close(self) -> None:
        with self._lock:
            proc, self._spare = self._spare, None
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


_REGISTRY: dict[tuple[str, str, int, bool], TrainingProcesses] = {}
_REGISTRY_LOCK = threading.Lock()


def for_site(runs_dir: Path, log_path: Path, threads: int, warm: bool) -> TrainingProcesses:
    """The process manager of one site folder (one per server process and settings)."""
    key = (str(runs_dir), str(log_path), threads, warm)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = TrainingProcesses(runs_dir, log_path, threads, warm)
        return _REGISTRY[key]
