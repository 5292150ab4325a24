"""Read a subject's voxel mask (segmentation label map) into a `Volume` of class numbers.

Two formats: a NIfTI label map (integer values 0 = background, 1.. classes, on any grid
with its affine) and a DICOM Segmentation object (Modality SEG, BINARY or FRACTIONAL: each
frame one plane of one segment, placed by its per-frame ImagePositionPatient, the voxels
of segment k labelled k; where segments overlap the higher number wins). Ingest resamples
the mask with nearest neighbour onto the subject's image grid (`datasets.ingest`), so a
class number is never blended with another.

Refused with a `DataError` naming the file: a label map with non-integer or negative
values, a SEG without geometry or segments, frames on different planes. Like the image
readers, this module must never put a header value that could identify a person, a date
or an institution into a `Volume`, an error message or a log: a SEG's header is read for
its geometry and segment numbers only, and nothing of it is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datasets.dicom_series import _floats, _group, _pixels, _plane, read_header
from datasets.nifti_files import is_nifti_path, read_nifti
from datasets.volume import LPS_TO_RAS, DataError, Volume

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def read_mask(path: str | Path) -> Volume:
    """A NIfTI label map or a DICOM SEG (file, or a folder holding one) as class numbers
    (float32 holding integers, modality "mask")."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_file() and is_nifti_path(path):
        vol = read_nifti(path, modality="mask")
        data = vol.data
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)) or np.any(data < 0):
            raise DataError(path, "not a label map: values must be whole numbers 0 "
                            "(background), 1, 2, ... (is this an image, or a probability map?)")
        vol.source = "nifti-labels"
        vol.units = "class"
        return vol
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise DataError(path, f"a mask folder must hold one DICOM SEG file, it holds "
                            f"{len(files)} files")
        path = files[0]
    return _read_seg(path, read_header(path))


def _segment_of(path: Path, ds: Any, frame: int) -> int:
    item = _group(ds, frame, "SegmentIdentificationSequence")
    number = item.get("ReferencedSegmentNumber") if item is not None else None
    if number is None:
        raise DataError(path, f"SEG frame {frame + 1} names no segment "
                        "(SegmentIdentificationSequence)")
    return int(number)


def _read_seg(path: Path, ds: Any) -> Volume:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "SEG" and str(ds.get("SOPClassUID", "")) != SEG_STORAGE:
        raise DataError(path, f"not a DICOM Segmentation (Modality {modality or 'none'}); a "
                        "mask is a SEG object or a NIfTI label map")
    segments = ds.get("SegmentSequence")
    if not segments:
        raise DataError(path, "SEG without segments (SegmentSequence)")
    numbers = {int(s.get("SegmentNumber", 0) or 0) for s in segments}
    if min(numbers) < 1:
        raise DataError(path, "SEG segment numbers start at 1")
    seg_type = str(ds.get("SegmentationType", "BINARY") or "BINARY").upper()
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = np.asarray(_pixels(path, ds)).reshape(frames, rows, cols)
    if seg_type == "FRACTIONAL":
        peak = float(ds.get("MaximumFractionalValue", 255) or 255)
        on = pixels.astype(np.float32) >= 0.5 * peak
    elif seg_type == "BINARY":
        on = pixels > 0
    else:
        raise DataError(path, f"SegmentationType {seg_type} is not BINARY or FRACTIONAL")
    planes = []
    for f in range(frames):
        position = _group(ds, f, "PlanePositionSequence")
        orient = _group(ds, f, "PlaneOrientationSequence")
        measures = _group(ds, f, "PixelMeasuresSequence")
        if position is None or orient is None or measures is None:
            raise DataError(path, f"SEG frame {f + 1} lacks its plane position, orientation "
                            "or pixel spacing (functional groups)")
        pos = _floats(path, position.get("ImagePositionPatient"), 3, "ImagePositionPatient")
        row, col, spacing = _plane(path, tuple(orient.get("ImageOrientationPatient")),
                                   tuple(measures.get("PixelSpacing")))
        planes.append((pos, row, col, spacing, measures))
    row, col, spacing = planes[0][1], planes[0][2], planes[0][3]
    if any(not (np.allclose(p[1], row, atol=1e-4) and np.allclose(p[2], col, atol=1e-4)
                and np.allclose(p[3], spacing)) for p in planes):
        raise DataError(path, "SEG frames lie on differently oriented or spaced planes")
    normal = np.cross(row, col)
    dist = np.array([float(p[0] @ normal) for p in planes])
    levels = np.unique(np.round(dist, 3))
    if len(levels) > 1:
        steps = np.diff(levels)
        step = float(np.min(steps))
        if np.any(np.abs(steps / step - np.round(steps / step)) > 0.05):
            raise DataError(path, "SEG planes are not evenly spaced")
    else:
        step = float(planes[0][4].get("SpacingBetweenSlices")
                     or planes[0][4].get("SliceThickness") or 1.0)
    first = float(levels[0])
    depth = int(round((float(levels[-1]) - first) / step)) + 1
    labels = np.zeros((cols, rows, depth), dtype=np.float32)
    order = sorted(range(frames), key=lambda f: _segment_of(path, ds, f))
    for f in order:  # higher segment numbers last: they win where segments overlap
        k = int(round((dist[f] - first) / step))
        labels[:, :, k][on[f].T] = _segment_of(path, ds, f)
    origin = planes[int(np.argmin(dist))][0]
    in_plane = [p[0] - float(p[0] @ normal) * normal for p in planes]
    if np.max(np.linalg.norm(np.array(in_plane) - in_plane[0], axis=1)) > 0.05 * min(spacing):
        raise DataError(path, "SEG planes do not lie on one stack (shifted within the plane)")
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return Volume(data=labels, affine=LPS_TO_RAS @ lps, modality="mask", units="class",
                  source="dicom-seg")
