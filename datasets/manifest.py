"""The cohort manifest: a CSV listing each subject's images and label.

Columns: `subject_id`, `label` and at least one of `mri`, `pet` (a DICOM series
folder, a DICOM file or a .nii/.nii.gz file, relative to the manifest's folder
unless absolute). Optional: `mri_frame`, `pet_frame` (0-based volume of a 4D
NIfTI), and `mask`: each subject's voxel mask for segmentation (a NIfTI label map or a
DICOM SEG file), on any grid (ingest resamples it with nearest neighbour). Any other
column is allowed, reported as ignored and never published.

Every problem is reported with the manifest's file name, line and column, all
at once. Subject ids are for the data owner's messages only: they never enter
a published asset. This module must never read image content.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from datasets.volume import DataError

REQUIRED = ("subject_id", "label")
IMAGE_COLUMNS = ("mri", "pet")
FRAME_COLUMNS = ("mri_frame", "pet_frame")
MASK_COLUMN = "mask"
KNOWN = (*REQUIRED, *IMAGE_COLUMNS, *FRAME_COLUMNS, MASK_COLUMN)
MAX_REPORTED = 25


class ManifestError(DataError):
    """All problems found in a manifest, one `file:line: column: message` each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        DataError.__init__(self, None, text)


class ManifestRow(BaseModel):
    subject_id: str
    label: int
    line: int
    mri: Path | None = None
    pet: Path | None = None
    mri_frame: int | None = None
    pet_frame: int | None = None
    mask: Path | None = None

    def image(self, modality: str) -> Path | None:
        return getattr(self, modality)

    def frame(self, modality: str) -> int | None:
        return getattr(self, f"{modality}_frame")


class Manifest(BaseModel):
    path: Path
    modalities: list[str]
    rows: list[ManifestRow]
    ignored_columns: list[str]
    has_mask: bool = False

    def label_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.rows:
            counts[r.label] = counts.get(r.label, 0) + 1
        return dict(sorted(counts.items()))


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except UnicodeDecodeError:
        raise ManifestError(path, [f"{path}:1: not UTF-8 text (is this a CSV file?)"]) from None


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest; raise `ManifestError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [f"{path}: no such file"])
    header = [h.strip() for h in _header(path)]
    where = path.name
    problems: list[str] = []
    if not header or header == [""]:
        raise ManifestError(path, [f"{where}:1: empty file; expected a header row with "
                                   f"subject_id, label and mri and/or pet"])
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        problems.append(f"{where}:1: column {', '.join(dup)} appears more than once")
    for col in REQUIRED:
        if col not in header:
            problems.append(f"{where}:1: column {col}: missing (header is {', '.join(header)})")
    modalities = [c for c in IMAGE_COLUMNS if c in header]
    if not modalities:
        problems.append(f"{where}:1: needs an image column: mri, pet or both")
    for col in FRAME_COLUMNS:
        if col in header and col.removesuffix("_frame") not in header:
            problems.append(f"{where}:1: column {col} without column {col.removesuffix('_frame')}")
    if problems:
        raise ManifestError(path, problems)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                            encoding="utf-8-sig")
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ManifestError(path, [f"{where}: not a well-formed CSV: {first}"]) from None
    table.columns = [c.strip() for c in table.columns]
    if table.empty:
        raise ManifestError(path, [f"{where}:2: no subjects listed"])

    base = path.parent
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table.to_dict(orient="records")):
        line = i + 2
        before = len(problems)
        sid = str(rec["subject_id"]).strip()
        here = f"{where}:{line}"
        who = f" (subject {sid})" if sid else ""
        if not sid:
            problems.append(f"{here}: column subject_id: empty")
        elif sid in seen:
            problems.append(f"{here}: column subject_id: {sid} already listed on line {seen[sid]}")
        else:
            seen[sid] = line
        label_text = str(rec["label"]).strip()
        label = -1
        try:
            label = int(label_text)
            if label < 0:
                raise ValueError
        except ValueError:
            problems.append(f"{here}{who}: column label: {label_text!r} is not a "
                            "non-negative integer")
        values: dict[str, object] = {}
        for mod in modalities:
            cell = str(rec[mod]).strip()
            if not cell:
                problems.append(f"{here}{who}: column {mod}: empty; every subject needs every "
                                "modality the manifest lists")
                continue
            p = Path(cell).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.exists():
                problems.append(f"{here}{who}: column {mod}: {cell} not found (looked in {p})")
            values[mod] = p
            fcol = f"{mod}_frame"
            if fcol in rec and str(rec[fcol]).strip():
                try:
                    values[fcol] = int(str(rec[fcol]).strip())
                    if values[fcol] < 0:  # type: ignore[operator]
                        raise ValueError
                except ValueError:
                    problems.append(f"{here}{who}: column {fcol}: {rec[fcol]!r} is not a "
                                    "0-based volume index")
                    values.pop(fcol, None)
        if MASK_COLUMN in rec:
            cell = str(rec[MASK_COLUMN]).strip()
            if not cell:
                problems.append(f"{here}{who}: column mask: empty; with a mask column every "
                                "subject needs a mask (an empty label map for none)")
            else:
                p = Path(cell).expanduser()
                p = p if p.is_absolute() else base / p
                if not p.exists():
                    problems.append(f"{here}{who}: column mask: {cell} not found (looked in "
                                    f"{p})")
                values["mask"] = p
        if len(problems) == before:
            rows.append(ManifestRow(subject_id=sid, label=label, line=line,
                                    **values))  # type: ignore[arg-type]
    if problems:
        raise ManifestError(path, problems)
    ignored = [c for c in table.columns if c not in KNOWN]
    return Manifest(path=path, modalities=modalities, rows=rows, ignored_columns=ignored,
                    has_mask=MASK_COLUMN in table.columns)
