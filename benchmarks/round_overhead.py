"""Fixed cost of one federated round on real datasites, side by side with Flower and the
stdlib HTTP floor, and the weights' throughput.

Three systems, alternated configuration by configuration in one run, on the same
loopback and the same cores:

* **medsyft**: real syft 0.9.5 datasites (the product's own `lifecycle.up`), each with a
  researcher account, a small synthetic cohort and the plan approved in the console;
  rounds through the researcher's `Federation` exactly as `medsyft researcher run` does
  (the weights over each site's signed endpoint, syft carrying their digests). A round
  trains (DP-SGD at every site), so its fixed cost is `overhead` = round − training at
  the slowest site (read from the site's log, as its operator would);
* **Flower 1.42** (`start_server` / `start_client`, gRPC, FedAvg), in a virtual
  environment of its own that this benchmark creates (`benchmarks/.flower-venv`: its pins
  never touch the product's); its clients send the weights straight back, so a round is
  all overhead;
* **stdlib HTTP**: each site a `ThreadingHTTPServer` process that keeps a PUT body and
  GETs it back; the floor of moving the bytes in Python.

MB/s per site = the weights moved per site (out and back) over the fixed cost. Sizes of
about 1, 40 and 200 MB (the example CNN with a wide dense head) at 2 sites, and a tiny
model at 2 and 8 sites. The first round of each configuration warms caches and is not
counted; figures are medians over the rounds that follow, each with the 1-minute load
average when it was measured. Prints a table and writes JSON.

    python benchmarks/round_overhead.py            # 1 and 40 MB; 2 sites
    python benchmarks/round_overhead.py --full     # 1, 40, 200 MB; 2 and 8 sites
    python benchmarks/round_overhead.py --systems medsyft,http   # without Flower
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import float_list, int_list, write_result  # noqa: E402
from policies.contract.plan import TrainingPlan  # noqa: E402
from researcher.federation import (  # noqa: E402
    Federation,
    FederationConfig,
    SiteEntry,
    initial_weights,
    store_password,
)

DATASET = "brain-mri-pet"
EMAIL = "ada@lovelace-institute.org"
N, GRID, BATCH = 32, (16, 16, 16), 8
POLICY = f"""# round_overhead benchmark: generous limits, manual approval through the console
version: 1
approval: manual
approvals_required: 1
reviewers: [dpo]
datasets:
  {DATASET}:
    access: {{domains: [lovelace-institute.org]}}
    privacy: {{delta_max: 1.0e-5, epsilon_per_plan: 50.0, epsilon_total: 1000.0}}
    training: {{max_rounds: 100, max_parameters: 100000000}}
"""
# The example CNN (researcher/examples/small_cnn3d.py); `wide` > 0 puts a dense layer of
# that width into its head. One class deriving from nn.Module only, as site policies ask.
MODEL = '''
class WideHeadCNN3D(nn.Module):
    def __init__(self, in_channels=2, width=8, wide=0):
        super().__init__()
        self.inorm = nn.GroupNorm(in_channels, in_channels, affine=False)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv3d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(4, 2 * width)
        self.pool = nn.AdaptiveAvgPool3d(3)
        features = 2 * width * 27
        if wide:
            self.head = nn.Sequential(nn.Linear(features, wide), nn.ReLU(), nn.Linear(wide, 1))
        else:
            self.head = nn.Linear(features, 1)

    def forward(self, x):
        x = self.inorm(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.head(self.pool(x).flatten(1))
'''


def plan_for(name: str, rounds: int, width: int, wide: int) -> TrainingPlan:
    return TrainingPlan.model_validate({
        "name": name, "version": 1, "dataset": DATASET, "researcher": EMAIL,
        "model": {"source": MODEL, "class_name": "WideHeadCNN3D",
                  "kwargs": {"in_channels": 2, "width": width, "wide": wide}},
        "inputs": ["mri", "pet"], "loss": "bce_with_logits", "optimizer": "sgd",
        "learning_rate": 0.1, "batch_size": BATCH, "local_epochs": 1, "rounds": rounds,
        "dp": {"target_epsilon": 50.0, "delta": 1e-5, "max_grad_norm": 1.0},
    })


def wide_for(megabytes: float, width: int = 8) -> int:
    """Hidden width of the dense head giving about `megabytes` of float32 weights."""
    features = 2 * width * 27
    return max(1, round(megabytes * 2**20 / 4 / (features + 2)))


def weights_mb(plan: TrainingPlan) -> float:
    return sum(a.nbytes for a in initial_weights(plan).values()) / 2**20


class Sites:
    """Real datasites on loopback, stopped by `close()` whatever happened."""

    def __init__(self, root: Path, count: int) -> None:
        from sites.common import keychain
        from sites.operator import admin, lifecycle

        self.root, self.dirs, self._started = root, [], []
        keychain.use_folder_keyring(root / "keyring")
        policy = root / "policy.yaml"
        policy.write_text(POLICY)
        self.password = keychain.generate_password()
        for i in range(count):
            d = root / "sites" / f"site-{i + 1}"
            lifecycle.init_site(f"site-{i + 1}", d, policy_file=policy, train_threads=1)
            self.dirs.append(d)
        try:
            with ThreadPoolExecutor(max_workers=count) as pool:
                for d, fut in [(d, pool.submit(lifecycle.up, d)) for d in self.dirs]:
                    fut.result()
                    self._started.append(d)
            for i, d in enumerate(self.dirs):
                admin.add_researcher(d, EMAIL, "Ada Lovelace", self.password,
                                     "Lovelace Institute")
                admin.publish_synthetic(d, DATASET, n=N, seed=100 + i, shape=GRID)
        except BaseException:
            self.close()
            raise

    def federation(self, count: int) -> Federation:
        from sites.operator import lifecycle

        config = FederationConfig(
            name=f"bench-{count}", checkpoints=str(self.root / "checkpoints"), quorum=count,
            sites=[SiteEntry(name=d.name, port=lifecycle.load_site(d)[1].port, email=EMAIL)
                   for d in self.dirs[:count]])
        for s in config.sites:
            store_password(s, self.password)
        return Federation(config).connect()

    def approve(self, fed: Federation, plan: TrainingPlan) -> None:
        from sites.governance.reviewers import Reviewers
        from sites.governance.store import Governance
        from sites.review import console

        def as_reviewer(d: Path, name: str):  # the account the data owner made for a reviewer
            accounts = Reviewers(Governance(d))
            email = f"{name}@benchmark.test"
            password = (accounts.reset_password(email, actor="benchmark") if accounts.get(email)
                        else accounts.add(email, name, actor="benchmark")[1])
            return accounts.authenticate(email, password, source="benchmark")

        fed.submit(plan)
        for d in self.dirs[:len(fed.site_names)]:
            for view in console.list_requests(d):
                if view.status == "pending" and view.function == plan.function_name:
                    console.approve(d, view.id, as_reviewer(d, "dpo"), note="benchmark")
        states = {s: r.status for s, r in fed.status(plan).items()}
        if set(states.values()) != {"approved"}:
            raise RuntimeError(f"plan not approved everywhere: {states}")

    def close(self) -> None:
        from sites.operator import lifecycle

        for d in self._started:
            lifecycle.down(d)
        self._started = []


RELEASED = re.compile(r"run (\d+) released in ([0-9.]+)s \(training ([0-9.]+)s\)")


def site_timings(site_dirs: list[Path]) -> tuple[float, float]:
    """(slowest training, slowest site runtime) of each site's last release, read from the
    site's own log as its operator would: a round's result carries no timing any more (it
    would be a readout of the batch sizes)."""
    train, runtime = 0.0, 0.0
    for d in site_dirs:
        last = None
        for f in sorted((d / "logs").glob("*.log")):
            for m in RELEASED.finditer(f.read_text(errors="replace")):
                last = m
        if last is not None:
            runtime = max(runtime, float(last.group(2)))
            train = max(train, float(last.group(3)))
    return train, runtime


def measure(fed: Federation, plan: TrainingPlan, rounds: int, log,
            site_dirs: list[Path]) -> dict:
    """Warm-up round, then `rounds` measured rounds; medians and every round's figures."""
    weights = initial_weights(plan)
    mb = sum(a.nbytes for a in weights.values()) / 2**20
    per_round = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        results, errors = fed.run_round(plan, weights, retries=0)
        if errors:
            raise RuntimeError(f"round {r}: {errors}")
        weights = fed.strategy.aggregate([(res.n_k or 1, res.params) for res in results.values()])
        round_s = time.perf_counter() - t0
        train_s, site_s = site_timings(site_dirs[:len(results)])
        row = {"round_s": round(round_s, 3), "train_s": round(train_s, 3),
               "site_runtime_s": round(site_s, 3), "overhead_s": round(round_s - train_s, 3)}
        per_round.append(row)
        log(f"    round {r}{' (warm-up)' if r == 0 else ''}: {round_s:.2f} s, "
            f"training {train_s:.2f} s, site runtime {site_s:.2f} s")
    counted = per_round[1:]

    def med(key: str) -> float:
        return statistics.median(row[key] for row in counted)

    overhead = med("overhead_s")
    sites = len(fed.site_names)
    return {
        "sites": sites, "weights_mb": round(mb, 2), "rounds": counted,
        "round_s": round(med("round_s"), 3), "train_s": round(med("train_s"), 3),
        "site_runtime_s": round(med("site_runtime_s"), 3),
        "overhead_s": round(overhead, 3),
        "overhead_fraction": round(overhead / med("round_s"), 4),
        # syft's part: round minus the slowest site's whole runtime (training included)
        "transport_s": round(med("round_s") - med("site_runtime_s"), 3),
        "per_site_mb_per_s": round(2 * mb / overhead, 2),
        "total_mb_per_s": round(2 * mb * sites / overhead, 2),
    }


FLOWER_VENV = Path(__file__).resolve().parent / ".flower-venv"
FLOWER_PIN = "flwr==1.42.0"
SYSTEMS = ("medsyft", "flower", "http")


def flower_python(log) -> Path:
    """Flower's interpreter, in a virtual environment of its own (made on first use)."""
    py = FLOWER_VENV / "bin" / "python"
    if not py.exists():
        log(f"creating Flower's virtual environment in {FLOWER_VENV} ({FLOWER_PIN}) ...")
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", FLOWER_PIN], check=True)
    return py


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_flower(py: Path, sites: int, mb: float, rounds: int) -> dict:
    out = subprocess.run([str(py), str(Path(__file__).parent / "_flower_round.py"),
                          "--sites", str(sites), "--mb", str(mb), "--rounds", str(rounds),
                          "--port", str(_free_port())], capture_output=True, text=True,
                         timeout=1800, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    med = statistics.median(doc["rounds_s"])
    return {"system": "flower", "version": doc["version"], "sites": sites, "weights_mb": mb,
            "rounds_s": doc["rounds_s"], "round_s": round(med, 4), "overhead_s": round(med, 4),
            "per_site_mb_per_s": round(2 * mb / med, 2), "load_1m": os.getloadavg()[0]}


def measure_http(sites: int, mb: float, rounds: int) -> dict:
    from benchmarks._http_floor import http_round

    ports = [_free_port() for _ in range(sites)]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "_http_floor.py"),
                               str(p)]) for p in ports]
    try:
        blob = b"\x01" * int(mb * 2**20)
        deadline = time.monotonic() + 30
        while True:
            try:
                http_round(ports, b"x")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        times = []
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            http_round(ports, blob)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times[1:])
        return {"system": "http", "sites": sites, "weights_mb": mb,
                "rounds_s": [round(t, 4) for t in times[1:]], "round_s": round(med, 4),
                "overhead_s": round(med, 4), "per_site_mb_per_s": round(2 * mb / med, 2),
                "load_1m": os.getloadavg()[0]}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="add 200 MB weights and 8 sites")
    ap.add_argument("--rounds", type=int, default=2, help="measured rounds per configuration")
    ap.add_argument("--weights-mb", type=float_list,
                    help="comma-separated weight sizes to measure at 2 sites (overrides the "
                         "default 1,40 and --full's 1,40,200; empty string for none)")
    ap.add_argument("--site-counts", type=int_list,
                    help="comma-separated site counts for the tiny model (overrides 2 and "
                         "--full's 2,8)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated, of {', '.join(SYSTEMS)}")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "round_overhead.json")
    args = ap.parse_args(argv)
    systems = [x for x in args.systems.split(",") if x]
    if not set(systems) <= set(SYSTEMS) or "medsyft" not in systems:
        ap.error(f"--systems: medsyft and any of {', '.join(SYSTEMS[1:])}")
    sizes = [1.0, 40.0, 200.0] if args.full else [1.0, 40.0]
    counts = [2, 8] if args.full else [2]
    if args.weights_mb is not None:
        sizes = args.weights_mb
    if args.site_counts is not None:
        counts = args.site_counts
    if min(counts, default=2) < 1 or (sizes and min(sizes) <= 0):
        ap.error("site counts and weight sizes must be positive")
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="medsyft-bench-"))

    def log(msg: str) -> None:
        print(msg, flush=True)

    py = flower_python(log) if "flower" in systems else None
    rows: list[dict] = []
    sites = None

    def others(n_sites: int, mb: float) -> None:
        if "flower" in systems:
            assert py is not None
            row = measure_flower(py, n_sites, mb, args.rounds)
            log(f"    flower: {row['round_s']:.3f} s a round (load {row['load_1m']:.2f})")
            rows.append(row)
        if "http" in systems:
            row = measure_http(n_sites, mb, args.rounds)
            log(f"    stdlib http: {row['round_s']:.3f} s a round (load {row['load_1m']:.2f})")
            rows.append(row)

    try:
        n_sites = max([*counts, 2 if sizes else 1])
        log(f"starting {n_sites} datasites on loopback in {root} ...")
        sites = Sites(root, n_sites)
        log(f"  up in {time.perf_counter() - t_start:.0f} s")
        fed = sites.federation(2)
        for mb in sizes:
            plan = plan_for(f"size_{int(mb)}mb", args.rounds + 1, 8, wide_for(mb))
            sites.approve(fed, plan)
            real_mb = weights_mb(plan)
            log(f"  weights {real_mb:.1f} MB at 2 sites:")
            row = measure(fed, plan, args.rounds, log, sites.dirs)
            rows.append({"system": "medsyft", **row, "load_1m": os.getloadavg()[0]})
            others(2, real_mb)
        if counts:
            tiny = plan_for("tiny", (args.rounds + 1) * len(counts), 4, 0)
            sites.approve(sites.federation(max(counts)), tiny)
        for count in counts:
            log(f"  {count} sites, tiny model ({weights_mb(tiny) * 2**20 / 4:,.0f} weights):")
            row = measure(sites.federation(count), tiny, args.rounds, log, sites.dirs)
            rows.append({"system": "medsyft", **row, "load_1m": os.getloadavg()[0]})
            others(count, weights_mb(tiny))
    finally:
        if sites is not None:
            sites.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'configuration':20} {'system':8} {'round s':>8} {'fixed s':>8} {'MB/s/site':>10} "
          f"{'load':>5}")
    for r in rows:
        label = f"{r['weights_mb']:.3g} MB, {r['sites']} sites"
        print(f"{label:20} {r['system']:8} {r['round_s']:>8.3f} {r['overhead_s']:>8.3f} "
              f"{r['per_site_mb_per_s']:>10.1f} {r['load_1m']:>5.2f}")
    doc = write_result("round_overhead", {
        "workload": {"n": N, "grid": list(GRID), "batch_size": BATCH, "local_epochs": 1,
                     "train_threads": 1},
        "goals": {"mb_per_s_per_site": 200, "fixed_overhead_s_at_1mb": 0.5},
        "rows": rows, "seconds": round(time.perf_counter() - t_start, 1)}, args.out)
    print(f"wrote {args.out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
