"""Entry point of the training child process: `python -m sites.sandbox.train_child RUN_DIR|--wait`.

Started by the runtime with a clean environment (no secrets), stdout and stderr
going to the site's own log; with `--wait` it is started ahead of its run and
reads the run folder from stdin (see `sites.sandbox.launcher`), then cwd = RUN_DIR.
Reads `job.pt` and `private.pt`, builds the researcher's model, runs the
site's DP-SGD and writes `output.pt` (parameters only) and `status.json` (ok,
or one short error category). Tracebacks go to the site log for the data
owner, never into `status.json`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import torch

from policies.contract.errors import Refused
from policies.contract.model_code import build_model, trainable_parameters
from policies.contract.plan import TrainingPlan
from sites.sandbox import dp_sgd
from sites.sandbox.job import Job, RunStatus, save_output, take_private


def _status(run_dir: Path, ok: bool, category: str | None = None, device: str = "",
            train_seconds: float | None = None) -> None:
    RunStatus(ok=ok, category=category, device=device, train_seconds=train_seconds
              ).save(run_dir)


def _device(choice: str) -> torch.device:
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        print("site configured device=cuda but no CUDA device is available; using CPU",
              file=sys.stderr)
    return torch.device("cpu")


def run(run_dir: Path) -> int:
    # The model is built before the private tensors are read, and their file is
    # removed as soon as it is loaded.
    job = Job.load(run_dir)
    plan = TrainingPlan.model_validate_json(job.plan_json)
    try:
        torch.manual_seed(job.seed)
        model = build_model(plan.model)
    except Refused as exc:
        print(f"model refused: {exc}", file=sys.stderr)
        _status(run_dir, False, "batchnorm" if "BatchNorm" in str(exc) else "model_load")
        return 0
    except Exception:
        traceback.print_exc()
        _status(run_dir, False, "model_load")
        return 0
    try:  # what the site trains, never the model's own (overridable) parameters()
        trained = trainable_parameters(model)
    except Refused as exc:
        print(f"model refused: {exc}", file=sys.stderr)
        _status(run_dir, False, "model_load")
        return 0
    n_params = sum(int(p.numel()) for p in trained.values())
    if n_params > job.max_parameters:
        print(f"model has {n_params} parameters, policy allows {job.max_parameters}",
              file=sys.stderr)
        _status(run_dir, False, "too_large")
        return 0
    expected = {k: tuple(v.shape) for k, v in trained.items()}
    got = {k: tuple(v.shape) for k, v in job.weights.items()}
    if expected != got:
        print(f"weights mismatch: model has {len(expected)} tensors, weights {len(got)}",
              file=sys.stderr)
        _status(run_dir, False, "weights_mismatch")
        return 0
    cfg = dp_sgd.DPConfig(
        sample_rate=job.sample_rate, noise_multiplier=job.noise_multiplier,
        max_grad_norm=plan.dp.max_grad_norm, steps=job.steps, loss=plan.loss,
        optimizer=plan.optimizer, learning_rate=plan.learning_rate, momentum=plan.momentum)
    device = _device(job.device)
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    x, y = take_private(run_dir)
    t0 = time.perf_counter()
    try:
        params = dp_sgd.train(model, job.weights, x, y, cfg, device, seed=job.seed)
    except torch.cuda.OutOfMemoryError:
        traceback.print_exc()
        _status(run_dir, False, "oom")
        return 0
    except MemoryError:
        traceback.print_exc()
        _status(run_dir, False, "oom")
        return 0
    except Exception:
        traceback.print_exc()
        _status(run_dir, False, "forward")
        return 0
    train_seconds = time.perf_counter() - t0
    save_output(run_dir, params)
    _status(run_dir, True, device=device.type, train_seconds=round(train_seconds, 3))
    return 0


def _warm_up() -> None:
    """One DP-SGD step on a 3-weight model and made-up numbers: torch.func imports most of
    torch._dynamo on first use (about 2 s on 2 cores); better before the run than in it."""
    model = torch.nn.Linear(2, 1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = dp_sgd.per_sample_gradients(model, params, {}, dp_sgd.LOSSES["bce_with_logits"],
                                        torch.zeros(2, 2), torch.zeros(2))
    dp_sgd.add_noise(dp_sgd.clip_and_sum(grads, 1.0), 1.0, None)


def _wait_for_job() -> Path:
    """`--wait`: the process was started ahead of its run; the run folder comes on stdin.

    Everything is imported and warmed up by now; stdin is then closed for good, and HOME
    and cwd move into the run folder before any researcher code is built."""
    _warm_up()
    line = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if not line:  # the server went away without a job: nothing to do
        raise SystemExit(0)
    run_dir = Path(line).resolve()
    os.chdir(run_dir)
    os.environ["HOME"] = str(run_dir)
    return run_dir


def main() -> int:
    run_dir = _wait_for_job() if sys.argv[1:] == ["--wait"] else Path(sys.argv[1]).resolve()
    print(f"training child {os.getpid()} takes run {run_dir.name}", file=sys.stderr)
    try:
        return run(run_dir)
    except Exception:
        traceback.print_exc()
        _status(run_dir, False, "internal")
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # output.pt and status.json are closed; skip torch's slow teardown
