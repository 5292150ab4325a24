"""Manifest to `Cohort`: read every subject's images, preprocess, stack, report.

`ingest_manifest` reads each row with `datasets.reader`, checks modalities,
puts every subject on the common grid (`datasets.preprocess`) and returns the
cohort with an `IngestReport` for the data owner. The report holds counts,
geometry, units and SUV factor ranges; it holds no subject id, no header text
and no pixel value. A failing subject stops the ingest with a message naming
its manifest line, subject id, column and file. This module must never print
or log pixel values, labels or identifying header fields.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from datasets.cohort import Cohort
from datasets.manifest import Manifest, load_manifest
from datasets.preprocess import Preprocessing, methods_of, output_grid, prepare_subject
from datasets.reader import read_image
from datasets.volume import DataError, Volume

Progress = Callable[[int, int], None]


class IngestReport(BaseModel):
    """What the data owner sees after an ingest (never published as is)."""

    manifest: str
    n: int
    modalities: list[str]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str = "RAS"
    label_counts: dict[int, int]
    sources: dict[str, dict[str, int]]  # modality -> {dicom-series: 12, nifti: 3}
    units: dict[str, str]  # modality -> unit before normalisation
    suv_factor_range: tuple[float, float] | None = None
    oblique_inputs: int = 0
    preprocessing: str
    ignored_columns: list[str]
    warnings: list[str] = []
    seconds: float


def _read_row(manifest: Manifest, row, modalities: list[str]) -> dict[str, Volume]:
    vols: dict[str, Volume] = {}
    for mod in modalities:
        src = row.image(mod)
        try:
            vols[mod] = read_image(src, modality=mod, frame=row.frame(mod))
        except DataError as exc:
            raise DataError(None, f"{manifest.path.name}:{row.line} (subject {row.subject_id}) "
                            f"column {mod}: {exc}") from None
    return vols


def ingest_manifest(manifest: Manifest | str | Path, pp: Preprocessing | None = None,
                    progress: Progress | None = None) -> tuple[Cohort, IngestReport]:
    """Read, check and preprocess every subject of a manifest into one cohort."""
    t0 = time.perf_counter()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    pp = pp or Preprocessing()
    mods = manifest.modalities
    n = len(manifest.rows)
    arrays: dict[str, np.ndarray] = {}
    grid_shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    sources: dict[str, Counter] = {m: Counter() for m in mods}
    units: dict[str, set[str]] = {m: set() for m in mods}
    suv_lo, suv_hi = np.inf, -np.inf
    oblique = 0
    for i, row in enumerate(manifest.rows):
        vols = _read_row(manifest, row, mods)
        affine, shape = output_grid(vols, pp)
        if grid_shape is None:
            grid_shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore
            arrays = {m: np.empty((n, *grid_shape), dtype=np.float32) for m in mods}
        elif tuple(shape) != grid_shape:
            raise DataError(None, f"{manifest.path.name}:{row.line} (subject {row.subject_id}): "
                            f"grid {'x'.join(map(str, shape))} differs from "
                            f"{'x'.join(map(str, grid_shape))} of the first subject; give a "
                            "target --shape (and --spacing) to resample all subjects")
        for m, v in vols.items():
            sources[m][v.source] += 1
            units[m].add(v.units)
            oblique += int(v.oblique)
            if v.suv is not None and v.suv.units_in == "BQML":
                suv_lo, suv_hi = min(suv_lo, min(v.suv.scale)), max(suv_hi, max(v.suv.scale))
        prepared = prepare_subject(vols, pp, grid=(affine, shape))
        for m in mods:
            arrays[m][i] = prepared[m]
        if progress:
            progress(i + 1, n)
    assert grid_shape is not None and spacing is not None
    labels = np.array([r.label for r in manifest.rows], dtype=np.int64)
    warnings: list[str] = []
    if len(set(labels.tolist())) < 2:
        warnings.append("all subjects have the same label")
    if "pet" in mods and any("SUV" not in u for u in units["pet"]):
        warnings.append("some PET inputs are not in SUV (NIfTI values are taken as stored)")
    unit_text = {m: " / ".join(sorted(u)) for m, u in units.items()}
    norm = methods_of(pp)
    meta = {
        "modalities": mods, "shape": list(grid_shape), "spacing_mm": list(spacing),
        "orientation": "RAS",
        "units": {m: f"{unit_text[m]}, normalised: {norm[m]}" for m in mods},
        "normalisation": {m: norm[m] for m in mods},
        "sources": {m: sorted(sources[m]) for m in mods},  # kinds only: counts would give N
        "preprocessing": pp.describe(),
    }
    cohort = Cohort(volumes=arrays, labels=labels, meta=meta)
    report = IngestReport(
        manifest=str(manifest.path), n=n, modalities=mods, shape=grid_shape, spacing_mm=spacing,
        label_counts=manifest.label_counts(),
        sources={m: dict(sources[m]) for m in mods}, units=unit_text,
        suv_factor_range=(float(suv_lo), float(suv_hi)) if np.isfinite(suv_lo) else None,
        oblique_inputs=oblique, preprocessing=pp.describe(),
        ignored_columns=manifest.ignored_columns, warnings=warnings,
        seconds=round(time.perf_counter() - t0, 3))
    return cohort, report
