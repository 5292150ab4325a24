"""Deterministic synthetic brain MRI + PET cohorts with a learnable disease signal.

Each subject is a 3D head: an ellipsoidal brain with smooth grey/white texture
and ventricles. Disease (label 1) shows as a mix of two effects whose strength
varies per subject and overlaps with normal ageing in controls, so the task is
learnable but not trivial:

* MRI: enlarged ventricles and thinner cortex (atrophy);
* PET: reduced uptake in a temporo-parietal region (hypometabolism).

`SiteProfile` holds what differs between hospitals (non-IID): scanner
intensity scale and bias, noise level, class balance and cohort size.

With `lesions=True` some subjects also carry a tumour-like lesion, and the cohort a
voxel mask (0 background, 1 enhancing core, 2 oedema rim) for segmentation: bright in
the MRI, the core hot and the rim hypometabolic in the PET, which otherwise follows the
MRI's tissue classes (cortex high, white matter moderate, ventricles low), so that a
network can learn MRI→PET synthesis. `misalign` moves each subject's PET against its
MRI by a small random rotation, translation and scale (misregistered pairs). Lesions and
misalignment draw from their own random stream: a cohort without them is the same,
value for value, as before they existed.

The generator is a pure function of (profile, n, seed). Mocks are made by the
same code from a public profile and a different seed, so a mock never looks at
a private value. This module must never read real patient data.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import affine_transform, gaussian_filter

from datasets.cohort import Cohort


class SiteProfile(BaseModel):
    """Acquisition and population characteristics of one (synthetic) hospital."""

    model_config = ConfigDict(extra="forbid")

    name: str = "neutral"
    mri_scale: float = Field(1.0, gt=0, description="scanner gain for MRI intensities")
    mri_bias: float = Field(0.0, description="additive MRI intensity offset")
    pet_scale: float = Field(1.0, gt=0, description="scanner gain for PET uptake")
    noise: float = Field(0.08, ge=0, description="std of additive Gaussian noise")
    disease_fraction: float = Field(0.5, gt=0, lt=1, description="class balance")
    effect: float = Field(1.0, ge=0, description="strength of the disease signal")
    lesion_fraction: float = Field(0.6, ge=0, le=1,
                                   description="share of subjects with a lesion (lesions=True)")


#: mask values of a synthetic lesion
BACKGROUND, CORE, OEDEMA = 0, 1, 2


NEUTRAL = SiteProfile()

DEMO_PROFILES: dict[str, SiteProfile] = {
    "st-agnes": SiteProfile(name="st-agnes", mri_scale=1.0, mri_bias=0.0, pet_scale=1.0,
                            noise=0.08, disease_fraction=0.5, effect=1.0),
    "riverside": SiteProfile(name="riverside", mri_scale=1.3, mri_bias=0.15, pet_scale=0.8,
                             noise=0.12, disease_fraction=0.3, effect=0.9),
    "northgate": SiteProfile(name="northgate", mri_scale=0.8, mri_bias=-0.1, pet_scale=1.25,
                             noise=0.06, disease_fraction=0.65, effect=1.1),
}


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    return np.meshgrid(*axes, indexing="ij")


def _lesion(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray, np.ndarray]
            ) -> np.ndarray:
    """(D, H, W) uint8 mask of one tumour-like blob inside the brain: an irregular core
    (an ellipsoid whose surface a smooth field perturbs) and an oedema rim around it."""
    z, y, x = grid
    c = rng.uniform(-0.35, 0.35, size=3).astype(np.float32)
    r = rng.uniform(0.22, 0.38, size=3).astype(np.float32)
    dist = np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2)
    wobble = gaussian_filter(rng.normal(size=z.shape).astype(np.float32), sigma=2.0)
    wobble /= np.abs(wobble).max() + 1e-6
    dist = dist * (1.0 + 0.25 * wobble)
    mask = np.zeros(z.shape, dtype=np.uint8)
    mask[dist < 1.0 + rng.uniform(0.4, 0.7)] = OEDEMA
    mask[dist < 1.0] = CORE
    return mask


def _misaligned(volume: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """`volume` under a random rigid-plus-scale motion about its centre: rotation up to
    5°·amount about each axis, translation up to 1.5·amount voxels, scale 1 ± 3 %·amount."""
    angles = np.deg2rad(rng.uniform(-5, 5, size=3) * amount)
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        rot = rot @ r
    matrix = rot * (1.0 + rng.uniform(-0.03, 0.03) * amount)
    centre = (np.array(volume.shape) - 1) / 2.0
    shift = rng.uniform(-1.5, 1.5, size=3) * amount
    offset = centre - matrix @ centre + shift
    return affine_transform(volume, matrix, offset=offset, order=1, mode="constant",
                            cval=0.0).astype(np.float32)


def _subject(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    severity: float,
    profile: SiteProfile,
    lesion: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = grid
    shape = z.shape
    # Head size and position vary per subject.
    r = rng.uniform(0.72, 0.85, size=3).astype(np.float32)
    c = rng.normal(0.0, 0.03, size=3).astype(np.float32)
    dist = np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2)
    brain = dist < 1.0
    cortex = brain & (dist > 0.78 + 0.07 * severity)
    vent_r = 0.16 + 0.14 * severity + rng.normal(0.0, 0.015)
    vdist = np.sqrt(((z - c[0]) / (vent_r * 1.2)) ** 2 + ((y - c[1]) / (vent_r * 0.8)) ** 2
                    + ((x - c[2] - 0.0) / vent_r) ** 2)
    ventricles = vdist < 1.0

    texture = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=1.5)
    texture /= texture.std() + 1e-6
    mri = np.where(brain, 0.75 + 0.08 * texture, 0.0).astype(np.float32)
    mri[cortex] = 0.55 + 0.06 * texture[cortex]
    mri[ventricles] = 0.18

    # PET: uptake high in cortex, moderate in white matter, hypometabolic blob.
    pet = np.where(brain, 0.5 + 0.05 * texture, 0.0).astype(np.float32)
    pet[cortex] = 1.0 + 0.08 * texture[cortex]
    side = rng.choice([-1.0, 1.0])
    blob = np.exp(-(((z - 0.1) ** 2 + (y + 0.35) ** 2 + (x - side * 0.45) ** 2) / 0.06))
    pet *= (1.0 - 0.45 * severity * blob).astype(np.float32)
    pet[ventricles] = 0.05
    if lesion is not None:  # inside the brain only; bright in MRI, core hot in PET
        core, rim = (lesion == CORE) & brain, (lesion == OEDEMA) & brain
        mri[rim] = 0.92 + 0.05 * texture[rim]
        mri[core] = 1.1 + 0.08 * texture[core]
        pet[rim] *= 0.55
        pet[core] = 1.7 + 0.1 * texture[core]
        lesion[~brain] = BACKGROUND

    mri = profile.mri_scale * mri + profile.mri_bias * brain
    pet = profile.pet_scale * pet
    mri += rng.normal(0.0, profile.noise, size=shape).astype(np.float32)
    pet += rng.normal(0.0, profile.noise, size=shape).astype(np.float32)
    return mri.astype(np.float32), pet.astype(np.float32)


def generate_cohort(
    n: int,
    seed: int,
    profile: SiteProfile = NEUTRAL,
    shape: tuple[int, int, int] = (24, 24, 24),
    lesions: bool = False,
    misalign: float = 0.0,
) -> Cohort:
    """Generate `n` subjects deterministically from `seed` under `profile`.

    `lesions`: add tumour-like lesions to `profile.lesion_fraction` of the subjects and a
    mask to the cohort; `misalign` (0 to 1): move each PET against its MRI (see
    `_misaligned`). Neither changes any value of a cohort generated without them."""
    if n < 1:
        raise ValueError(f"cohort size must be at least 1, got {n}")
    if not 0.0 <= misalign <= 1.0:
        raise ValueError(f"misalign must be between 0 and 1, got {misalign}")
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])  # lesions and motion: streams of their own
    motion = np.random.default_rng([seed, 2])
    labels = (rng.random(n) < profile.disease_fraction).astype(np.int64)
    grid = _grid(shape)
    mri = np.empty((n, *shape), dtype=np.float32)
    pet = np.empty((n, *shape), dtype=np.float32)
    masks = np.zeros((n, *shape), dtype=np.uint8) if lesions else None
    for i in range(n):
        if labels[i]:
            severity = float(np.clip(rng.normal(0.55, 0.25), 0.0, 1.0)) * profile.effect
        else:
            severity = float(np.clip(rng.normal(0.12, 0.15), 0.0, 1.0))
        lesion = None
        if masks is not None and extra.random() < profile.lesion_fraction:
            lesion = _lesion(extra, grid)
        mri[i], pet[i] = _subject(rng, grid, min(severity, 1.2), profile, lesion)
        if masks is not None and lesion is not None:
            masks[i] = lesion
        if misalign > 0:
            pet[i] = _misaligned(pet[i], motion, misalign)
    return Cohort(volumes={"mri": mri, "pet": pet}, labels=labels, masks=masks,
                  meta={"mask_classes": 3} if lesions else {})


def generate_mock(n: int, shape: tuple[int, int, int], seed: int = 0,
                  lesions: bool = False) -> Cohort:
    """A mock with the private asset's schema (a mask when the private cohort has one),
    from the public neutral profile only."""
    return generate_cohort(n=n, seed=seed + 7_919, profile=NEUTRAL, shape=shape,
                           lesions=lesions)
