"""The in-memory cohort: volumes, labels and the asset layout published on a datasite.

A `Cohort` is what a site holds privately. This module converts it to and from
the plain dict that syft stores as an asset, and describes it in words that
reveal nothing but schema (modalities, shapes, N). It must never log or print
pixel values or labels.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from datasets.deid import clean_meta

if TYPE_CHECKING:
    from policies.schema import Release

MODALITIES: tuple[str, ...] = ("mri", "pet")
ASSET_FORMAT = "medsyft-cohort/1"
#: the largest class a voxel mask may hold (0 is background)
MAX_MASK_CLASS = 15
#: what a plan may train towards: the subject's label, its mask, or a modality
TARGETS: tuple[str, ...] = ("label", "mask", *MODALITIES)


@dataclass
class Cohort:
    """Volumes per modality, each (N, D, H, W) float32, labels (N,) int64, and optionally
    a voxel mask (N, D, H, W) uint8 on the volumes' grid (0 background, 1.. classes)."""

    volumes: dict[str, np.ndarray]
    labels: np.ndarray
    cohort_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    meta: dict[str, Any] = field(default_factory=dict)  # allowlisted technical facts only
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.meta = clean_meta(self.meta)
        if not self.volumes:
            raise ValueError("a cohort needs at least one modality")
        n = len(self.labels)
        for name, vol in self.volumes.items():
            if name not in MODALITIES:
                raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}")
            if vol.ndim != 4 or vol.shape[0] != n:
                raise ValueError(f"{name}: expected shape (N={n}, D, H, W), got {vol.shape}")
        if self.masks is not None:
            grid = (n, *next(iter(self.volumes.values())).shape[1:])
            if tuple(self.masks.shape) != grid:
                raise ValueError(f"mask: expected shape {grid} (the volumes' grid), got "
                                 f"{tuple(self.masks.shape)}")
            if self.masks.size and int(self.masks.max()) > MAX_MASK_CLASS:
                raise ValueError(f"mask: classes are 0..{MAX_MASK_CLASS}")
            self.masks = np.ascontiguousarray(self.masks, dtype=np.uint8)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        first = next(iter(self.volumes.values()))
        return tuple(int(s) for s in first.shape[1:])  # type: ignore[return-value]

    def stacked(self, modalities: list[str]) -> np.ndarray:
        """(N, C, D, H, W) float32 with one channel per requested modality."""
        missing = [m for m in modalities if m not in self.volumes]
        if missing:
            raise KeyError(f"cohort has no modality {missing}; it has {sorted(self.volumes)}")
        return np.stack([self.volumes[m] for m in modalities], axis=1).astype(np.float32)

    def target(self, name: str) -> np.ndarray:
        """What a plan trains towards, per subject: labels (N,) int64, the mask (N, D, H, W)
        int64, or a modality's volumes (N, D, H, W) float32."""
        if name == "label":
            return self.labels
        if name == "mask":
            if self.masks is None:
                raise KeyError("the cohort has no mask")
            return self.masks.astype(np.int64)
        if name in self.volumes:
            return self.volumes[name].astype(np.float32)
        raise KeyError(f"cohort has no {name!r}; it has label, {', '.join(self.volumes)}"
                       + (", mask" if self.masks is not None else ""))

    @property
    def asset_keys(self) -> list[str]:
        return sorted(self.volumes) + (["mask"] if self.masks is not None else [])

    @property
    def mask_classes(self) -> int:
        """How many classes the mask holds, background included (0 without a mask): as
        declared at publish (meta `mask_classes`), never read from the private values."""
        if self.masks is None:
            return 0
        return int(self.meta.get("mask_classes") or MAX_MASK_CLASS + 1)

    def to_asset(self) -> dict:
        """The plain dict stored as a syft asset (private or mock)."""
        asset = {
            "format": ASSET_FORMAT,
            "cohort_id": self.cohort_id,
            "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
            "meta": clean_meta(self.meta),
            **{m: np.ascontiguousarray(v, dtype=np.float32) for m, v in self.volumes.items()},
        }
        if self.masks is not None:
            asset["mask"] = np.ascontiguousarray(self.masks, dtype=np.uint8)
        return asset

    @classmethod
    def from_asset(cls, asset: dict) -> Cohort:
        if not isinstance(asset, dict) or asset.get("format") != ASSET_FORMAT:
            raise ValueError("not a medsyft cohort asset")
        volumes = {m: np.asarray(asset[m], dtype=np.float32) for m in MODALITIES if m in asset}
        return cls(
            volumes=volumes,
            labels=np.asarray(asset["labels"], dtype=np.int64),
            cohort_id=str(asset["cohort_id"]),
            meta=dict(asset.get("meta") or {}),
            masks=None if asset.get("mask") is None else np.asarray(asset["mask"]),
        )

    def subset(self, index: np.ndarray) -> Cohort:
        """The subjects at `index`, in that order (same cohort id and meta)."""
        index = np.asarray(index, dtype=np.int64)
        return Cohort(volumes={m: v[index] for m, v in self.volumes.items()},
                      labels=self.labels[index], cohort_id=self.cohort_id, meta=dict(self.meta),
                      masks=None if self.masks is None else self.masks[index])

    def label_counts(self) -> dict[int, int]:
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def describe(self, release: Release | None = None, public_n: int | None = None) -> str:
        """Schema-only description: modalities, shape, spacing, and the size as far as the
        release rule allows: exact N and label counts (`exact`), the DP count `public_n`
        rounded (`rounded`; no label counts, which would be exact counts of parts of N),
        or nothing (`hidden`)."""
        d, h, w = self.volume_shape
        mods = ", ".join(m.upper() for m in self.volumes)
        if release is None or release.sample_count == "exact":
            n = self.n if public_n is None else public_n
            per = ", ".join(f"label {k}: {v}" for k, v in self.label_counts().items())
            who = f"{n} subjects ({per})"
        elif release.sample_count == "rounded" and public_n is not None:
            who = f"about {release.count(public_n)} subjects (a differentially private count)"
        else:
            who = "subjects (count withheld by policy)"
        grid = f"each volume {d}x{h}x{w} float32"
        if self.meta.get("spacing_mm"):
            sp = "x".join(f"{float(s):g}" for s in self.meta["spacing_mm"])
            grid += f", {sp} mm voxels, {self.meta.get('orientation', 'RAS')}"
        units = self.meta.get("units") or {}
        unit_text = "; ".join(f"{m.upper()} {u}" for m, u in units.items())
        if self.masks is not None:
            grid += f"; a voxel mask on the same grid (uint8, classes 0..{self.mask_classes - 1})"
        return (
            f"{who}; modalities: {mods}; {grid}"
            + (f"; values: {unit_text}" if unit_text else "")
            + f" (asset keys: {', '.join(self.asset_keys)}, labels int64 0=control "
            "1=disease)."
        )


def holdout_size(labels: np.ndarray, fraction: float) -> int:
    """How many subjects `holdout_split` keeps out at this fraction."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return int(sum(int(round(c * fraction)) for c in counts))


def holdout_split(labels: np.ndarray, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), each sorted: per label, a random
    `round(fraction × count)` of its subjects are held out (stratified, so the audit's
    non-members look like its members). The same labels, fraction and seed give the same
    split, which is how the site recomputes it from the seed it recorded at publish."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        k = int(round(len(idx) * fraction))
        held.append(rng.permutation(idx)[:k])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), out)
    return train.astype(np.int64), out.astype(np.int64)
