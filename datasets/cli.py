"""`medsyft data ...`: inspect imaging inputs and the synthetic cohort generator."""

from __future__ import annotations

import typer
from rich.table import Table

from sites.cli_common import out, print_json

app = typer.Typer(help="Imaging data: synthetic cohort profiles (DICOM/NIfTI ingestion to come).",
                  no_args_is_help=True)


@app.command("profiles")
def profiles(json_out: bool = typer.Option(False, "--json")) -> None:
    """The synthetic site profiles (scanner scale/bias, noise, class balance)."""
    from datasets.synthetic import DEMO_PROFILES, NEUTRAL

    items = {"neutral": NEUTRAL, **DEMO_PROFILES}
    if json_out:
        print_json({k: v.model_dump() for k, v in items.items()})
        return
    t = Table("profile", "MRI scale", "MRI bias", "PET scale", "noise", "disease fraction",
              "effect")
    for k, p in items.items():
        t.add_row(k, f"{p.mri_scale:g}", f"{p.mri_bias:g}", f"{p.pet_scale:g}", f"{p.noise:g}",
                  f"{p.disease_fraction:g}", f"{p.effect:g}")
    out.print(t)
