"""`medsyft data ...`: inspect imaging inputs, dry-run a cohort ingest, write synthetic
cohorts as DICOM/NIfTI, list the synthetic site profiles.

Nothing here publishes; `medsyft site publish --manifest` does. Errors on bad
input are one line naming the file (and manifest line and column), never a
traceback. Output never contains identifying header fields or pixel values.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from policies.cli_output import err, out, print_json

app = typer.Typer(help="Imaging data: inspect DICOM/NIfTI inputs, dry-run a cohort ingest, "
                  "write synthetic cohorts.", no_args_is_help=True)


MASK_CLASSES = typer.Option(None, "--mask-classes", min=2, max=16,
                            help="with a mask column: how many classes the masks have, "
                                 "background included (3: background, core, oedema)")


def _triple(text: str | None, what: str, cast: type) -> tuple | None:
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"{what}: {text!r} is not a number or three numbers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{what}: give one positive number or three, e.g. 2 or 2,2,3")
    return tuple(values)


def preprocessing_from(spacing: str | None, shape: str | None, mri_norm: str,
                       pet_norm: str):
    """A `Preprocessing` from CLI strings ("2" or "2,2,3"; "96" or "96,112,96")."""
    from datasets.preprocess import Preprocessing

    for opt, value, choices in (("--mri-norm", mri_norm, ("zscore", "minmax", "none")),
                                ("--pet-norm", pet_norm, ("mean", "zscore", "none"))):
        if value not in choices:
            raise typer.BadParameter(f"{opt}: {value!r}; choose one of {', '.join(choices)}")
    return Preprocessing(spacing_mm=_triple(spacing, "--spacing", float),
                         shape=_triple(shape, "--shape", int), mri_norm=mri_norm,
                         pet_norm=pet_norm)


SPACING = typer.Option(None, "--spacing", help="target voxel size in mm: 2 or 2,2,3 "
                       "(default: the first MRI's own)")
SHAPE = typer.Option(None, "--shape", help="target grid in voxels: 96 or 96,112,96 "
                     "(default: the first MRI's own)")
MRI_NORM = typer.Option("zscore", "--mri-norm", help="zscore, minmax or none")
PET_NORM = typer.Option("mean", "--pet-norm", help="mean (whole-brain SUVR), zscore or none")


@contextmanager
def progress_bar(label: str, enabled: bool = True):
    """A rich progress bar on stderr; yields a callback(done, total)."""
    if not enabled:
        yield None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="a DICOM series folder, a DICOM file or a "
                                        ".nii/.nii.gz file"),
            frame: int = typer.Option(None, "--frame", min=0,
                                      help="volume of a 4D NIfTI file (0-based)"),
            json_out: bool = typer.Option(False, "--json")) -> None:
    """Modality, shape, spacing, orientation, value range, PET units and SUV factors."""
    from datasets.inspect import inspect_path

    report = inspect_path(path, frame=frame)
    if json_out:
        print_json(report.model_dump(mode="json"))
        return
    t = Table("field", "value", show_header=False)
    t.add_row("path", str(path))
    for k, v in report.rows():
        t.add_row(k, v)
    out.print(t)


def print_ingest_report(report) -> None:
    t = Table("field", "value", show_header=False, title="ingest")
    t.add_row("subjects", str(report.n))
    t.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report.label_counts.items()))
    t.add_row("modalities", ", ".join(m.upper() for m in report.modalities))
    t.add_row("grid", f"{'x'.join(map(str, report.shape))} voxels, "
              f"{'x'.join(f'{s:.3g}' for s in report.spacing_mm)} mm, {report.orientation}")
    for m in report.modalities:
        src = ", ".join(f"{k} {v}" for k, v in report.sources[m].items())
        t.add_row(f"{m.upper()} inputs", f"{src}; units {report.units[m]}")
    if report.suv_factor_range:
        lo, hi = report.suv_factor_range
        t.add_row("SUV factors", f"{lo:.4g} .. {hi:.4g} g/ml per Bq/ml")
    if report.oblique_inputs:
        t.add_row("oblique inputs", f"{report.oblique_inputs} (resampled onto the RAS grid)")
    t.add_row("preprocessing", report.preprocessing)
    if report.mask_classes:
        src = ", ".join(f"{k} {v}" for k, v in report.mask_sources.items())
        t.add_row("masks", f"{src}; {report.mask_classes} classes (background included), "
                  "nearest-neighbour onto each subject's grid")
    if report.ignored_columns:
        t.add_row("ignored columns", ", ".join(report.ignored_columns) + " (never published)")
    for w in report.warnings:
        t.add_row("[yellow]warning[/]", w)
    t.add_row("time", f"{report.seconds:.1f} s")
    out.print(t)


@app.command("ingest")
def ingest(manifest: Path = typer.Argument(..., help="cohort manifest CSV (subject_id, mri, "
                                           "pet, label)"),
           spacing: str = SPACING, shape: str = SHAPE, mri_norm: str = MRI_NORM,
           pet_norm: str = PET_NORM, mask_classes: int = MASK_CLASSES,
           json_out: bool = typer.Option(False, "--json")) -> None:
    """Dry run: read, check and preprocess a whole cohort, print the report, publish nothing."""
    from datasets.ingest import ingest_manifest

    pp = preprocessing_from(spacing, shape, mri_norm, pet_norm)
    with progress_bar("reading subjects", enabled=not json_out) as update:
        _, report = ingest_manifest(manifest, pp, progress=update, mask_classes=mask_classes)
    if json_out:
        print_json(report.model_dump(mode="json"))
    else:
        print_ingest_report(report)


@app.command("synth")
def synth(out_dir: Path = typer.Argument(..., help="folder to write into (created)"),
          n: int = typer.Option(20, "--n", min=1, help="subjects"),
          seed: int = typer.Option(0, "--seed"),
          profile: str = typer.Option("neutral", "--profile",
                                      help="site profile (see `medsyft data profiles`)"),
          size: int = typer.Option(24, "--size", min=8, max=256, help="MRI grid edge (voxels)"),
          spacing: float = typer.Option(8.0, "--spacing", min=0.1, help="MRI voxel size (mm)"),
          mri_format: str = typer.Option("dicom", "--mri-format",
                                         help="dicom, dicom-multiframe or nifti"),
          pet_format: str = typer.Option("dicom", "--pet-format",
                                         help="dicom, dicom-multiframe or nifti"),
          pet_spacing: float = typer.Option(None, "--pet-spacing", min=0.1,
                                            help="PET voxel size (default: the MRI's)"),
          oblique: float = typer.Option(0.0, "--oblique", help="rotate the grid by degrees"),
          mask_format: str = typer.Option(None, "--mask-format",
                                          help="also lesions and a mask column: dicom-seg "
                                               "or nifti (label maps)"),
          mask_spacing: float = typer.Option(None, "--mask-spacing", min=0.1,
                                             help="mask voxel size (default: the MRI's)"),
          ) -> None:
    """Write a synthetic cohort as real DICOM series / NIfTI files plus cohort.csv."""
    from datasets.synthetic import DEMO_PROFILES, NEUTRAL
    from datasets.synthetic_files import write_synthetic_cohort

    formats = ("dicom", "dicom-multiframe", "nifti")
    for opt, fmt in (("--mri-format", mri_format), ("--pet-format", pet_format)):
        if fmt not in formats:
            raise typer.BadParameter(f"{opt}: {fmt!r}; choose one of {', '.join(formats)}")
    if mask_format not in (None, "dicom-seg", "nifti"):
        raise typer.BadParameter(f"--mask-format: {mask_format!r}; choose dicom-seg or nifti")
    prof = {"neutral": NEUTRAL, **DEMO_PROFILES}.get(profile)
    if prof is None:
        raise typer.BadParameter(f"--profile: unknown {profile!r}; see `medsyft data profiles`")
    with progress_bar("writing subjects") as update:
        manifest = write_synthetic_cohort(
            out_dir, n=n, seed=seed, profile=prof, shape=(size, size, size),
            spacing_mm=spacing, mri_format=mri_format, pet_format=pet_format,  # type: ignore
            pet_spacing_mm=pet_spacing, rotation_deg=oblique, progress=update,
            mask_format=mask_format, mask_spacing_mm=mask_spacing)  # type: ignore[arg-type]
    out.print(f"wrote {n} subjects to {out_dir}; manifest {manifest}")


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
