"""Read a DICOM series (a folder of slices, or multi-frame files) into one `Volume`.

Slices are ordered by their position along the slice normal, computed from
ImagePositionPatient and ImageOrientationPatient (or the per-frame functional
groups of enhanced multi-frame files), never by file name or InstanceNumber.
Spacing and affine come from the headers; RescaleSlope/RescaleIntercept are
applied per slice; PET in Bq/ml is converted to SUVbw (`datasets.suv`).

Refused with a `DataError` naming the file: unreadable or truncated files,
non-image objects (RT plans, structured reports, waveforms, ...), colour
images, mixed series, inconsistent orientation, pixel spacing or matrix size,
duplicate slice positions and uneven gaps (missing slices).

This module must never put a header value that could identify a person, a
date or an institution into a `Volume`, an error message or a log; it keeps
only `datasets.deid.DICOM_TECHNICAL`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from datasets.deid import technical_fields
from datasets.suv import apply_suv, suv_factors
from datasets.volume import LPS_TO_RAS, DataError, Volume

#: Modalities that are never images we can train on, even when they carry pixels.
NON_IMAGE_MODALITIES = frozenset({
    "RTPLAN", "RTSTRUCT", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "KO", "PR", "REG", "SEG",
    "ECG", "HD", "AU", "DOC", "PLAN", "FID", "RWV", "RESP",
})
MODALITY_NAMES = {"MR": "mri", "PT": "pet"}

_ORIENT_TOL = 1e-4
_GAP_TOL = 0.05  # fraction of the slice spacing


@dataclass
class _Slice:
    path: str
    header: Any
    position: np.ndarray  # ImagePositionPatient, LPS mm
    row_cos: np.ndarray  # direction of increasing column index
    col_cos: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) = PixelSpacing
    pixels: np.ndarray  # (rows, cols) stored values
    slope: float
    intercept: float
    series: str = ""
    modality: str = ""


@dataclass
class _Format:
    """What a file's pixel-format tags say, decided once per distinct set of raw values."""

    dtype: np.dtype | None  # for the direct buffer read; None: let pydicom decode
    series: str
    modality: str
    rows: int
    cols: int
    frames: int


#: Tags whose raw bytes decide how a file is decoded and which series it belongs to.
_FORMAT_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                "PhotometricInterpretation", "SamplesPerPixel", "Modality", "SeriesInstanceUID",
                "NumberOfFrames", "SOPClassUID")


_TAG = {k: BaseTag(tag_for_keyword(k)) for k in (
    *_FORMAT_TAGS, "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "RescaleSlope", "RescaleIntercept")}


def _element(ds: Any, keyword: str) -> Any:
    """The element as stored (raw while pydicom has not converted it), or None.

    Reads pydicom's element dict directly for the hot tags (a keyword lookup per
    call costs as much as the read itself); falls back to the public API.
    """
    store = getattr(ds, "_dict", None)
    if store is not None and keyword in _TAG:
        return store.get(_TAG[keyword])
    return ds.get_item(keyword)


def _raw(ds: Any, keyword: str) -> Any:
    """An element's undecoded value (bytes) when pydicom has not converted it yet."""
    elem = _element(ds, keyword)
    if elem is None:
        return None
    value = elem.value
    return value if isinstance(value, (bytes, str, int, float)) else repr(value)


def _raw_floats(ds: Any, keyword: str) -> list[float] | None:
    """A numeric (DS/IS/FD) element as floats, parsed from its raw text without pydicom's
    per-value objects; None when absent or empty."""
    elem = _element(ds, keyword)
    if elem is None or elem.value in (None, b"", ""):
        return None
    value = elem.value
    try:
        if isinstance(value, bytes):
            if elem.VR not in (None, "DS", "IS"):
                value = ds[keyword].value  # binary VRs: let pydicom decode
            else:
                return [float(v) for v in value.strip(b" \x00").split(b"\\")]
        if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
                value, str):
            return [float(v) for v in value]
        return [float(value)]
    except (TypeError, ValueError):
        return [float("nan")]


def _redacted(exc: BaseException) -> str:
    """An exception as one short line with quoted values removed (they may be header text)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_header(path: Path) -> Any:
    """dcmread with clear refusals; tries files without a DICM preamble too."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except (EOFError, OSError) as exc:
        raise DataError(path, f"cannot read DICOM: file ends early or is corrupt "
                        f"({_redacted(exc)})") from None
    except Exception as exc:
        raise DataError(path, f"cannot read DICOM: {_redacted(exc)}") from None
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:
        raise DataError(path, "not a DICOM file") from None
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DataError(path, "not a DICOM file")
    return ds


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    return str(getattr(uid, "name", uid) or "unknown SOP class")


def _check_image(path: Path, ds: Any) -> None:
    modality = str(ds.get("Modality", "") or "").upper()
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels and "Image Storage" in _sop_name(ds):
        raise DataError(path, f"{_sop_name(ds)} without pixel data: the file is truncated or "
                        "incomplete")
    if modality in NON_IMAGE_MODALITIES or not has_pixels:
        raise DataError(path, f"not an image: {_sop_name(ds)} (Modality {modality or 'none'})")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(path, "colour image (SamplesPerPixel > 1), not a scanner volume")


_NATIVE_LE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                        DeflatedExplicitVRLittleEndian})


def _native_dtype(ds: Any) -> np.dtype | None:
    """The dtype for reading uncompressed little-endian integer pixels straight from the
    buffer, or None when pydicom must decode (compressed, big-endian, float,
    BitsStored < BitsAllocated, colour). A test checks both paths agree."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts not in _NATIVE_LE or "PixelData" not in ds:
        return None
    bits = ds.get("BitsAllocated")
    if bits not in (8, 16, 32) or ds.get("BitsStored") != bits:
        return None
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    signed = ds.get("PixelRepresentation") == 1
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def _pixels(path: Path, ds: Any, dtype: np.dtype | None = None, count: int = 0) -> np.ndarray:
    try:
        if dtype is None:
            return ds.pixel_array
        buf = ds.PixelData
        if len(buf) < count * dtype.itemsize:
            raise DataError(path, "pixel data is truncated or incomplete")
        return np.frombuffer(buf, dtype=dtype, count=count)
    except DataError:
        raise
    except (ValueError, EOFError) as exc:
        if "less than expected" in str(exc) or "doesn't match" in str(exc):
            raise DataError(path, "pixel data is truncated or incomplete") from None
        raise DataError(path, f"cannot decode pixel data: {_redacted(exc)}") from None
    except (RuntimeError, NotImplementedError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", "this transfer syntax")
        raise DataError(path, f"compressed pixel data ({name}) and no installed decoder "
                        f"supports it ({_redacted(exc)})") from None
    except Exception as exc:
        raise DataError(path, f"cannot decode pixel data: {_redacted(exc)}") from None


def _floats(path: Path, value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"{what} is not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DataError(path, f"{what} must hold {n} finite numbers")
    return arr


def _geometry(path: Path, ipp: Any, iop: Any, spacing: Any) -> tuple:
    if ipp is None or iop is None:
        raise DataError(path, "no ImagePositionPatient/ImageOrientationPatient: not a "
                        "cross-sectional image with geometry")
    if spacing is None:
        raise DataError(path, "no PixelSpacing")
    pos = _floats(path, ipp, 3, "ImagePositionPatient")
    row, col, sp = _plane(path, tuple(iop), tuple(spacing))
    return pos, row, col, sp


_PLANES: dict[tuple, tuple] = {}


def _plane(path: Path, iop: tuple, spacing: tuple) -> tuple:
    """Validated direction cosines and spacing; a series shares them, so they are cached."""
    known = _PLANES.get((iop, spacing))
    if known is not None:
        return known
    cos = _floats(path, iop, 6, "ImageOrientationPatient")
    sp = _floats(path, spacing, 2, "PixelSpacing")
    row, col = cos[:3], cos[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(row @ col)) > 1e-3):
        raise DataError(path, "ImageOrientationPatient is not two orthogonal unit vectors")
    if np.any(sp <= 0):
        raise DataError(path, "PixelSpacing must be positive")
    plane = (row / np.linalg.norm(row), col / np.linalg.norm(col), (float(sp[0]), float(sp[1])))
    if len(_PLANES) > 256:
        _PLANES.clear()
    _PLANES[(iop, spacing)] = plane
    return plane


def _rescale(item: Any, fallback: Any) -> tuple[float, float]:
    src = item if item is not None and "RescaleSlope" in item else fallback
    slope = float(src.get("RescaleSlope", 1.0) or 1.0) if src is not None else 1.0
    intercept = float(src.get("RescaleIntercept", 0.0) or 0.0) if src is not None else 0.0
    return slope, intercept


def _group(ds: Any, frame: int, name: str) -> Any:
    """A functional group item for a frame: per-frame first, then shared."""
    for seq_name, idx in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq and len(seq) > idx and name in seq[idx] and seq[idx][name].value:
            return seq[idx][name][0]
    return None


def _format_of(path: Path, ds: Any, cache: dict) -> _Format:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    key = (str(ts), *(_raw(ds, k) for k in _FORMAT_TAGS))
    fmt = cache.get(key)
    if fmt is None:
        _check_image(path, ds)
        fmt = _Format(dtype=_native_dtype(ds), series=str(ds.get("SeriesInstanceUID", "")),
                      modality=str(ds.get("Modality", "") or "").upper(), rows=int(ds.Rows),
                      cols=int(ds.Columns), frames=int(ds.get("NumberOfFrames", 1) or 1))
        cache[key] = fmt
    return fmt


def _slices_of(path: Path, ds: Any, cache: dict | None = None) -> list[_Slice]:
    fmt = _format_of(path, ds, {} if cache is None else cache)
    frames, rows, cols = fmt.frames, fmt.rows, fmt.cols
    pixels = _pixels(path, ds, fmt.dtype, frames * rows * cols)
    if pixels.size != frames * rows * cols:
        raise DataError(path, f"pixel array shape {pixels.shape} does not match "
                        f"{frames} frame(s) of {rows}x{cols}")
    pixels = pixels.reshape(frames, rows, cols)
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        pos, row, col, sp = _geometry(path, _raw_floats(ds, "ImagePositionPatient"),
                                      _raw_floats(ds, "ImageOrientationPatient"),
                                      _raw_floats(ds, "PixelSpacing"))
        slope = (_raw_floats(ds, "RescaleSlope") or [1.0])[0]
        intercept = (_raw_floats(ds, "RescaleIntercept") or [0.0])[0]
        return [_Slice(str(path), ds, pos, row, col, sp, pixels[0], slope, intercept,
                       fmt.series, fmt.modality)]
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise DataError(path, f"multi-frame file ({frames} frames) without per-frame "
                        "functional groups: slice positions unknown")
    out = []
    for f in range(frames):
        plane = _group(ds, f, "PlanePositionSequence")
        orient = _group(ds, f, "PlaneOrientationSequence")
        measures = _group(ds, f, "PixelMeasuresSequence")
        pos, row, col, sp = _geometry(
            path, plane.get("ImagePositionPatient") if plane is not None else None,
            orient.get("ImageOrientationPatient") if orient is not None else None,
            measures.get("PixelSpacing") if measures is not None else ds.get("PixelSpacing"))
        slope, intercept = _rescale(_group(ds, f, "PixelValueTransformationSequence"), ds)
        out.append(_Slice(str(path), ds, pos, row, col, sp, pixels[f], slope, intercept,
                          fmt.series, fmt.modality))
    return out


def _list_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")
    if not files:
        raise DataError(folder, "folder holds no files")
    return files


def _check_series(where: Path, slices: list[_Slice]) -> None:
    series = Counter(s.series for s in {id(s.header): s for s in slices}.values())
    if len(series) > 1:
        sizes = " and ".join(str(c) for c in sorted(series.values(), reverse=True))
        raise DataError(where, f"mixed series: {len(series)} series in one folder "
                        f"({sizes} files); put each series in its own folder")
    mods = {s.modality for s in slices}
    if len(mods) > 1:
        raise DataError(where, f"mixed modalities in one series: {', '.join(sorted(mods))}")
    ref = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != ref.pixels.shape:
            raise DataError(s.path, f"matrix {s.pixels.shape[0]}x{s.pixels.shape[1]} differs "
                            f"from {ref.pixels.shape[0]}x{ref.pixels.shape[1]} in the series")
        if (np.max(np.abs(s.row_cos - ref.row_cos)) > _ORIENT_TOL
                or np.max(np.abs(s.col_cos - ref.col_cos)) > _ORIENT_TOL):
            raise DataError(s.path, "ImageOrientationPatient differs from the rest of the series")
        if not np.allclose(s.spacing, ref.spacing, rtol=1e-4, atol=1e-5):
            raise DataError(s.path, f"PixelSpacing {s.spacing[0]:g}x{s.spacing[1]:g} differs "
                            f"from {ref.spacing[0]:g}x{ref.spacing[1]:g} in the series")


def _order(where: Path, slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Sort along the normal; return the slices and the step vector between them (LPS mm)."""
    normal = np.cross(slices[0].row_cos, slices[0].col_cos)
    dist = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist[order]
    if len(slices) == 1:
        thick = float(slices[0].header.get("SpacingBetweenSlices")
                      or slices[0].header.get("SliceThickness") or 1.0)
        return slices, normal * abs(thick)
    gaps = np.diff(dist)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise DataError(where, f"two slices at the same position ({dist[i]:.2f} mm along the "
                        "normal): repeated acquisition, echoes or phases in one series")
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > _GAP_TOL * step)
    if bad.size:
        i = int(bad[0])
        missing = gaps[i] / step - 1.0
        what = (f"about {missing:.0f} missing slice(s)" if missing > 0.5
                else "uneven slice spacing")
        raise DataError(where, f"{what}: gap of {gaps[i]:.2f} mm between slices at "
                        f"{dist[i]:.2f} and {dist[i + 1]:.2f} mm (spacing {step:.2f} mm)")
    steps = np.diff(np.stack([s.position for s in slices]), axis=0)
    mean_step = steps.mean(axis=0)
    if np.max(np.linalg.norm(steps - mean_step, axis=1)) > _GAP_TOL * step:
        raise DataError(where, "slice positions do not lie on one line (sheared or mixed stacks)")
    return slices, mean_step


def _assemble(where: Path, slices: list[_Slice], source: str) -> Volume:
    _check_series(where, slices)
    slices, step = _order(where, slices)
    ref = slices[0]
    rows, cols = ref.pixels.shape
    data = np.empty((cols, rows, len(slices)), dtype=np.float32)
    for k, s in enumerate(slices):
        plane = s.pixels.T.astype(np.float32)
        if s.slope != 1.0:
            plane *= np.float32(s.slope)
        if s.intercept != 0.0:
            plane += np.float32(s.intercept)
        data[:, :, k] = plane
    lps = np.eye(4)
    lps[:3, 0] = ref.row_cos * ref.spacing[1]
    lps[:3, 1] = ref.col_cos * ref.spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = ref.position
    modality = str(ref.header.get("Modality", "") or "").upper()
    vol = Volume(data=data, affine=LPS_TO_RAS @ lps,
                 modality=MODALITY_NAMES.get(modality, modality.lower() or "unknown"),
                 units="scanner units", source=source, tech=technical_fields(ref.header))
    if modality == "PT":
        headers = [s.header for s in slices]
        vol.suv = suv_factors(str(where), headers)
        apply_suv(vol.data, vol.suv)
        vol.units = vol.suv.units_out
    elif modality == "CT":
        vol.units = "HU"
    return vol


def read_dicom(path: str | Path) -> Volume:
    """A series folder, a multi-frame file or a single slice as one volume."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_dir():
        files = _list_files(path)
        slices: list[_Slice] = []
        formats: dict = {}
        for f in files:
            slices.extend(_slices_of(f, read_header(f), formats))
        multi = len(slices) > len(files)
        return _assemble(path, slices, "dicom-multiframe" if multi else "dicom-series")
    ds = read_header(path)
    slices = _slices_of(path, ds)
    return _assemble(path, slices, "dicom-multiframe" if len(slices) > 1 else "dicom-slice")
