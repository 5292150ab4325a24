"""Count a plan's parameters without memory: instantiate the model on the meta device.

Runs researcher `__init__` code, so the console calls it as a child process
(`python -m sites.model_inspect`) with a clean environment and a timeout,
only once the model code passed the syntax-tree review; the plan arrives on
stdin and one JSON line comes back on stdout. The count is of what the site
will train (`model_loader.trainable_parameters`), never of the model's own
`parameters()`. Nothing private is ever near this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache


class InspectError(RuntimeError):
    pass


@lru_cache(maxsize=256)
def count_parameters(model_json: str, timeout_s: float = 20.0) -> int:
    """Parameters of the plan's model (ModelSpec JSON), measured in a child process."""
    env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    with tempfile.TemporaryDirectory(prefix="medsyft-inspect-") as tmp:
        try:
            proc = subprocess.run([sys.executable, "-m", "sites.model_inspect"], input=model_json,
                                  capture_output=True, text=True, timeout=timeout_s, cwd=tmp,
                                  env=env | {"HOME": tmp, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            raise InspectError("model construction timed out") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise InspectError("model construction failed")
    result = json.loads(lines[-1])
    if "error" in result:
        raise InspectError(str(result["error"])[:200])
    return int(result["parameters"])


def main() -> int:
    from researcher.plan import ModelSpec

    spec = ModelSpec.model_validate_json(sys.stdin.read())
    import torch

    from sites.model_loader import ModelRefused, build_model, parameter_count

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # whatever the model prints stays off the result channel
    try:
        with torch.device("meta"):
            model = build_model(spec)
        n = parameter_count(model)  # never the model's own parameters(): it can lie
        real_stdout.write(json.dumps({"parameters": int(n)}) + "\n")
    except ModelRefused as exc:
        real_stdout.write(json.dumps({"error": str(exc)}) + "\n")
    except Exception as exc:
        real_stdout.write(json.dumps({"error": f"{type(exc).__name__} in model __init__"})
                          + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
