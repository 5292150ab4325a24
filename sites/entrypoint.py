"""The `medsyft` console script: one typer app whose subcommands mirror the folders.

site / console (sites/), policy (policies/), data (datasets/), researcher
(researcher/), demo. Sub-apps import their heavy dependencies lazily.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from datasets.cli import app as data_app
from policies.cli import app as policy_app
from researcher.cli import app as researcher_app
from sites.cli import console_app, site_app
from sites.cli_common import friendly

os.environ.setdefault("TQDM_DISABLE", "1")

app = typer.Typer(
    help="medsyft: governed federated DP training on hospital MRI/PET datasites.",
    no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(site_app, name="site")
app.add_typer(console_app, name="console")
app.add_typer(policy_app, name="policy")
app.add_typer(data_app, name="data")
app.add_typer(researcher_app, name="researcher")


@app.command("demo")
@friendly
def demo(workdir: Path = typer.Option(Path(".medsyft-demo"), "--workdir",
                                      help="scratch folder for the demo sites (recreated)"),
         report: Path = typer.Option(Path("demo-report.json"), "--report"),
         rounds: int = typer.Option(None, "--rounds", min=1, max=10,
                                    help="override the plan's rounds")) -> None:
    """Three demo hospitals, one researcher, a DP plan approved and trained end to end."""
    from researcher.demo import run_demo

    run_demo(workdir, report, rounds=rounds)


if __name__ == "__main__":
    app()
