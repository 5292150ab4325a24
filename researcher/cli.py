"""`medsyft researcher ...`: log in, list datasets, submit a plan, check status, run rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from policies.cli_output import out, plain, print_json
from policies.contract.errors import printable

app = typer.Typer(help="Researcher client: submit training plans and run federated rounds.",
                  no_args_is_help=True)

FedOpt = typer.Option(Path("federation.yaml"), "--federation", "-f",
                      help="federation file listing the sites", envvar="MEDSYFT_FEDERATION")


def metrics_text(metrics: dict[str, float]) -> str:
    """The task's validation metrics in one line (`auc 0.812, loss 0.51`)."""
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def round_table(rr) -> Table:
    if rr.metrics and "auc" not in rr.metrics:
        heading = f" · {metrics_text(rr.metrics)}"
    else:
        heading = f" · global AUC {rr.auc:.3f}" if rr.auc is not None else ""
    t = Table("site", "n_k", "ε so far", "ε target", "relation", "σ", "steps", "status",
              title=f"round {rr.round}" + heading,
              caption="ε per subject at the site's δ, under the relation each site states")
    for s in rr.sites:
        if s.ok:
            t.add_row(plain(s.site), "-" if s.n_k is None else str(s.n_k), f"{s.epsilon:.3f}",
                      f"{s.target_epsilon:g}", plain(str(s.adjacency)),
                      f"{s.noise_multiplier:.3f}", str(s.steps), "ok")
        else:
            t.add_row(plain(s.site), "-", "-", "-", "-", "-", "-",
                      Text(printable(str(s.error)), style="red"))
    return t


@app.command("login")
def login_cmd(site: str = typer.Argument(..., help="site name from the federation file"),
              federation: Path = FedOpt) -> None:
    """Store your password for SITE in the keyring (read from stdin when piped)."""
    from researcher.federation import load_federation, store_password
    from sites.common.syft_client import login

    cfg = load_federation(federation)
    entry = next((s for s in cfg.sites if s.name == site), None)
    if entry is None:
        raise typer.BadParameter(f"no site {site!r} in {federation}")
    if sys.stdin.isatty():
        password = typer.prompt(f"password for {entry.email} at {site}", hide_input=True)
    else:
        password = sys.stdin.readline().strip()
    login(entry.host, entry.port, entry.email, password)  # verify before storing
    store_password(entry, password)
    out.print(f"logged in to {site} as {entry.email}; password stored in the keyring")


@app.command("datasets")
def datasets_cmd(federation: Path = FedOpt, json_out: bool = typer.Option(False, "--json")) -> None:
    """Datasets published by every site (descriptions; mocks via the Python API)."""
    from researcher.federation import Federation

    data = Federation.from_yaml(federation).connect().datasets()
    if json_out:
        print_json(data)
        return
    t = Table("site", "dataset", "description")
    for site, entries in data.items():
        for d in entries:
            t.add_row(site, plain(d["name"]), plain(d["description"]))
    out.print(t)


def _status_table(statuses: dict) -> Table:
    t = Table("site", "status", "request", "reason")
    colours = {"approved": "green", "denied": "red", "pending": "yellow"}
    for s in statuses.values():
        t.add_row(s.site, f"[{colours.get(s.status, 'white')}]{s.status}[/]",
                  (s.request_id or "-")[:8], plain(s.reason or ""))
    return t


@app.command("check")
def check_cmd(plan_file: Path = typer.Argument(..., help="plan YAML"), federation: Path = FedOpt,
              json_out: bool = typer.Option(False, "--json")) -> None:
    """Check the plan against every site's public policy before submitting (exit 1 if a
    site would refuse it)."""
    from policies.contract.plan import load_plan
    from researcher.federation import Federation

    results = Federation.from_yaml(federation).connect().check(load_plan(plan_file))
    failing = {site: [c.rule for c in lines if c.failed] for site, lines in results.items()}
    if json_out:
        print_json({site: [c.model_dump() for c in lines] for site, lines in results.items()})
    else:
        colours = {"pass": "green", "fail": "red", "warn": "yellow"}
        for site, lines in results.items():
            t = Table("rule", "result", "seen", "limit", "why", title=site)
            for c in lines:
                if c.status != "pass":
                    t.add_row(plain(c.rule), f"[{colours[c.status]}]{c.status}[/]",
                              plain(c.seen), plain(c.limit), plain(c.message))
            passed = sum(c.status == "pass" for c in lines)
            out.print(t if t.row_count else f"{site}: all {passed} checked rules pass")
    raise typer.Exit(1 if any(failing.values()) else 0)


@app.command("submit")
def submit_cmd(plan_file: Path = typer.Argument(..., help="plan YAML"), federation: Path = FedOpt,
               json_out: bool = typer.Option(False, "--json")) -> None:
    """Submit the plan to every site as a code request (idempotent)."""
    from policies.contract.plan import load_plan
    from researcher.federation import Federation

    plan = load_plan(plan_file)
    statuses = Federation.from_yaml(federation).connect().submit(plan)
    if json_out:
        print_json({k: vars(v) for k, v in statuses.items()})
    else:
        out.print(_status_table(statuses))


@app.command("status")
def status_cmd(plan_file: Path = typer.Argument(...), federation: Path = FedOpt,
               json_out: bool = typer.Option(False, "--json")) -> None:
    """Review status of the plan at every site, with any denial reason."""
    from policies.contract.plan import load_plan
    from researcher.federation import Federation

    statuses = Federation.from_yaml(federation).connect().status(load_plan(plan_file))
    if json_out:
        print_json({k: vars(v) for k, v in statuses.items()})
    else:
        out.print(_status_table(statuses))


@app.command("run")
def run_cmd(plan_file: Path = typer.Argument(...), federation: Path = FedOpt,
            validation_n: int = typer.Option(120, "--validation-n",
                                             help="size of your synthetic validation cohort"),
            validation_seed: int = typer.Option(2024, "--validation-seed"),
            fresh: bool = typer.Option(False, "--fresh", help="ignore existing checkpoints"),
            json_out: bool = typer.Option(False, "--json")) -> None:
    """Run all remaining rounds (resumes from the last checkpoint), evaluating each round."""
    from datasets.synthetic import generate_cohort
    from policies.contract.plan import load_plan
    from researcher.federation import Federation

    plan = load_plan(plan_file)
    fed = Federation.from_yaml(federation).connect(require_all=False)
    validation = generate_cohort(validation_n, validation_seed)
    report = run_with_progress(fed, plan, validation, resume=not fresh, quiet=json_out)
    if json_out:
        print_json(report.model_dump(mode="json"))


def run_with_progress(fed, plan, validation, resume: bool = True, quiet: bool = False,
                      console=None):
    """Run all rounds with a progress bar (rounds, and the weights moved in this round:
    MB and MB/s over every site's endpoint) and a table per round on `console`."""
    import threading

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} rounds"),
                  TextColumn("{task.fields[wire]}"), TimeElapsedColumn(),
                  console=console or out, transient=True, disable=quiet) as progress:
        task = progress.add_task(f"training {plan.name}", total=plan.rounds, wire="")
        stop = threading.Event()

        def watch_wire() -> None:  # the meter is filled by the round's upload threads
            while not stop.wait(0.25):
                meter = fed.meter
                if meter.total:
                    progress.update(task, wire=f"{meter.total / 2**20:,.1f} MB moved, "
                                               f"{meter.mb_per_s:,.0f} MB/s per transfer")

        def on_start(done: int, total: int) -> None:
            progress.update(task, completed=done)
            if done and not quiet:
                progress.console.print(f"resuming after round {done} from checkpoint")

        def on_round(rr) -> None:
            if not quiet:
                progress.console.print(round_table(rr))
            progress.update(task, completed=rr.round)

        watcher = threading.Thread(target=watch_wire, daemon=True, name="medsyft-wire-meter")
        if not quiet:
            watcher.start()
        try:
            return fed.run(plan, validation=validation, on_round=on_round,
                           on_start=on_start, resume=resume)
        finally:
            stop.set()
