"""The `medsyft` console script and the composition root: one typer app whose
subcommands mirror the folders, and the CLI's one error boundary.

site / console (sites/), policy (policies/), data (datasets/), researcher
(researcher/), demo. Sub-apps import their heavy dependencies lazily. This is the one
module of `sites` that imports the researcher package (its CLI and the demo, which
plays every role); the import contracts in `pyproject.toml` name it as the exception.

Any `MedsyftError` raised by any command ends here as one red line and exit 1; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from datasets.cli import app as data_app
from policies.cli import app as policy_app
from policies.cli_output import print_error
from policies.contract.errors import MedsyftError
from researcher.cli import app as researcher_app
from sites.cli import console_app, site_app

os.environ.setdefault("TQDM_DISABLE", "1")



class ErrorBoundary(TyperGroup):
    """The root command: a `MedsyftError` from any subcommand is printed, exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MedsyftError as exc:
            print_error(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ErrorBoundary,
    help="medsyft: governed federated DP training on hospital MRI/PET datasites.",
    no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(site_app, name="site")
app.add_typer(console_app, name="console")
app.add_typer(policy_app, name="policy")
app.add_typer(data_app, name="data")
app.add_typer(researcher_app, name="researcher")


@app.command("demo")
def demo(workdir: Path = typer.Option(Path(".medsyft-demo"), "--workdir",
                                      help="scratch folder for the demo sites (recreated)"),
         report: Path = typer.Option(Path("demo-report.json"), "--report"),
         rounds: int = typer.Option(None, "--rounds", min=1, max=10,
                                    help="override the plan's rounds"),
         task: str = typer.Option("classify", "--task",
                                  help="classify (the default: disease from MRI+PET), segment "
                                       "(lesions from MRI), synthesize (PET from MRI) or gan "
                                       "(PET from MRI, a federated generator against a "
                                       "discriminator each hospital keeps)")
         ) -> None:
    """Three demo hospitals, one researcher, a DP plan approved and trained end to end."""
    from researcher.demo import TASK_PLANS, run_demo

    if task not in TASK_PLANS:
        raise typer.BadParameter(f"choose one of {', '.join(TASK_PLANS)}", param_hint="--task")
    run_demo(workdir, report, rounds=rounds, task=task)


if __name__ == "__main__":
    app()
