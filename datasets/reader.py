"""Open any supported imaging input as one `Volume`: DICOM folder or file, NIfTI file.

Dispatch is by what the path is (folder, .nii/.nii.gz name, else DICOM), and
the modality found in the file must agree with the one the caller expects.
This module must never let a reader's exception escape as anything but a
`DataError` with one clear line.
"""

from __future__ import annotations

from pathlib import Path

from datasets.dicom_series import read_dicom
from datasets.nifti_files import is_nifti_path, read_nifti
from datasets.volume import DataError, Volume

#: File kinds nibabel can open whose conventions we do not take on trust.
OTHER_FORMATS = {".hdr": "Analyze", ".img": "Analyze", ".mnc": "MINC", ".mgz": "MGH",
                 ".mgh": "MGH", ".nrrd": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}


def read_image(path: str | Path, modality: str | None = None,
               frame: int | None = None) -> Volume:
    """Read `path`; when `modality` ('mri'/'pet') is given, refuse anything else."""
    path = Path(path)
    try:
        kind = OTHER_FORMATS.get(path.suffix.lower())
        if path.is_file() and kind:
            raise DataError(path, f"{kind} files are not supported; convert to NIfTI (.nii.gz)")
        if path.is_file() and is_nifti_path(path):
            vol = read_nifti(path, modality=modality or "unknown", frame=frame)
        else:
            if frame is not None:
                raise DataError(path, "a frame can only be chosen in a 4D NIfTI file")
            vol = read_dicom(path)
    except DataError:
        raise
    except MemoryError:
        raise DataError(path, "image too large for memory") from None
    except Exception as exc:  # a reader bug or an input nobody foresaw: still one line
        raise DataError(path, f"cannot read ({type(exc).__name__})") from None
    if modality is not None and vol.modality != modality:
        raise DataError(path, f"expected {modality.upper()} but the file holds "
                        f"{vol.modality.upper()} images")
    return vol
