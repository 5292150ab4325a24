"""One image volume in world space, and the error every reader raises.

A `Volume` is a 3D float32 array indexed (i, j, k) with a 4x4 affine that maps
voxel indices to RAS+ millimetres (the NIfTI/nibabel convention; DICOM's LPS is
converted on read). `tech` holds only allowlisted technical header fields (see
`datasets.deid`). This module must never hold or print patient identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import aff2axcodes

from policies.contract.errors import MedsyftError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DataError(MedsyftError, ValueError):
    """An input that cannot be used, with a message naming the file and the reason.

    Messages hold paths, technical facts and counts only, never header values
    that could identify a person, a date or an institution.
    """

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.reason = message
        super().__init__(f"{path}: {message}" if path is not None else message)


@dataclass
class Volume:
    """A 3D image with its voxel-to-RAS affine (millimetres)."""

    data: np.ndarray
    affine: np.ndarray
    modality: str  # "mri" or "pet" (or the DICOM modality for other images)
    units: str = "unknown"
    source: str = ""  # "dicom-series", "dicom-multiframe" or "nifti"
    tech: dict[str, Any] = field(default_factory=dict)
    suv: Any = None  # datasets.suv.SuvFactors when PET values were converted to SUVbw

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"a volume is 3D, got shape {self.data.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore

    @property
    def orientation(self) -> str:
        """Closest anatomical axis codes, e.g. 'RAS' or 'LPS'."""
        return "".join(aff2axcodes(self.affine))

    @property
    def oblique(self) -> bool:
        """True when the voxel axes are not aligned with the world axes."""
        cosines = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        return bool(np.max(1.0 - np.max(np.abs(cosines), axis=0)) > 1e-4)

    def center(self) -> np.ndarray:
        """World coordinate (mm) of the centre of the volume."""
        idx = (np.array(self.shape, dtype=np.float64) - 1.0) / 2.0
        return self.affine[:3, :3] @ idx + self.affine[:3, 3]
