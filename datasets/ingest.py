"""Manifest to `Cohort`: read every subject's images, preprocess, stack, report.

`ingest_manifest` reads each row with `datasets.reader`, checks modalities,
puts every subject on the common grid (`datasets.preprocess`) and returns the
cohort with an `IngestReport` for the data owner. A manifest's `mask` column (NIfTI
label maps or DICOM SEG, `datasets.masks`) becomes the cohort's voxel mask, resampled
with nearest neighbour onto each subject's grid; its number of classes is declared by
the data owner (`mask_classes`), never read from the masks. The report holds counts,
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
from datasets.masks import read_mask
from datasets.preprocess import (
    Preprocessing,
    methods_of,
    output_grid,
    prepare_subject,
    reorient_ras,
    resample,
)
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
    mask_classes: int | None = None  # declared; None: no mask column
    mask_sources: dict[str, int] = {}  # {dicom-seg: 12, nifti-labels: 3}
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


def _mask_on_grid(manifest: Manifest, row, affine: np.ndarray, shape: tuple,  # noqa: ANN001
                  classes: int) -> tuple[np.ndarray, str]:
    """The row's mask as class numbers on the subject's grid (nearest neighbour), and the
    kind of file it came from."""
    where = f"{manifest.path.name}:{row.line} (subject {row.subject_id}) column mask"
    try:
        vol = read_mask(row.mask)
    except DataError as exc:
        raise DataError(None, f"{where}: {exc}") from None
    on_grid = resample(reorient_ras(vol), affine, tuple(shape), order=0).data
    top = int(on_grid.max()) if on_grid.size else 0
    if top >= classes:
        raise DataError(None, f"{where}: class {top} outside the declared {classes} classes "
                        f"(0..{classes - 1}, background included); declare more with "
                        "--mask-classes")
    return np.rint(on_grid).astype(np.uint8), vol.source


def ingest_manifest(manifest: Manifest | str | Path, pp: Preprocessing | None = None,
                    progress: Progress | None = None,
                    mask_classes: int | None = None) -> tuple[Cohort, IngestReport]:
    """Read, check and preprocess every subject of a manifest into one cohort.

    `mask_classes`: how many classes the manifest's masks have, background included
    (required with a `mask` column: published as the dataset's schema, so it is the data
    owner's declaration, never the masks' maximum)."""
    from datasets.cohort import MAX_MASK_CLASS

    t0 = time.perf_counter()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if manifest.has_mask and mask_classes is None:
        raise DataError(None, f"{manifest.path.name}: the manifest has a mask column: declare "
                        "how many classes its masks have, background included (--mask-classes "
                        "3 for background, core, oedema)")
    if mask_classes is not None and not 2 <= mask_classes <= MAX_MASK_CLASS + 1:
        raise DataError(None, f"mask classes: {mask_classes} is not between 2 and "
                        f"{MAX_MASK_CLASS + 1}")
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
    masks = np.zeros((n, 1, 1, 1), dtype=np.uint8) if manifest.has_mask else None
    mask_sources: Counter = Counter()
    for i, row in enumerate(manifest.rows):
        vols = _read_row(manifest, row, mods)
        affine, shape = output_grid(vols, pp)
        if grid_shape is None:
            grid_shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore
            arrays = {m: np.empty((n, *grid_shape), dtype=np.float32) for m in mods}
            if masks is not None:
                masks = np.zeros((n, *grid_shape), dtype=np.uint8)
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
        if masks is not None and row.mask is not None:
            masks[i], kind = _mask_on_grid(manifest, row, affine, shape, mask_classes or 0)
            mask_sources[kind] += 1
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
    if masks is not None:
        meta["mask_classes"] = mask_classes
    cohort = Cohort(volumes=arrays, labels=labels, meta=meta, masks=masks)
    report = IngestReport(
        manifest=str(manifest.path), n=n, modalities=mods, shape=grid_shape, spacing_mm=spacing,
        label_counts=manifest.label_counts(),
        sources={m: dict(sources[m]) for m in mods}, units=unit_text,
        suv_factor_range=(float(suv_lo), float(suv_hi)) if np.isfinite(suv_lo) else None,
        oblique_inputs=oblique, preprocessing=pp.describe(),
        ignored_columns=manifest.ignored_columns, warnings=warnings,
        mask_classes=mask_classes if masks is not None else None,
        mask_sources=dict(mask_sources),
        seconds=round(time.perf_counter() - t0, 3))
    return cohort, report
