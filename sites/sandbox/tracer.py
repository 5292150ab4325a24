"""The sealed tracer: the only process where a plan's model code ever runs at a site.

`python -m sites.sandbox.tracer` is started by `sites.sandbox.tracing` through the
sandbox launcher. It confines itself before importing torch (`confine.enter`),
imports and warms up torch.export, seals itself (`confine.seal`: no network, no
file but the system's and its own code, no writes, no fork or exec, its own
unprivileged uid, CPU and memory limits), says `ready`, and only then reads the request on stdin:
the model section of a plan and one sample's input shape. It builds the model on
zeros, exports it (`sites.graph.export.trace`) and writes one JSON line on stdout:
`{"graph": ...}` or `{"error": "..."}`.

Everything it writes is untrusted (researcher code ran here): the site validates the
graph itself. It holds no private value, no secret, no site path: must never be given
one.
"""

from __future__ import annotations

import sys

from sites.sandbox import confine

if __name__ == "__main__":
    confine.enter()
    # torch creates its compile cache folder on import; "/" exists and cannot be written:
    # nothing is cached, nothing is written
    import os

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = "/"
    # tempfile.gettempdir() (torch asks at import) probes for a writable folder; naming
    # one it never writes to lets the tracer run with nothing writable at all
    import tempfile

    tempfile.tempdir = "/nonexistent"

import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

from policies.contract.errors import Refused  # noqa: E402
from policies.contract.model_code import build_model  # noqa: E402
from policies.contract.plan import ModelSpec  # noqa: E402
from sites.graph.export import trace  # noqa: E402

MAX_ERROR = 600


def _warm_up() -> None:
    """Export a two-layer model once: torch.export imports most of torch._dynamo and sympy
    on first use, which must happen before the seal (the uid it drops to may not read the
    interpreter's own library)."""
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.GroupNorm(1, 2),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                                torch.nn.Flatten(), torch.nn.Linear(2, 1))
    trace(model, [1, 1, 4, 4, 4])


def _answer(out: int, payload: dict) -> None:
    os.write(out, (json.dumps(payload) + "\n").encode())


def main() -> int:
    # MONAI (which a plan's source may use) imports matplotlib where it is installed, and
    # matplotlib wants a writable cache folder the tracer has none of: the tracer never
    # plots, so matplotlib is simply not there for it
    sys.modules["matplotlib"] = None  # type: ignore[assignment]
    # ... and asks getpass.getuser() at import, which falls back to the password database
    # where the sealed uid (dropped to, not in /etc/passwd) has no entry
    os.environ.setdefault("USER", "medsyft-tracer")
    _warm_up()
    confine.seal()
    out = os.dup(1)  # the answer channel; whatever the model prints goes to stderr
    os.dup2(2, 1)
    os.write(out, b"ready\n")
    try:
        request = json.loads(sys.stdin.read(1 << 20))
        spec = ModelSpec.model_validate(request["model"])
        shape = [int(s) for s in request["input_shape"]]
        torch.manual_seed(0)
        graph = trace(build_model(spec), shape)
        _answer(out, {"graph": graph.model_dump(mode="json")})
    except Refused as exc:
        _answer(out, {"error": str(exc)[:MAX_ERROR]})
    except BaseException as exc:  # noqa: BLE001 - researcher code: report, never crash
        text = f"{type(exc).__name__} while building or tracing the model: {exc}"
        _answer(out, {"error": text[:MAX_ERROR]})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)
