"""`medsyft data inspect`: what an imaging input holds, for the data owner's eyes.

Reports modality, shape, spacing, orientation, value range, units and the PET
SUV factors. The report stays on the data owner's terminal; it is never
published. It holds no identifying header field (only `datasets.deid`'s
allowlist), and no pixel values beyond the minimum and maximum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from datasets.reader import read_image
from datasets.suv import SuvFactors


class InspectReport(BaseModel):
    path: str
    source: str
    modality: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    oblique: bool
    value_min: float
    value_max: float
    units: str
    suv: SuvFactors | None = None
    technical: dict[str, Any] = {}

    def rows(self) -> list[tuple[str, str]]:
        sp = " x ".join(f"{s:.4g}" for s in self.spacing_mm)
        out = [
            ("source", self.source),
            ("modality", self.modality.upper()),
            ("shape", " x ".join(str(s) for s in self.shape)),
            ("spacing (mm)", sp),
            ("orientation", self.orientation + (" (oblique)" if self.oblique else "")),
            ("value range", f"{self.value_min:.6g} .. {self.value_max:.6g} {self.units}"),
        ]
        if self.suv is not None:
            out.append(("SUV", self.suv.summary()))
        for k, v in self.technical.items():
            out.append((k, str(v)))
        return out


def inspect_path(path: str | Path, frame: int | None = None) -> InspectReport:
    vol = read_image(path, frame=frame)
    return InspectReport(
        path=str(path), source=vol.source, modality=vol.modality, shape=vol.shape,
        spacing_mm=vol.spacing, orientation=vol.orientation, oblique=vol.oblique,
        value_min=float(np.min(vol.data)), value_max=float(np.max(vol.data)), units=vol.units,
        suv=vol.suv, technical=vol.tech)
