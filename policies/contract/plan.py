"""The training plan: what a researcher asks a hospital to run, as a pydantic model.

A plan crosses the trust boundary: the site treats every field as untrusted and
validates it with this same model before use. The plan's hash (canonical JSON)
binds approvals, rounds and privacy accounting at the site, and names the syft
function of each plan version. Never put secrets or data in a plan.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from policies.contract.errors import MedsyftError, error_lines

Slug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
#: constructor arguments: numbers, booleans, short lists of numbers, or short words from a
#: safe character set; passed to the model's constructor inside the sealed tracer only
KwargWord = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{0,64}$")]
KwargList = Annotated[list[int] | list[float], Field(max_length=64)]
KwargValue = int | float | bool | KwargWord | KwargList


class ModelSpec(BaseModel):
    """A `torch.nn.Module` subclass given as source code, plus constructor kwargs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, max_length=100_000)
    class_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    kwargs: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], KwargValue] = \
        Field(default_factory=dict, max_length=32)


class DPSpec(BaseModel):
    """Differential privacy target for the whole plan at each site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_epsilon: float = Field(gt=0, le=100)
    delta: float = Field(gt=0, lt=1e-2)
    max_grad_norm: float = Field(gt=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _site_chooses_accountant(cls, data: Any) -> Any:
        if isinstance(data, dict) and "accountant" in data:
            raise ValueError("accountant: each site composes its ledger with its own "
                             "accountant and derives σ with it; remove this field")
        return data


class Adversarial(BaseModel):
    """The adversarial term of a synthesis plan: a GAN whose generator (the plan's model) is
    federated and whose discriminator stays at each site.

    The discriminator sees the plan's inputs and a target volume (the real one or the
    generator's) stacked as channels, and gives one logit or a map of logits per sample.
    Each site keeps its own discriminator between rounds and never releases it; both
    networks' updates are DP-SGD steps and the site's accounting counts both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    discriminator: ModelSpec
    weight: float = Field(gt=0, le=100, description="λ: the generator's loss is the "
                          "plan's loss plus λ times the non-saturating adversarial loss")


class Augmentation(BaseModel):
    """Site-side augmentation from a fixed set, drawn afresh for each sample at each step
    inside DP-SGD (`sites.sandbox.augment`): random flips, a small random affine (rotation,
    translation, scale), and an intensity gain and offset. The same spatial transform is
    applied to the inputs and to a voxel target (a mask, nearest neighbour; a synthesis
    target, linear); `target_jitter` adds a further small affine to a synthesis target
    alone, so the plan trains for pairs that are not perfectly registered. Each sample's
    augmented copy depends on that sample only: DP-SGD's per-sample bound is unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flip: bool = Field(False, description="flip each spatial axis with probability 1/2")
    rotate_deg: float = Field(0.0, ge=0, le=15, description="rotation about each axis, "
                              "uniform in ±rotate_deg")
    translate_vox: float = Field(0.0, ge=0, le=3, description="shift along each axis, "
                                 "uniform in ±translate_vox voxels")
    scale: float = Field(0.0, ge=0, le=0.15, description="zoom, uniform in 1 ± scale")
    intensity: float = Field(0.0, ge=0, le=0.3, description="input gain in 1 ± intensity "
                             "and offset in ±intensity (per channel)")
    target_jitter: float = Field(0.0, ge=0, le=1, description="synthesize only: a further "
                                 "affine of the target alone, this share of the above "
                                 "ranges (rotation, translation, scale)")

    @property
    def spatial(self) -> bool:
        return self.flip or self.rotate_deg > 0 or self.translate_vox > 0 or self.scale > 0


#: the key prefix of the discriminator's initial parameters in a round's weights
DISCRIMINATOR_PREFIX = "discriminator/"

#: per task: the targets it may train towards and the site-owned losses it may use
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classify": (("label",), ("bce_with_logits", "cross_entropy")),
    "segment": (("mask",), ("dice", "dice_ce")),
    "synthesize": (("mri", "pet"), ("l1", "l2", "ssim_l1")),
}

#: fields added after plans were first approved, left out of the canonical JSON while they
#: hold these values, so that an older plan keeps its hash (and its approval)
_LATER_FIELDS: dict[str, object] = {"task": "classify", "adversarial": None, "augment": None}


class TrainingPlan(BaseModel):
    """Everything a site needs to review and run a federated DP training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Slug
    version: int = Field(1, ge=1, le=10_000)
    dataset: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.\- ]+$")
    researcher: str = Field("", max_length=200,
                            description="submitting account's email; set by the client")
    model: ModelSpec
    inputs: list[Literal["mri", "pet"]] = Field(min_length=1, max_length=2)
    task: Literal["classify", "segment", "synthesize"] = Field(
        "classify", description="classify: the subject's label; segment: its voxel mask; "
        "synthesize: one modality from the others")
    target: Literal["label", "mask", "mri", "pet"] = "label"
    loss: Literal["bce_with_logits", "cross_entropy", "dice", "dice_ce", "l1", "l2",
                  "ssim_l1"] = "bce_with_logits"
    adversarial: Adversarial | None = Field(
        None, description="synthesize only: train the model as a GAN's generator against a "
        "discriminator that each site keeps")
    augment: Augmentation | None = Field(
        None, description="site-side augmentation of each sample inside DP-SGD")
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(ge=1, le=4096, description="expected Poisson batch size")
    local_epochs: int = Field(1, ge=1, le=100)
    rounds: int = Field(ge=1, le=1000)
    dp: DPSpec

    @field_validator("inputs")
    @classmethod
    def _unique_inputs(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each input modality may appear once")
        return v

    @model_validator(mode="after")
    def _task_fits(self) -> TrainingPlan:
        targets, losses = TASKS[self.task]
        if self.target not in targets:
            raise ValueError(f"target: a {self.task} plan trains towards "
                             f"{' or '.join(targets)}, not {self.target!r}")
        if self.loss not in losses:
            raise ValueError(f"loss: a {self.task} plan uses one of {', '.join(losses)} "
                             f"(the site's own), not {self.loss!r}")
        if self.task == "synthesize" and self.target in self.inputs:
            raise ValueError(f"target: {self.target} is also an input; synthesis makes one "
                             "modality from the others")
        if self.adversarial is not None and self.task != "synthesize":
            raise ValueError("adversarial: only a synthesize plan trains a GAN")
        if self.augment is not None and self.augment.target_jitter and \
                self.task != "synthesize":
            raise ValueError("augment.target_jitter: only a synthesize plan has a target "
                             "volume to move against its inputs")
        if self.augment is not None and self.augment.target_jitter and \
                not (self.augment.rotate_deg or self.augment.translate_vox
                     or self.augment.scale):
            raise ValueError("augment.target_jitter: a share of the affine ranges, which "
                             "are all 0; set rotate_deg, translate_vox or scale")
        return self

    def canonical_json(self) -> str:
        """The plan as sorted, compact JSON: the bytes its hash covers and the template
        embeds. Must stay byte-identical across releases (approved plans match on it):
        fields added later are left out while they hold their first default."""
        data = self.model_dump(mode="json")
        for key, default in _LATER_FIELDS.items():
            if data.get(key) == default:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def plan_hash(self) -> str:
        """SHA-256 of `canonical_json()`: what an approval is bound to."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def function_name(self) -> str:
        """One syft function name per plan version (and content)."""
        return f"medsyft_{self.name}_v{self.version}_{self.plan_hash[:10]}"

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def task_word(self) -> str:
        """What a policy's `training.tasks` names this plan: its task, or `gan` for an
        adversarial synthesis."""
        return "gan" if self.adversarial is not None else self.task

    @property
    def updates_per_step(self) -> int:
        """DP-SGD updates each step makes, each reading private data: the discriminator's
        and the generator's for a GAN, else one."""
        return 2 if self.adversarial is not None else 1


class PlanFileError(MedsyftError, ValueError):
    """A plan file that cannot be read; the message names the file and field."""


def load_plan(path: str | Path, researcher: str = "") -> TrainingPlan:
    """Read a plan YAML. `model.source_file` (relative to the plan) may replace `source`.

    Args:
        path: the plan file.
        researcher: fills the plan's `researcher` (the client binds the account email).

    Returns:
        The validated plan.

    Raises:
        PlanFileError: unreadable file, not a mapping, or invalid fields (each named).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlanFileError(f"{path}: cannot read plan: {exc}") from None
    if not isinstance(raw, dict):
        raise PlanFileError(f"{path}: a plan is a mapping of fields, got {type(raw).__name__}")
    model = raw.get("model")
    if isinstance(model, dict) and "source_file" in model:
        src_path = (path.parent / str(model.pop("source_file"))).resolve()
        try:
            model["source"] = src_path.read_text()
        except OSError as exc:
            raise PlanFileError(f"{path}: model.source_file: {exc}") from None
    adversarial = raw.get("adversarial")
    disc = adversarial.get("discriminator") if isinstance(adversarial, dict) else None
    if isinstance(disc, dict) and "source_file" in disc:
        src_path = (path.parent / str(disc.pop("source_file"))).resolve()
        try:
            disc["source"] = src_path.read_text()
        except OSError as exc:
            raise PlanFileError(f"{path}: adversarial.discriminator.source_file: "
                                f"{exc}") from None
    if researcher:
        raw["researcher"] = researcher
    try:
        return TrainingPlan.model_validate(raw)
    except ValidationError as exc:
        raise PlanFileError(format_validation_error(path, exc)) from None


def format_validation_error(path: str | Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid plan"]
    lines.extend(f"  {field}: {msg}" for field, msg in error_lines(exc))
    return "\n".join(lines)


def plan_slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:40]
