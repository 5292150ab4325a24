"""`medsyft policy ...`: validate policy files (exit 0 or 1, errors with file:line: field)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from policies.cli_output import err, out

app = typer.Typer(help="Site policy files: validate and inspect.", no_args_is_help=True)


@app.command("validate")
def validate(files: list[Path] = typer.Argument(..., help="policy YAML files")) -> None:
    """Check each file; every error names the file, line and field. Exit 1 on any error."""
    from policies.schema import PolicyError, load_policy

    bad = 0
    for f in files:
        try:
            _, digest = load_policy(f)
            out.print(f"{f}: ok (sha256 {digest[:12]})")
        except PolicyError as exc:
            bad += 1
            err.print(f"[red]{exc}[/red]", markup=True, soft_wrap=True)
    raise typer.Exit(1 if bad else 0)


@app.command("explain")
def explain_cmd(file: Path = typer.Argument(..., help="policy YAML file")) -> None:
    """Print what the policy allows, in plain words for a data steward."""
    from policies.explain import explain
    from policies.schema import PolicyError, load_policy

    try:
        policy, digest = load_policy(file)
    except PolicyError as exc:
        err.print(f"[red]{exc}[/red]", markup=True, soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(f"[bold]{file}[/bold] (sha256 {digest[:12]})")
    for line in explain(policy):
        out.print(line, markup=False)


@app.command("schema")
def schema() -> None:
    """Print the policy file's JSON Schema."""
    from policies.schema import SitePolicy

    print(json.dumps(SitePolicy.model_json_schema(), indent=2))
