"""Deterministic synthetic brain MRI + PET cohorts with a learnable disease signal.

Each subject is a 3D head: an ellipsoidal brain with smooth grey/white texture
and ventricles. Disease (label 1) shows as a mix of two effects whose strength
varies per subject and overlaps with normal ageing in controls, so the task is
learnable but not trivial:

* MRI: enlarged ventricles and thinner cortex (atrophy);
* PET: reduced uptake in a temporo-parietal region (hypometabolism).

`SiteProfile` holds what differs between hospitals (non-IID): scanner
intensity scale and bias, noise level, class balance and cohort size.

The generator is a pure function of (profile, n, seed). Mocks are made by the
same code from a public profile and a different seed, so a mock never looks at
a private value. This module must never read real patient data.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter

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


def _subject(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    severity: float,
    profile: SiteProfile,
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
) -> Cohort:
    """Generate `n` subjects deterministically from `seed` under `profile`."""
    if n < 1:
        raise ValueError(f"cohort size must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < profile.disease_fraction).astype(np.int64)
    grid = _grid(shape)
    mri = np.empty((n, *shape), dtype=np.float32)
    pet = np.empty((n, *shape), dtype=np.float32)
    for i in range(n):
        if labels[i]:
            severity = float(np.clip(rng.normal(0.55, 0.25), 0.0, 1.0)) * profile.effect
        else:
            severity = float(np.clip(rng.normal(0.12, 0.15), 0.0, 1.0))
        mri[i], pet[i] = _subject(rng, grid, min(severity, 1.2), profile)
    return Cohort(volumes={"mri": mri, "pet": pet}, labels=labels)


def generate_mock(n: int, shape: tuple[int, int, int], seed: int = 0) -> Cohort:
    """A mock with the private asset's schema, from the public neutral profile only."""
    return generate_cohort(n=n, seed=seed + 7_919, profile=NEUTRAL, shape=shape)
