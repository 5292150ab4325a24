"""Learning quality under privacy: pooled vs local vs FedAvg vs FedAvg with DP-SGD.

The three demo hospitals' synthetic non-IID cohorts (researcher/demo.py: sizes,
seeds and scanner profiles) and one pooled test set drawn from the same three
profiles (held out, other seeds). The model and the DP plan are the demo's
(researcher/examples: SmallCNN3D, batch 48, 3 local epochs, 4 rounds, δ 1e-5,
C 1). Settings:

* pooled      - centralised, no DP: all three cohorts in one, rounds × epochs epochs;
* local:NAME  - each site alone, no DP, same epochs;
* fedavg      - FedAvg without DP, `rounds` rounds of `epochs` local epochs;
* fedavg_dp:ε - FedAvg where each site runs the site runtime's DP-SGD
                (`sites.sandbox.dp_sgd.train`, σ from `policies.contract.privacy` so the whole plan
                meets ε at δ), for ε in 1, 3, 8.

Non-DP settings use SGD with momentum (lr 0.05, momentum 0.9); DP settings use the
plan's SGD at lr 0.5 (the DP gradient is the clipped, noised sum over the expected
batch). Reports AUC on the pooled test set per setting, the gaps |FED − pooled|,
saves a PNG of AUC against ε, writes JSON. Training here runs in-process on the
same code the sites run; no datasites are started (that is round_overhead.py).

    python benchmarks/quality.py            # 1 seed
    python benchmarks/quality.py --full     # 3 seeds, mean and spread
    python benchmarks/quality.py --full --scale 4 --out benchmarks/results/quality_x4.json
                                            # each site's cohort 4 times larger
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_result  # noqa: E402
from datasets.cohort import Cohort  # noqa: E402
from datasets.synthetic import DEMO_PROFILES, generate_cohort  # noqa: E402
from policies.contract.plan import load_plan  # noqa: E402
from policies.contract.privacy import (  # noqa: E402
    Accounting,
    derive_noise_multiplier,
    run_shape,
)
from researcher.aggregate import FedAvg  # noqa: E402
from researcher.demo import HOSPITALS  # noqa: E402
from researcher.evaluate import evaluate, load_params  # noqa: E402
from sites.sandbox.dp_sgd import DPConfig, train  # noqa: E402

EPSILONS = (1.0, 3.0, 8.0)
Params = dict[str, np.ndarray]


def model_factory(plan) -> nn.Module:
    ns = {"torch": torch, "nn": nn, "F": F, "math": __import__("math")}
    exec(compile(plan.model.source, "model", "exec"), ns)
    return ns[plan.model.class_name](**plan.model.kwargs)


def tensors(c: Cohort, inputs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(c.stacked(inputs)), torch.from_numpy(c.labels).float()


def train_plain(model: nn.Module, start: Params, x, y, epochs: int, batch: int,
                seed: int) -> Params:
    load_params(model, start)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(x[idx]).reshape(-1), y[idx]).backward()
            opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def train_dp(model: nn.Module, start: Params, x, y, plan, sigma: float, seed: int) -> Params:
    shape = run_shape(len(x), plan.batch_size, plan.local_epochs)
    cfg = DPConfig(sample_rate=shape.sample_rate, noise_multiplier=sigma,
                   max_grad_norm=plan.dp.max_grad_norm, steps=shape.steps,
                   optimizer=plan.optimizer, learning_rate=plan.learning_rate,
                   momentum=plan.momentum, micro_batch=64)
    def forward(params: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (xb,))

    out = train(forward, {k: torch.from_numpy(v) for k, v in start.items()}, x, y, cfg,
                torch.device("cpu"))
    return {k: v.numpy() for k, v in out.items()}


def auc_of(model: nn.Module, params: Params, test: Cohort, inputs: list[str]) -> float:
    return evaluate(load_params(model, params), test, inputs)[0]


def run_seed(seed: int, plan, sites: dict[str, Cohort], test: Cohort, log) -> dict[str, float]:
    inputs = list(plan.inputs)
    torch.manual_seed(seed)
    model = model_factory(plan)
    init = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    data = {k: tensors(c, inputs) for k, c in sites.items()}
    epochs = plan.rounds * plan.local_epochs
    out: dict[str, float] = {}

    x = torch.cat([d[0] for d in data.values()])
    y = torch.cat([d[1] for d in data.values()])
    out["pooled"] = auc_of(model, train_plain(model, init, x, y, epochs, plan.batch_size, seed),
                           test, inputs)
    log(f"  seed {seed}: pooled {out['pooled']:.3f}")
    for name, (xs, ys) in data.items():
        p = train_plain(model, init, xs, ys, epochs, plan.batch_size, seed)
        out[f"local:{name}"] = auc_of(model, p, test, inputs)
    log("  " + ", ".join(f"{k} {v:.3f}" for k, v in out.items() if k.startswith("local")))

    def federate(local) -> float:
        theta = init
        for r in range(plan.rounds):
            results = [(len(xs), local(name, theta, xs, ys, seed * 100 + r))
                       for name, (xs, ys) in data.items()]
            theta = FedAvg().aggregate(results)
        return auc_of(model, theta, test, inputs)

    out["fedavg"] = federate(lambda _n, th, xs, ys, s: train_plain(
        model, th, xs, ys, plan.local_epochs, plan.batch_size, s))
    log(f"  fedavg {out['fedavg']:.3f}")
    for eps in EPSILONS:
        sigmas = {name: derive_noise_multiplier(
            eps, plan.dp.delta, run_shape(len(xs), plan.batch_size, plan.local_epochs),
            plan.rounds, Accounting("pld", "replace_one", n=len(xs)))
            for name, (xs, _) in data.items()}
        out[f"fedavg_dp:{eps:g}"] = federate(lambda n, th, xs, ys, s, sig=sigmas: train_dp(
            model, th, xs, ys, plan, sig[n], s))
        log(f"  fedavg DP ε={eps:g} (σ {', '.join(f'{s:.2f}' for s in sigmas.values())}) "
            f"{out[f'fedavg_dp:{eps:g}']:.3f}")
    return out


def plot(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    eps = list(EPSILONS)
    mean = [summary[f"fedavg_dp:{e:g}"]["mean"] for e in eps]
    sd = [summary[f"fedavg_dp:{e:g}"]["sd"] for e in eps]
    ax.errorbar(eps, mean, yerr=sd, marker="o", label="FedAvg + DP-SGD")
    for key, style in (("pooled", "k--"), ("fedavg", "b:")):
        ax.axhline(summary[key]["mean"], linestyle=style[1:], color=style[0],
                   label=f"{key} (no DP)")
    local = statistics.mean(v["mean"] for k, v in summary.items() if k.startswith("local"))
    ax.axhline(local, linestyle="-.", color="grey", label="single site (mean, no DP)")
    ax.set_xscale("log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ε per site for the whole plan (δ = 1e-5)")
    ax.set_ylabel("AUC on pooled test set")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="3 seeds instead of 1")
    ap.add_argument("--test-n", type=int, default=120, help="test subjects per site profile")
    ap.add_argument("--scale", type=int, default=1,
                    help="multiply each site's cohort size (same profiles): how the DP gap "
                         "shrinks with more subjects per site")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plan = load_plan(ROOT / "researcher/examples/plan.yaml")
    if args.scale < 1:
        ap.error("--scale must be at least 1")
    sites = {name: generate_cohort(n * args.scale, seed=seed, profile=DEMO_PROFILES[name])
             for name, n, seed in HOSPITALS}
    parts = [generate_cohort(args.test_n, seed=seed + 1000, profile=DEMO_PROFILES[name])
             for name, _, seed in HOSPITALS]
    test = Cohort(volumes={m: np.concatenate([p.volumes[m] for p in parts])
                           for m in parts[0].volumes},
                  labels=np.concatenate([p.labels for p in parts]))
    seeds = [0, 1, 2] if args.full else [0]
    print(f"quality: sites {', '.join(f'{k} n={c.n}' for k, c in sites.items())}; "
          f"test n={test.n}; seeds {seeds}", flush=True)
    runs = [run_seed(s, plan, sites, test, lambda m: print(m, flush=True)) for s in seeds]
    summary = {k: {"mean": round(statistics.mean(r[k] for r in runs), 4),
                   "sd": round(statistics.pstdev(r[k] for r in runs), 4)} for k in runs[0]}
    pooled = summary["pooled"]["mean"]
    gaps = {k: round(abs(v["mean"] - pooled), 4) for k, v in summary.items()
            if k.startswith("fedavg")}
    print(f"{'setting':16} {'AUC':>6} {'sd':>6} {'|Δ pooled|':>11}")
    for k, v in summary.items():
        gap = f"{gaps[k]:>11.3f}" if k in gaps else ""
        print(f"{k:16} {v['mean']:>6.3f} {v['sd']:>6.3f} {gap}")
    png = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(summary, png)
    doc = write_result("quality", {
        "sites": {k: c.n for k, c in sites.items()}, "scale": args.scale, "test_n": test.n,
        "seeds": seeds,
        "plan": {"batch_size": plan.batch_size, "local_epochs": plan.local_epochs,
                 "rounds": plan.rounds, "delta": plan.dp.delta,
                 "max_grad_norm": plan.dp.max_grad_norm},
        "goals": {"fedavg": 0.01, "fedavg_dp:8": 0.03},
        "auc": summary, "gap_to_pooled": gaps, "runs": runs,
        "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    print(f"wrote {args.out} and {png} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
