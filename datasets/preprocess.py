"""Common preprocessing: RAS reorientation, resampling onto one grid, MRI/PET pairing,
intensity normalisation.

Every subject ends on the same voxel grid: RAS-aligned, `spacing_mm`, `shape`,
centred on the subject's reference volume (the MRI when there is one). The PET
is resampled onto that same grid through the world coordinates of both
affines, so pairing and resampling are one interpolation each. Normalisation
is per volume, from that volume's own foreground, so it never mixes subjects.
This module computes on pixel arrays only; it must never log or print them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import affine_transform

from datasets.volume import Volume

RAS = axcodes2ornt(("R", "A", "S"))


class Preprocessing(BaseModel):
    """Target grid and normalisation; a field left empty keeps the reference volume's value."""

    model_config = ConfigDict(extra="forbid")

    spacing_mm: tuple[float, float, float] | None = Field(
        None, description="voxel size of the published grid (mm)")
    shape: tuple[int, int, int] | None = Field(None, description="voxels along R, A, S")
    mri_norm: Literal["zscore", "minmax", "none"] = Field(
        "zscore", description="MRI: z-score over the head foreground, percentile min-max, none")
    pet_norm: Literal["mean", "zscore", "none"] = Field(
        "mean", description="PET: divide by the foreground mean (whole-brain SUVR), z-score, none")
    interpolation: Literal[0, 1, 3] = Field(1, description="spline order: 0 nearest, 1 linear")

    def describe(self) -> str:
        sp = "native" if self.spacing_mm is None else "x".join(f"{s:g}" for s in self.spacing_mm)
        sh = "native" if self.shape is None else "x".join(str(s) for s in self.shape)
        return (f"RAS, spacing {sp} mm, shape {sh}, MRI {self.mri_norm}, PET {self.pet_norm}, "
                f"interpolation order {self.interpolation}")


def reorient_ras(vol: Volume) -> Volume:
    """Closest canonical RAS orientation: axis permutation and flips only (lossless)."""
    ornt = io_orientation(vol.affine)
    if np.array_equal(ornt, RAS):
        return vol
    transform = ornt_transform(ornt, RAS)
    data = np.ascontiguousarray(apply_orientation(vol.data, transform))
    affine = vol.affine @ inv_ornt_aff(transform, vol.data.shape)
    return Volume(data=data, affine=affine, modality=vol.modality, units=vol.units,
                  source=vol.source, tech=vol.tech, suv=vol.suv)


def target_grid(ref: Volume, pp: Preprocessing) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS-aligned affine and shape of the output grid, centred on `ref`."""
    ref = reorient_ras(ref)
    extent = np.array(ref.spacing) * np.array(ref.shape)
    if pp.spacing_mm is None and pp.shape is None and not ref.oblique:
        return ref.affine.copy(), ref.shape
    if pp.spacing_mm is not None:
        spacing = np.array(pp.spacing_mm, dtype=np.float64)
    elif pp.shape is not None:
        spacing = extent / np.array(pp.shape)
    else:
        spacing = np.array(ref.spacing)
    if pp.shape is not None:
        shape = tuple(int(s) for s in pp.shape)
    else:
        shape = tuple(max(1, int(round(e))) for e in extent / spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = ref.center() - spacing * (np.array(shape, dtype=np.float64) - 1.0) / 2.0
    return affine, shape  # type: ignore[return-value]


def resample(vol: Volume, affine: np.ndarray, shape: tuple[int, int, int],
             order: int = 1) -> Volume:
    """`vol` on the grid (affine, shape) by world coordinates; outside the field of view is 0."""
    if vol.shape == tuple(shape) and np.allclose(vol.affine, affine, atol=1e-6):
        data = vol.data.copy()
    else:
        m = np.linalg.inv(vol.affine) @ affine
        data = affine_transform(vol.data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                                order=order, mode="constant", cval=0.0, prefilter=order > 1)
    return Volume(data=data.astype(np.float32, copy=False), affine=affine, modality=vol.modality,
                  units=vol.units, source=vol.source, tech=vol.tech, suv=vol.suv)


def _foreground(data: np.ndarray) -> np.ndarray:
    mask = data > data.mean()
    return mask if mask.any() else np.ones_like(data, dtype=bool)


def normalise(data: np.ndarray, method: str) -> np.ndarray:
    """Intensity normalisation of one volume from its own values only."""
    if method == "none":
        return data.astype(np.float32, copy=False)
    if method == "minmax":
        lo, hi = np.percentile(data, [0.5, 99.5])
        return ((data - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)
    fg = data[_foreground(data)]
    if method == "zscore":
        return ((data - fg.mean()) / max(float(fg.std()), 1e-6)).astype(np.float32)
    if method == "mean":
        return (data / max(float(fg.mean()), 1e-6)).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}")


def normalise_volumes(volumes: dict[str, np.ndarray], methods: dict[str, str]
                      ) -> dict[str, np.ndarray]:
    """Normalise stacks (N, D, H, W) per modality, each volume from its own values."""
    return {m: (np.stack([normalise(v, methods[m]) for v in stack])
                if methods.get(m, "none") != "none" else stack)
            for m, stack in volumes.items()}


def methods_of(pp: Preprocessing) -> dict[str, str]:
    return {"mri": pp.mri_norm, "pet": pp.pet_norm}


def prepare_subject(volumes: dict[str, Volume], pp: Preprocessing,
                    grid: tuple[np.ndarray, tuple] | None = None) -> dict[str, np.ndarray]:
    """Reorient, resample onto the reference grid (`output_grid` unless given), pair and
    normalise one subject's volumes."""
    affine, shape = grid if grid is not None else output_grid(volumes, pp)
    out: dict[str, np.ndarray] = {}
    for name, vol in volumes.items():
        on_grid = resample(reorient_ras(vol), affine, shape, order=pp.interpolation)
        method = pp.mri_norm if name == "mri" else pp.pet_norm
        out[name] = normalise(on_grid.data, method)
    return out


def output_grid(volumes: dict[str, Volume], pp: Preprocessing) -> tuple[np.ndarray, tuple]:
    """The grid `prepare_subject` puts this subject on (for reports and checks)."""
    ref = volumes.get("mri") or next(iter(volumes.values()))
    return target_grid(ref, pp)
