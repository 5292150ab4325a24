"""DP-SGD step cost: the site runtime's DP-SGD against a plain PyTorch step (and Opacus).

Same 3D CNN (researcher/examples/small_cnn3d.py), same input size, same batch:

* plain    - forward, mean loss, backward, SGD step (no privacy);
* plain_micro - the same, in the micro-batches the runtime uses, gradients
             accumulated: shows how much of a difference is micro-batching alone;
* eager_vmap - `sites.sandbox.dp_sgd.train` for one step at sample rate 1 (so the batch
             is exactly B) over the model itself (`functional_call`): per-sample
             gradients with torch.func.vmap, clipping, Gaussian noise, SGD on the
             runtime's own copy of the parameters (how the site trained before issue 14);
* graph    - the same step over the model's validated training graph
             (`sites.graph`), which is what a site runs now; its ratio to eager_vmap
             is the cost of never running researcher Python (goal: at most 1.05);
* opacus   - Opacus GradSampleModule + DPOptimizer, the usual reference point.

Step times are measured alternating the three in one process (median of the
rounds). Peak memory is per step, after a first step that pays one-off costs
(reported apart): on CUDA torch.cuda.max_memory_allocated; on CPU the growth
of peak RSS, each variant in its own subprocess with a fixed glibc mmap
threshold so that freed tensors leave RSS. Prints ratios to plain (and graph to
eager_vmap), writes JSON.

    python benchmarks/dp_step.py            # CPU (and CUDA if present), 24^3 and 48^3, B=48
    python benchmarks/dp_step.py --full     # also 64^3, more rounds
    python benchmarks/dp_step.py --model unet --sizes 64,96 --batch 8
                                            # the segmentation U-Net (small_unet3d.py, Dice+CE
                                            # per sample, 1 input channel): the hard case of
                                            # per-sample gradients, written to dp_step_unet.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import int_list, write_result  # noqa: E402
from sites.graph import check  # noqa: E402
from sites.graph.execute import compile_graph  # noqa: E402
from sites.graph.export import trace  # noqa: E402
from sites.sandbox.dp_sgd import DPConfig, micro_batch_size, train  # noqa: E402

VARIANTS = ("plain", "plain_micro", "eager_vmap", "graph", "opacus")
#: model kind -> (example file, class, constructor kwargs, input channels, site loss)
MODELS = {
    "cnn": ("small_cnn3d.py", "SmallCNN3D", {"in_channels": 2}, 2, "bce_with_logits"),
    "unet": ("small_unet3d.py", "SmallUNet3D", {"in_channels": 1, "out_channels": 3,
                                                "width": 8}, 1, "dice_ce"),
}


def make_model(kind: str = "cnn") -> nn.Module:
    source, name, kwargs, _, _ = MODELS[kind]
    ns = {"torch": torch, "nn": nn, "F": F}
    exec(compile((ROOT / "researcher/examples" / source).read_text(), source, "exec"), ns)
    return ns[name](**kwargs)


def _mean_loss(kind: str, out: torch.Tensor, y: torch.Tensor, total: int) -> torch.Tensor:
    """The site loss summed over the samples and divided by `total` (mean over a batch)."""
    if kind == "cnn":
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y, reduction="sum") / total
    from sites.sandbox.losses import dice_ce

    return sum(dice_ce(out[i:i + 1], y[i]) for i in range(len(y))) / total


class Runner:
    """Holds model, data and optimiser state for one variant; `step()` runs one step."""

    def __init__(self, variant: str, size: int, batch: int, device: torch.device,
                 kind: str = "cnn") -> None:
        torch.manual_seed(0)
        self.variant, self.device, self.kind = variant, device, kind
        channels, loss = MODELS[kind][3], MODELS[kind][4]
        self.model = make_model(kind).to(device)
        self.x = torch.randn(batch, channels, size, size, size, device=device)
        if kind == "cnn":
            self.y = (torch.rand(batch, device=device) < 0.5).float()
        else:
            self.y = torch.randint(0, 3, (batch, size, size, size), device=device)
        self.micro = micro_batch_size(self.x[0].numel(), device)
        if variant in ("plain", "plain_micro"):
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        elif variant == "opacus":
            from opacus import GradSampleModule
            from opacus.optimizers import DPOptimizer

            self.gsm = GradSampleModule(self.model)
            self.opt = DPOptimizer(torch.optim.SGD(self.gsm.parameters(), lr=0.1),
                                   noise_multiplier=1.0, max_grad_norm=1.0,
                                   expected_batch_size=batch)
        else:
            self.theta = {k: v.detach().clone() for k, v in self.model.named_parameters()}
            if variant == "graph":
                shape = [1, *self.x.shape[1:]]
                graph, _ = check.validate(trace(self.model, shape).canonical_json(),
                                          loss=loss, max_parameters=10**8)
                self.forward = compile_graph(graph)
            else:
                model = self.model
                self.forward = lambda p, x: functional_call(model, p, (x,))
            self.cfg = DPConfig(sample_rate=1.0, noise_multiplier=1.0, max_grad_norm=1.0,
                                steps=1, loss=loss)  # the runtime's own micro-batch choice

    def step(self) -> None:
        if self.variant == "plain":
            self.opt.zero_grad(set_to_none=True)
            _mean_loss(self.kind, self.model(self.x), self.y, len(self.y)).backward()
            self.opt.step()
        elif self.variant == "plain_micro":  # the same micro-batches, gradients accumulated
            self.opt.zero_grad(set_to_none=True)
            n = self.x.shape[0]
            for i in range(0, n, self.micro):
                out = self.model(self.x[i:i + self.micro])
                _mean_loss(self.kind, out, self.y[i:i + self.micro], n).backward()
            self.opt.step()
        elif self.variant == "opacus":
            self.opt.zero_grad(set_to_none=True)
            _mean_loss(self.kind, self.gsm(self.x), self.y, len(self.y)).backward()
            self.opt.step()
        else:
            self.theta = train(self.forward, self.theta, self.x, self.y, self.cfg,
                               self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def time_steps(size: int, batch: int, device: torch.device, rounds: int, steps: int,
               kind: str = "cnn") -> dict:
    runners = {v: Runner(v, size, batch, device, kind) for v in VARIANTS}
    for r in runners.values():  # warm-up (allocator, kernels, vmap tracing)
        r.step()
        r.step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for v, r in runners.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                r.step()
            times[v].append((time.perf_counter() - t0) / steps)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_memory_cuda(variant: str, size: int, batch: int, kind: str = "cnn"
                     ) -> dict[str, float]:
    """Peak tensor memory (MiB) above what is allocated before: first step, then 3 more."""
    torch.cuda.empty_cache()
    r = Runner(variant, size, batch, torch.device("cuda"), kind)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r.step()
    first = (torch.cuda.max_memory_allocated() - base) / 2**20
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        r.step()
    return {"first": first, "steady": (torch.cuda.max_memory_allocated() - base) / 2**20}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_cpu_child(variant: str, size: int, batch: int, kind: str = "cnn"
                          ) -> dict[str, float]:
    """Run in a fresh process: peak RSS growth (MiB) of the first step, then of 3 more.

    Linux lets a process reset its peak RSS (VmHWM) by writing 5 to
    /proc/self/clear_refs, so import-time peaks do not hide the step's own. The
    parent starts this process with a fixed glibc mmap threshold, so every
    tensor is its own mapping and is returned to the kernel when freed: RSS then
    follows live memory, not what the allocator keeps cached from earlier steps.
    "first" includes one-off costs (torch.func and Opacus import code on their
    first call); "steady" is the per-step peak that the goal is about.
    """
    r = Runner(variant, size, batch, torch.device("cpu"), kind)
    out = {}
    for key, steps in (("first", 1), ("steady", 3)):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        for _ in range(steps):
            r.step()
        out[key] = (_status_kib("VmHWM") - base) / 1024
    return out


def peak_memory_cpu(variant: str, size: int, batch: int, kind: str = "cnn") -> dict[str, float]:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); "
            "import warnings; warnings.filterwarnings('ignore'); "
            "from benchmarks.dp_step import peak_memory_cpu_child as f; "
            f"print(json.dumps(f({variant!r}, {size}, {batch}, {kind!r})))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(device: torch.device, size: int, batch: int, rounds: int, steps: int,
            kind: str = "cnn") -> dict:
    t = time_steps(size, batch, device, rounds, steps, kind)
    if device.type == "cuda":
        mem = {v: peak_memory_cuda(v, size, batch, kind) for v in VARIANTS}
    else:
        mem = {v: peak_memory_cpu(v, size, batch, kind) for v in VARIANTS}
    steady = {v: mem[v]["steady"] for v in VARIANTS}
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    return {
        "device": device.type, "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(), "input": [MODELS[kind][3], size, size, size],
        "micro_batch": micro_batch_size(MODELS[kind][3] * size ** 3, device),
        "step_ms": {v: round(t[v] * 1e3, 2) for v in VARIANTS},
        "peak_mib": {v: round(steady[v], 1) for v in VARIANTS},
        "first_step_peak_mib": {v: round(mem[v]["first"], 1) for v in VARIANTS},
        "time_ratio": {v: round(t[v] / t["plain"], 3) for v in VARIANTS},
        "graph_to_eager_vmap": round(t["graph"] / t["eager_vmap"], 3),
        "memory_ratio": {v: round(steady[v] / max(steady["plain"], 1e-9), 3) for v in VARIANTS},
    }


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="Full backward hook")  # Opacus with frozen inputs
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also 64^3 volumes, more rounds")
    ap.add_argument("--sizes", type=int_list, default=None,
                    help="comma-separated volume edges (default 24,48; --full 24,48,64)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--model", choices=sorted(MODELS), default="cnn",
                    help="cnn: the classifier (SmallCNN3D); unet: the segmentation U-Net")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (median)")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default results/dp_step.json, dp_step_unet.json for --model "
                         "unet)")
    args = ap.parse_args(argv)
    args.out = args.out or (Path(__file__).parent / "results"
                            / ("dp_step.json" if args.model == "cnn" else "dp_step_unet.json"))
    sizes = args.sizes or ([24, 48, 64] if args.full else [24, 48])
    rounds, steps = (7, 3) if args.full else (5, 3)
    if args.rounds:
        rounds, steps = args.rounds, 1
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    results = []
    for d in devices:
        for size in sizes:
            print(f"measuring {d.type} {MODELS[args.model][3]}x{size}^3 ...", flush=True)
            results.append(measure(d, size, args.batch, rounds, steps, args.model))
    print(f"dp_step: {MODELS[args.model][1]}, batch {args.batch}; peak memory is the steady "
          "per-step peak")
    print(f"{'device':8} {'input':>6} {'micro':>5} {'variant':11} {'ms/step':>9} {'x plain':>8} "
          f"{'peak MiB':>9} {'x plain':>8} {'1st step MiB':>12}")
    for r in results:
        for v in VARIANTS:
            print(f"{r['device']:8} {r['input'][1]:>4}^3 {r['micro_batch']:>5} {v:11} "
                  f"{r['step_ms'][v]:>9.2f} {r['time_ratio'][v]:>8.3f} {r['peak_mib'][v]:>9.1f} "
                  f"{r['memory_ratio'][v]:>8.3f} {r['first_step_peak_mib'][v]:>12.1f}")
        print(f"{r['device']:8} {r['input'][1]:>4}^3 graph / eager_vmap = "
              f"{r['graph_to_eager_vmap']:.3f} (goal <= 1.05)")
    write_result("dp_step", {"batch": args.batch, "model": MODELS[args.model][1],
                             "goals": {"time_ratio": 1.15, "memory_ratio": 1.3,
                                       "graph_to_eager_vmap": 1.05},
                             "results": results}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
