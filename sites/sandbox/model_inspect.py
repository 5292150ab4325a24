"""Count a plan's parameters without memory: instantiate the model on the meta device.

Runs researcher `__init__` code, so the console calls it as a child process
(`python -m sites.sandbox.model_inspect`) with a clean environment and a timeout,
only once the model code passed the syntax-tree review. The child first
imports what it needs and says `ready`; only then does the plan arrive on
stdin and the timeout start, so a busy site's slow start-up never counts
against the researcher's model. One JSON line comes back on stdout. The count is of what the site
will train (`policies.contract.model_code.trainable_parameters`), never of the model's own
`parameters()`. Nothing private is ever near this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from policies.contract.errors import MedsyftError
from sites.sandbox.launcher import child_env, child_limits


class InspectError(MedsyftError, RuntimeError):
    pass


#: Longest the child may take to start (imports only: no researcher code runs yet).
STARTUP_TIMEOUT_S = 180.0
READY = b"ready\n"


@lru_cache(maxsize=256)
def count_parameters(model_json: str, timeout_s: float = 20.0) -> int:
    """Parameters of the plan's model (ModelSpec JSON), measured in a child process; the
    model gets `timeout_s` from the moment the child is ready to build it.

    Raises `InspectError`; `SiteBusy` (a subclass) when the child could not even start in
    time, which says nothing about the model."""
    with tempfile.TemporaryDirectory(prefix="medsyft-inspect-") as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "sites.sandbox.model_inspect"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=tmp, bufsize=0,
                                env=child_env(Path(tmp), threads=1),
                                preexec_fn=child_limits, close_fds=True)
        try:
            if not _read_ready(proc, STARTUP_TIMEOUT_S):
                raise SiteBusy("the inspecting process did not start in time (site busy)")
            try:
                out, _ = proc.communicate(model_json.encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise InspectError("model construction timed out") from None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise InspectError("model construction failed")
    result = json.loads(lines[-1])
    if "error" in result:
        raise InspectError(str(result["error"])[:200])
    return int(result["parameters"])


class SiteBusy(InspectError):
    """The child did not get ready in time: the site is loaded, the model is not at fault."""

    retry = True


def _read_ready(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child's `ready` line (and nothing else) at most `timeout_s`."""
    import selectors
    import time

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


def main() -> int:
    import torch

    from policies.contract.errors import Refused
    from policies.contract.model_code import build_model, parameter_count
    from policies.contract.plan import ModelSpec

    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    spec = ModelSpec.model_validate_json(sys.stdin.read())
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # whatever the model prints stays off the result channel
    try:
        with torch.device("meta"):
            model = build_model(spec)
        n = parameter_count(model)  # never the model's own parameters(): it can lie
        real_stdout.write(json.dumps({"parameters": int(n)}) + "\n")
    except Refused as exc:
        real_stdout.write(json.dumps({"error": str(exc)}) + "\n")
    except Exception as exc:
        real_stdout.write(json.dumps({"error": f"{type(exc).__name__} in model __init__"})
                          + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
