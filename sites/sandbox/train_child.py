"""Entry point of the training child: `python -m sites.sandbox.train_child`.

Started ahead of its run by `sites.sandbox.launcher` (one process per run, never two
runs in one). It confines itself before importing torch (`confine.enter`), imports
torch and the graph evaluator, warms up torch.func on a made-up graph, seals itself
(`confine.seal`), and only then waits on its control socket (stdin) for the run: four
memory-file descriptors (`sites.sandbox.job.RUN_FILES`). It validates the run's
training graph again (`sites.graph.check`), compiles it, loads the start weights and
the private tensors, runs the site's DP-SGD over the graph and writes the output
(parameters only) and the status (ok, or one short error category).

No researcher Python is imported or executed here: the model is the validated graph.
Tracebacks go to the site log for the data owner, never into the status.
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

import dataclasses  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import BinaryIO  # noqa: E402

import torch  # noqa: E402

from policies.contract.errors import Refused  # noqa: E402
from policies.contract.plan import TrainingPlan  # noqa: E402
from sites.graph import check  # noqa: E402
from sites.graph.execute import compile_graph  # noqa: E402
from sites.graph.schema import Graph, Node, ParamSpec, Ref  # noqa: E402
from sites.sandbox import channel, dp_sgd  # noqa: E402
from sites.sandbox.job import (  # noqa: E402
    RUN_FILES,
    Job,
    RunStatus,
    load_private,
    save_losses,
    save_output,
)


def _device(choice: str) -> torch.device:
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        print("site configured device=cuda but no CUDA device is available; using CPU",
              file=sys.stderr)
    return torch.device("cpu")


def _memory_bytes(device: torch.device) -> int | None:
    """What this process may still use: free GPU memory, or what its address-space limit
    leaves above what it has mapped already."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(1, int(soft) - mapped)


def run(job_f: BinaryIO, private_f: BinaryIO, out_f: BinaryIO, status_f: BinaryIO) -> None:
    """One run: everything it reads and writes is one of the four memory files."""

    def status(ok: bool, category: str | None = None, **extra: object) -> None:
        RunStatus(ok=ok, category=category, **extra).save(status_f)

    t_start = time.perf_counter()
    job = Job.load(job_f)
    plan = TrainingPlan.model_validate_json(job.plan_json)
    t_loaded = time.perf_counter()
    try:  # the runtime validated it; validated again where it runs
        graph, facts = check.validate(job.graph_json, loss=plan.loss,
                                      max_parameters=job.max_parameters)
    except Refused as exc:
        print(f"graph refused: {exc}", file=sys.stderr)
        return status(False, "graph")
    if facts.digest != job.graph_digest:
        print("graph digest differs from the job's", file=sys.stderr)
        return status(False, "internal")
    expected = {p.name: tuple(p.shape) for p in graph.params}
    got = {k: tuple(v.shape) for k, v in job.weights.items()}
    if expected != got:
        print(f"weights mismatch: graph has {len(expected)} tensors, weights {len(got)}",
              file=sys.stderr)
        return status(False, "weights_mismatch")
    forward = compile_graph(graph)
    discriminator = None
    if plan.adversarial is not None and job.mode == "train":  # scoring reads G only
        try:
            d_graph, d_facts = check.validate(
                job.discriminator_json or "", loss=check.DISCRIMINATOR,
                max_parameters=max(0, job.max_parameters - facts.parameters))
        except Refused as exc:
            print(f"discriminator graph refused: {exc}", file=sys.stderr)
            return status(False, "graph")
        if check.combine(facts, d_facts).digest != job.discriminator_digest:
            print("discriminator digest differs from the job's", file=sys.stderr)
            return status(False, "internal")
        d_expected = {p.name: tuple(p.shape) for p in d_graph.params}
        d_got = {k: tuple(v.shape) for k, v in (job.discriminator_weights or {}).items()}
        if d_expected != d_got:
            print("discriminator weights do not match its graph", file=sys.stderr)
            return status(False, "weights_mismatch")
        discriminator = compile_graph(d_graph)
        facts = check.combine(facts, d_facts)
    t_checked = time.perf_counter()
    cfg = dp_sgd.DPConfig(
        sample_rate=job.sample_rate, noise_multiplier=job.noise_multiplier,
        expected_batch=job.expected_batch, step_work=job.step_work,
        max_grad_norm=plan.dp.max_grad_norm,
        steps=job.steps, loss=plan.loss,
        optimizer=plan.optimizer, learning_rate=plan.learning_rate, momentum=plan.momentum,
        augment=plan.augment,
        target={"classify": "label", "segment": "mask"}.get(plan.task, "volume"))
    device = _device(job.device)
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)  # dropout draws from the site's seed
    torch.set_flush_denormal(True)  # again, should the thread count have changed anything
    x, y = load_private(private_f)
    private_f.close()
    micro = dp_sgd.micro_batch_size(x[0].numel(), device, facts.activation_bytes,
                                    _memory_bytes(device))
    cfg = dataclasses.replace(cfg, micro_batch=micro)
    print(f"micro-batch {micro} ({facts.activation_bytes / 2**20:.1f} MiB per sample)",
          file=sys.stderr)
    if job.mode == "score":
        return _score(forward, job, plan, x, y, micro, device, out_f, status)
    t0 = time.perf_counter()
    d_params = None
    try:
        if discriminator is not None and plan.adversarial is not None:
            params, d_params = dp_sgd.train_gan(
                forward, discriminator, job.weights, job.discriminator_weights or {}, x, y,
                cfg, plan.adversarial.weight, device)
        else:
            params = dp_sgd.train(forward, job.weights, x, y, cfg, device)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        traceback.print_exc()
        return status(False, "oom")
    except Exception:
        traceback.print_exc()
        return status(False, "forward")
    train_seconds = time.perf_counter() - t0
    save_output(out_f, params, d_params)
    status(True, device=device.type, train_seconds=round(train_seconds, 3))
    print(f"run took {time.perf_counter() - t_start:.3f} s: job {t_loaded - t_start:.3f}, "
          f"graph {t_checked - t_loaded:.3f}, data {t0 - t_checked:.3f}, "
          f"training {train_seconds:.3f}, output {time.perf_counter() - t0 - train_seconds:.3f}",
          file=sys.stderr)


def _score(forward, job: Job, plan: TrainingPlan, x: torch.Tensor, y: torch.Tensor,  # noqa: ANN001
           micro: int, device: torch.device, out_f: BinaryIO, status) -> None:  # noqa: ANN001
    """The audit's run: each sample's loss under the job's weights (the graph as trained,
    dropout included)."""
    weights = {k: v.to(device=device, dtype=torch.float32) for k, v in job.weights.items()}
    try:
        losses = dp_sgd.per_sample_losses(forward, weights, dp_sgd.LOSSES[plan.loss],
                                          x.to(device), y.to(device), micro)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        traceback.print_exc()
        return status(False, "oom")
    except Exception:
        traceback.print_exc()
        return status(False, "forward")
    save_losses(out_f, losses.cpu())
    status(True, device=device.type)


def warm_up_graph() -> Graph:
    """A made-up small 3D CNN (conv, group norm, relu, pooling, linear): the ops most plans
    use, so that their kernels' first-call costs are paid before the seal, not in a round."""
    def node(name: str, op: str, *args: object) -> Node:
        return Node(name=name, op=f"aten.{op}", args=list(args))

    return Graph(
        input_shape=[1, 2, 4, 4, 4],
        params=[ParamSpec(name="conv.weight", shape=[4, 2, 3, 3, 3]),
                ParamSpec(name="conv.bias", shape=[4]),
                ParamSpec(name="norm.weight", shape=[4]), ParamSpec(name="norm.bias", shape=[4]),
                ParamSpec(name="head.weight", shape=[1, 4]),
                ParamSpec(name="head.bias", shape=[1])],
        nodes=[node("conv", "conv3d.default", Ref(t="input"), Ref(t="param:conv.weight"),
                    Ref(t="param:conv.bias"), [2, 2, 2], [1, 1, 1]),
               node("norm", "group_norm.default", Ref(t="conv"), 2,
                    Ref(t="param:norm.weight"), Ref(t="param:norm.bias"), 1e-05, False),
               node("relu", "relu.default", Ref(t="norm")),
               node("pool", "adaptive_avg_pool3d.default", Ref(t="relu"), [1, 1, 1]),
               node("flat", "view.default", Ref(t="pool"), [1, 4]),
               node("out", "linear.default", Ref(t="flat"), Ref(t="param:head.weight"),
                    Ref(t="param:head.bias"))],
        output=Ref(t="out"))


def _warm_up() -> None:
    """One DP-SGD step over a made-up graph: torch.func imports most of torch._dynamo on
    first use (about 2 s on 2 cores) and the first conv under vmap sets up its kernels;
    better before the run, and before the seal."""
    graph, _ = check.validate(warm_up_graph().canonical_json(), loss="bce_with_logits",
                              max_parameters=1000)
    forward = compile_graph(graph)
    params = {p.name: torch.zeros(p.shape) for p in graph.params}
    grads = dp_sgd.per_sample_gradients(forward, params, dp_sgd.LOSSES["bce_with_logits"],
                                        torch.zeros(2, 2, 4, 4, 4), torch.zeros(2))
    dp_sgd.add_noise(dp_sgd.clip_and_sum(grads, 1.0), 1.0)  # and the CSPRNG


def prepare() -> None:
    """Everything before the seal. Subnormal arithmetic is many times slower on CPUs: a
    graph could make the round's time depend on how many voxels cross a threshold (red
    team, issue 14). The flush is per thread and new threads take it from the one that
    starts them: set first, before the warm-up starts torch's worker threads (set after
    it, the workers kept subnormals). Not at import: importing this module must not change
    the importing process's arithmetic."""
    torch.set_flush_denormal(True)
    _warm_up()


def main() -> int:
    prepare()
    sealed = confine.seal()
    print(f"training child {os.getpid()} sealed: {sealed.model_dump_json()}", file=sys.stderr)
    try:
        _, fds = channel.receive(channel.stdin_socket(), max_fds=len(RUN_FILES))
    except EOFError:  # the server went away without a run: nothing to do
        return 0
    if len(fds) != len(RUN_FILES):
        print(f"run came with {len(fds)} files, expected {len(RUN_FILES)}", file=sys.stderr)
        return 1
    files = [os.fdopen(fd, "r+b") for fd in fds]
    print(f"training child {os.getpid()} takes a run", file=sys.stderr)
    try:
        run(*files)
    except Exception:
        traceback.print_exc()
        RunStatus(ok=False, category="internal").save(files[3])
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the output and status are flushed; skip torch's slow teardown
