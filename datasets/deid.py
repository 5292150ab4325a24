"""De-identification by allowlist: which header fields may leave a reader at all.

Nothing from a DICOM or NIfTI header is kept unless its keyword is listed here.
Every listed field is technical (acquisition physics or geometry) and cannot name
a person, a date or an institution. Free-text fields (SeriesDescription,
ProtocolName, descrip, ...) are excluded on purpose: scanners and people put
names and dates in them. Dates, times, UIDs, device serials and station names
are excluded. This module must never widen the list on a caller's request.
"""

from __future__ import annotations

from typing import Any

#: DICOM keywords copied (as plain numbers or short codes) into `Volume.tech`.
DICOM_TECHNICAL: frozenset[str] = frozenset({
    "Modality",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "SliceThickness",
    "Units",
    "DecayCorrection",
    "BitsStored",
})

#: Fields a published cohort asset may carry in its `meta` dict.
ASSET_META: frozenset[str] = frozenset({
    "orientation", "spacing_mm", "shape", "units", "normalisation", "sources",
    "modalities", "preprocessing", "mask_classes",
})


def _plain(value: Any) -> Any:
    """A header value as float, int or short code; None when it is anything else."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
        return int(number) if number.is_integer() else number
    except (TypeError, ValueError):
        pass
    text = str(value)
    if len(text) <= 16 and text.replace("_", "").replace(" ", "").isalnum():
        return text.upper()
    return None


def technical_fields(header: Any) -> dict[str, Any]:
    """The allowlisted technical fields of a pydicom dataset, nothing else."""
    out: dict[str, Any] = {}
    for key in sorted(DICOM_TECHNICAL):
        value = _plain(header.get(key)) if key in header else None
        if value is not None:
            out[key] = value
    return out


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop any asset meta key that is not allowlisted (defence in depth)."""
    return {k: v for k, v in meta.items() if k in ASSET_META}
