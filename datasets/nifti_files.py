"""Read NIfTI-1/NIfTI-2 files (.nii, .nii.gz) into a `Volume` with nibabel.

The affine is nibabel's (sform when set, else qform), already RAS+ mm; scaling
(scl_slope/scl_inter) is applied. 4D files are refused unless a frame is
chosen, and then only that 3D volume is read. Other formats nibabel can open
(Analyze, MINC, MGH) are refused: their orientation conventions differ.
This module keeps no header text (descrip, aux_file, intent_name): it may hold
names or dates.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from datasets.volume import DataError, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, modality: str = "unknown", frame: int | None = None) -> Volume:
    """One 3D volume from a NIfTI file; `frame` picks a volume of a 4D file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    if not is_nifti_path(path):
        raise DataError(path, "not a NIfTI file name (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI header: {type(exc).__name__}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"{type(img).__name__} is not NIfTI; convert it to NIfTI first")
    shape = img.shape
    try:
        if len(shape) == 3:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        elif len(shape) == 4 and shape[3] == 1:
            data = np.asarray(img.get_fdata(dtype=np.float32))[..., 0]
        elif len(shape) == 4:
            if frame is None:
                raise DataError(path, f"4D file with {shape[3]} volumes; choose one (manifest "
                                "column mri_frame/pet_frame, or --frame) or split it")
            if not 0 <= frame < shape[3]:
                raise DataError(path, f"frame {frame} out of range: the file has {shape[3]} "
                                "volumes (0-based)")
            data = np.asarray(img.dataobj[..., frame], dtype=np.float32)
        else:
            raise DataError(path, f"{len(shape)}D image of shape {shape}: need 3D (or 4D with "
                            "a chosen frame)")
    except DataError:
        raise
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(path, f"image data is truncated or corrupt ({type(exc).__name__})") \
            from None
    if frame is not None and len(shape) == 3 and frame != 0:
        raise DataError(path, f"frame {frame} asked of a 3D file")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise DataError(path, "the affine is singular or not finite: geometry unknown")
    if np.any(np.isinf(data)):
        raise DataError(path, "image holds infinite values")
    nan = int(np.count_nonzero(np.isnan(data)))
    if nan:  # pipelines often mark outside-the-brain as NaN
        data = np.nan_to_num(data, nan=0.0)
    zooms = img.header.get_zooms()[:3]
    tech: dict = {"voxel_size_header": [float(z) for z in zooms]}
    if nan:
        tech["nan_voxels_set_to_0"] = nan
    return Volume(data=data, affine=img.affine, modality=modality,
                  units="as stored", source="nifti", tech=tech)
