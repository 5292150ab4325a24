"""Trace a plan's model into a training graph, in the sealed tracer, from the site's side.

`trace_model(model_json, input_shape, ...)` starts `sites.sandbox.tracer` through the
sandbox launcher, sends it the model section and one sample's shape, and returns the
graph JSON it wrote, still untrusted: callers validate it with
`sites.graph.check.validate`. Errors are the tracer's own short message (it held
nothing private, so its words may be shown) or a timeout.

Must never pass the tracer anything but the model section and a shape, and never
treat its answer as more than a proposal.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from dataclasses import replace

from policies.contract.errors import MedsyftError, printable
from sites.sandbox import launcher

MAX_ANSWER = 4 << 20
MAX_ERROR = 600  # characters of a model's own error shown to the data owner and researcher
READY = b"ready\n"
#: start-up (imports, warm-up) is not the model's fault: it has its own, longer limit
STARTUP_GRACE_S = 120.0


class TraceError(MedsyftError, RuntimeError):
    """The model could not be traced (its message is the tracer's, bounded)."""


class SiteBusy(TraceError):
    """The tracer did not even start in time: the site is loaded, the model is not at fault."""

    retry = True


def trace_model(model_json: str, input_shape: list[int], timeout_s: float,
                settings: launcher.SandboxSettings) -> str:
    """The graph JSON for the model (ModelSpec JSON) on one sample of `input_shape`; the
    model gets `timeout_s` from the moment the sealed tracer says it is ready.

    Raises `TraceError` (the model failed), `SiteBusy`, or `launcher`'s
    `SandboxUnavailable` when this kernel cannot seal the tracer."""
    request = json.dumps({"model": json.loads(model_json), "input_shape": input_shape})
    # nothing writable: a scratch folder once let a model fill the disk (fallocate) and
    # outlive its cleanup (3,000 nested folders); torch.export needs none
    return _trace(request, timeout_s, replace(settings, writable=None, file_mib=None))


def _trace(request: str, timeout_s: float, settings: launcher.SandboxSettings) -> str:
    proc = launcher.spawn("sites.sandbox.tracer", settings, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    try:
        if not _read_ready(proc, STARTUP_GRACE_S):
            raise SiteBusy("the tracer did not start in time (site busy)")
        try:
            out, _ = proc.communicate(request.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TraceError("tracing the model timed out") from None
    finally:
        launcher.kill_tree(proc)
    line = out[:MAX_ANSWER].split(b"\n", 1)[0]
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):  # a model may write the answer line itself
        raise TraceError(f"the tracer ended without an answer (exit status "
                         f"{proc.returncode})") from None
    if not isinstance(answer, dict):
        raise TraceError("the tracer's answer is malformed")
    if "error" in answer:  # the researcher's words: one printable line
        text = " ".join(str(answer["error"]).split())
        raise TraceError(printable(text, MAX_ERROR))
    if "graph" not in answer:
        raise TraceError("the tracer's answer has no graph")
    return json.dumps(answer["graph"])


def _read_ready(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait at most `timeout_s` for the tracer's `ready` line (and nothing else)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    got = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while len(got) < len(READY):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return False
            chunk = os.read(proc.stdout.fileno(), len(READY) - len(got))
            if not chunk:
                return False
            got += chunk
    return got == READY
