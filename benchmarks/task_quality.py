"""Imaging-task quality under privacy: pooled vs single site vs FedAvg vs FedAvg + DP-SGD.

The three demo hospitals' non-IID synthetic cohorts with lesions (researcher/demo.py:
sizes, seeds, scanner profiles, the 16³ task grid), times `--fraction`, and one pooled
test set from the same three profiles (other seeds). The plan is the task's example
(researcher/examples: segment.yaml, synthesize.yaml, gan.yaml: a small 3D U-Net, batch
48, 2 local epochs, 4 rounds, δ 1e-5, C 1). The networks run as the sites run them: the
traced, validated graph (`sites.graph`), the site's losses (`sites.sandbox.losses`) and,
for DP, the site's DP-SGD (`sites.sandbox.dp_sgd.train` / `train_gan`, σ from
`policies.contract.privacy` so the whole plan meets ε at δ, a GAN's two updates per
iteration counted). Settings:

* pooled       - centralised, no DP: the three cohorts in one, rounds × epochs epochs;
* local:NAME   - each site alone, no DP, the same epochs;
* fedavg       - FedAvg without DP, `rounds` rounds of `epochs` local epochs;
* fedavg_dp:ε  - FedAvg where each site runs the site's DP-SGD, for ε in 8 and 3.

Non-DP settings use the plan's optimizer at batch `--plain-batch` (16); DP settings the
plan's Poisson batch. Reports Dice (segment) or MAE / PSNR / SSIM (synthesize, gan) on
the test set (`researcher.evaluate.evaluate_task`), the gaps to pooled, the best single
site, and writes JSON and a PNG. No datasite is started (round_overhead.py measures those).

    python benchmarks/task_quality.py --task segment
    python benchmarks/task_quality.py --task synthesize --misalign 0.3
    python benchmarks/task_quality.py --task gan --misalign 0.3 --fraction 0.25
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_result  # noqa: E402
from datasets.cohort import Cohort  # noqa: E402
from datasets.synthetic import DEMO_PROFILES, generate_cohort  # noqa: E402
from policies.contract.model_code import build_model  # noqa: E402
from policies.contract.plan import TrainingPlan, load_plan  # noqa: E402
from policies.contract.privacy import Accounting, derive_noise_multiplier, run_shape  # noqa: E402
from researcher.aggregate import FedAvg  # noqa: E402
from researcher.demo import HOSPITALS, TASK_GRID, TASK_PLANS  # noqa: E402
from researcher.evaluate import evaluate_task, load_params  # noqa: E402
from researcher.federation import initial_discriminator, initial_weights  # noqa: E402
from sites.graph import check  # noqa: E402
from sites.graph.execute import compile_graph  # noqa: E402
from sites.graph.export import trace  # noqa: E402
from sites.sandbox import dp_sgd, losses  # noqa: E402

EPSILONS = (8.0, 3.0)
Params = dict[str, np.ndarray]
#: the metric each task is judged by, and whether higher is better
HEADLINE = {"segment": ("dice", True), "synthesize": ("psnr", True), "gan": ("psnr", True)}


class Nets:
    """The plan's generator (and discriminator) as the site runs them: traced graphs."""

    def __init__(self, plan: TrainingPlan, grid: tuple[int, int, int]) -> None:
        shape = [1, plan.in_channels, *grid]
        g = check.validate(trace(build_model(plan.model), shape).canonical_json(),
                           loss=plan.loss, max_parameters=10**8)[0]
        self.g = compile_graph(g)
        self.d = None
        if plan.adversarial is not None:
            d_shape = [1, plan.in_channels + 1, *grid]
            d = check.validate(trace(build_model(plan.adversarial.discriminator),
                                     d_shape).canonical_json(),
                               loss=check.DISCRIMINATOR, max_parameters=10**8)[0]
            self.d = compile_graph(d)
        self.module = build_model(plan.model)  # for the researcher's metrics


def _tensors(c: Cohort, plan: TrainingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(c.stacked(list(plan.inputs))),
            torch.from_numpy(c.target(plan.target)))


def _leaves(p: Params) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}


def _optimizer(plan: TrainingPlan, leaves: list[torch.Tensor]) -> torch.optim.Optimizer:
    if plan.optimizer == "adam":
        return torch.optim.Adam(leaves, lr=plan.learning_rate)
    return torch.optim.SGD(leaves, lr=plan.learning_rate, momentum=plan.momentum)


def _mean_loss(fn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return torch.stack([fn(out[i:i + 1], y[i]) for i in range(len(y))]).mean()


def _batched(net, params: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """A graph traced for one sample, over a batch (vmap, as the site's DP-SGD runs it)."""
    return torch.func.vmap(lambda xi: net(params, xi.unsqueeze(0)).squeeze(0))(xb)


def _paired(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: the inputs and one target volume as channels."""
    return torch.cat([x, target.reshape(x.shape[0], 1, *x.shape[2:]).to(x.dtype)], dim=1)


def train_plain(nets: Nets, plan: TrainingPlan, start: tuple[Params, Params], x, y,
                epochs: int, batch: int, seed: int) -> tuple[Params, Params]:
    """Minibatch training without DP (a GAN: one D step, then one G step, per batch)."""
    g, d = _leaves(start[0]), _leaves(start[1])
    g_opt = _optimizer(plan, list(g.values()))
    d_opt = _optimizer(plan, list(d.values())) if d else None
    loss_fn = losses.LOSSES[plan.loss]
    weight = plan.adversarial.weight if plan.adversarial else 0.0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            xb, yb = x[perm[i:i + batch]], y[perm[i:i + batch]]
            if d_opt is not None:
                real_in = _paired(xb, yb)
                fake_in = _paired(xb, _batched(nets.g, g, xb).detach())
                d_loss = losses.discriminator_loss(_batched(nets.d, d, real_in),
                                                   _batched(nets.d, d, fake_in))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            out = _batched(nets.g, g, xb)
            loss = _mean_loss(loss_fn, out, yb)
            if d_opt is not None:
                fake = _batched(nets.d, d, _paired(xb, out))
                loss = loss + weight * losses.generator_adversarial(fake)
            g_opt.zero_grad(set_to_none=True)
            loss.backward()
            g_opt.step()
    return ({k: v.detach().numpy().copy() for k, v in g.items()},
            {k: v.detach().numpy().copy() for k, v in d.items()})


def train_dp(nets: Nets, plan: TrainingPlan, start: tuple[Params, Params], x, y,
             sigma: float, seed: int) -> tuple[Params, Params]:
    """One site's round as the site runs it: the site's DP-SGD at the plan's batch."""
    shape = run_shape(len(x), plan.batch_size, plan.local_epochs)  # iterations
    cfg = dp_sgd.DPConfig(sample_rate=shape.sample_rate, noise_multiplier=sigma,
                          max_grad_norm=plan.dp.max_grad_norm, steps=shape.steps,
                          loss=plan.loss, optimizer=plan.optimizer,
                          learning_rate=plan.learning_rate, momentum=plan.momentum,
                          micro_batch=16, expected_batch=shape.sample_rate * len(x))
    g0 = {k: torch.from_numpy(v) for k, v in start[0].items()}
    if nets.d is None:
        out = dp_sgd.train(nets.g, g0, x, y, cfg, torch.device("cpu"))
        return {k: v.numpy() for k, v in out.items()}, {}
    d0 = {k: torch.from_numpy(v) for k, v in start[1].items()}
    g, d = dp_sgd.train_gan(nets.g, nets.d, g0, d0, x, y, cfg, plan.adversarial.weight,
                            torch.device("cpu"))
    return {k: v.numpy() for k, v in g.items()}, {k: v.numpy() for k, v in d.items()}


def run(plan: TrainingPlan, sites: dict[str, Cohort], test: Cohort, plain_batch: int,
        seed: int, log) -> dict[str, dict[str, float]]:  # noqa: ANN001
    nets = Nets(plan, test.volume_shape)
    init = (initial_weights(plan, seed),
            {k.split("/", 1)[1]: v for k, v in initial_discriminator(plan, seed).items()})
    data = {k: _tensors(c, plan) for k, c in sites.items()}
    epochs = plan.rounds * plan.local_epochs

    def score(params: tuple[Params, Params]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in
                evaluate_task(load_params(nets.module, params[0]), test, plan).items()}

    out: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    x = torch.cat([d[0] for d in data.values()])
    y = torch.cat([d[1] for d in data.values()])
    out["pooled"] = score(train_plain(nets, plan, init, x, y, epochs, plain_batch, seed))
    log(f"  pooled {out['pooled']} ({time.perf_counter() - t:.0f} s)")
    for name, (xs, ys) in data.items():
        out[f"local:{name}"] = score(train_plain(nets, plan, init, xs, ys, epochs,
                                                 plain_batch, seed))
        log(f"  local:{name} {out[f'local:{name}']}")

    def federate(local) -> dict[str, float]:  # noqa: ANN001
        theta = init[0]
        kept = {name: init[1] for name in data}  # each site's own D: never averaged
        for r in range(plan.rounds):
            results = []
            for name, (xs, ys) in data.items():
                g, kept[name] = local(name, (theta, kept[name]), xs, ys, seed * 100 + r)
                results.append((len(xs), g))
            theta = FedAvg().aggregate(results)
        return score((theta, {}))

    out["fedavg"] = federate(lambda _n, st, xs, ys, s: train_plain(
        nets, plan, st, xs, ys, plan.local_epochs, plain_batch, s))
    log(f"  fedavg {out['fedavg']}")
    for eps in EPSILONS:
        sigmas = {name: derive_noise_multiplier(
            eps, plan.dp.delta, run_shape(len(xs), plan.batch_size, plan.local_epochs,
                                          plan.updates_per_step),
            plan.rounds, Accounting("pld", "replace_one", n=len(xs)))
            for name, (xs, _) in data.items()}
        out[f"fedavg_dp:{eps:g}"] = federate(lambda n, st, xs, ys, s, sig=sigmas: train_dp(
            nets, plan, st, xs, ys, sig[n], s))
        log(f"  fedavg DP ε={eps:g} (σ {', '.join(f'{v:.2f}' for v in sigmas.values())}) "
            f"{out[f'fedavg_dp:{eps:g}']}")
    return out


def plot(task: str, results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, _ = HEADLINE[task]
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(names)), [results[k][metric] for k in names],
           color=["k" if k == "pooled" else "grey" if k.startswith("local") else "C0"
                  for k in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} on the pooled test set")
    ax.set_title(f"{task}: pooled, single sites, FedAvg, FedAvg + DP-SGD (ε per site)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(HEADLINE), required=True)
    ap.add_argument("--misalign", type=float, default=0.0,
                    help="move each PET against its MRI (0 to 1; synthesis)")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="each site's cohort as a share of the demo's (smaller: faster)")
    ap.add_argument("--test-n", type=int, default=40, help="test subjects per site profile")
    ap.add_argument("--plain-batch", type=int, default=16, help="batch of the non-DP runs")
    ap.add_argument("--rounds", type=int, default=None, help="override the plan's rounds")
    ap.add_argument("--local-epochs", type=int, default=None,
                    help="override the plan's local epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/task_<task>[_misaligned].json)")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 4:
        ap.error("--fraction must be in (0, 4]")
    if not 0 <= args.misalign <= 1:
        ap.error("--misalign must be in [0, 1]")
    out = args.out or (Path(__file__).parent / "results"
                       / f"task_{args.task}{'_misaligned' if args.misalign else ''}.json")
    if args.rounds is not None and args.rounds < 1 or \
            args.local_epochs is not None and args.local_epochs < 1:
        ap.error("--rounds and --local-epochs must be at least 1")
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plan = load_plan(ROOT / "researcher" / "examples" / TASK_PLANS[args.task])
    plan = plan.model_copy(update={k: v for k, v in (("rounds", args.rounds),
                                                     ("local_epochs", args.local_epochs))
                                   if v is not None})
    cohort = dict(shape=TASK_GRID, lesions=True, misalign=args.misalign)
    sites = {name: generate_cohort(max(16, round(n * args.fraction)), seed=seed,
                                   profile=DEMO_PROFILES[name], **cohort)
             for name, n, seed in HOSPITALS}
    parts = [generate_cohort(args.test_n, seed=seed + 1000, profile=DEMO_PROFILES[name],
                             **cohort) for name, _, seed in HOSPITALS]
    test = Cohort(volumes={m: np.concatenate([p.volumes[m] for p in parts])
                           for m in parts[0].volumes},
                  labels=np.concatenate([p.labels for p in parts]),
                  masks=np.concatenate([p.masks for p in parts]),
                  meta=parts[0].meta)
    print(f"task_quality {args.task}: sites {', '.join(f'{k} n={c.n}' for k, c in sites.items())}"
          f"; test n={test.n}; misalign {args.misalign}", flush=True)
    results = run(plan, sites, test, args.plain_batch, args.seed,
                  lambda m: print(m, flush=True))
    metric, higher = HEADLINE[args.task]
    pooled = results["pooled"][metric]
    locals_ = {k: v[metric] for k, v in results.items() if k.startswith("local:")}
    best_local = max(locals_.values()) if higher else min(locals_.values())
    gaps = {k: round(abs(v[metric] - pooled), 4) for k, v in results.items()
            if k.startswith("fedavg")}
    beats_local = {k: (v[metric] > best_local) == higher for k, v in results.items()
                   if k.startswith("fedavg")}
    print(f"{'setting':16} " + " ".join(f"{m:>7}" for m in results["pooled"]))
    for k, v in results.items():
        print(f"{k:16} " + " ".join(f"{x:>7.3f}" for x in v.values())
              + (f"   |Δ pooled| {gaps[k]:.3f}" if k in gaps else ""))
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(args.task, results, png)
    doc = write_result(f"task_quality_{args.task}", {
        "task": args.task, "misalign": args.misalign, "fraction": args.fraction,
        "grid": list(TASK_GRID), "sites": {k: c.n for k, c in sites.items()},
        "test_n": test.n, "seed": args.seed, "plain_batch": args.plain_batch,
        "plan": {"batch_size": plan.batch_size, "local_epochs": plan.local_epochs,
                 "rounds": plan.rounds, "delta": plan.dp.delta, "loss": plan.loss,
                 "max_grad_norm": plan.dp.max_grad_norm,
                 "adversarial_weight": plan.adversarial.weight if plan.adversarial else None},
        "headline": metric,
        "goals": {"segment": {"fedavg": 0.02, "fedavg_dp:8": 0.05},
                  "synthesize_psnr_db": {"fedavg": 0.5, "fedavg_dp:8": 1.5}},
        "metrics": results, "gap_to_pooled": gaps, "best_single_site": best_local,
        "fedavg_beats_best_single_site": beats_local,
        "seconds": round(time.perf_counter() - t0, 1)}, out)
    print(f"wrote {out} and {png} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
