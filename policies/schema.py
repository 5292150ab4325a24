"""The site policy file (YAML, `version: 1`) as pydantic models, and its loader.

A policy says who may train on which dataset, with how much privacy budget,
under which training limits, with which model code, what a run may release,
and how requests are approved. Unknown keys are errors everywhere
(`extra="forbid"`) and duplicate keys are errors too: a typo must never
silently weaken a policy. Every load error names the file, the line and the
field path. Importing this module must stay instant (no torch, no syft).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.contract.errors import MedsyftError
from policies.contract.monai_nets import MONAI_NETS

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]

# torch.nn layers and functional ops a model may use unless the policy narrows or widens it.
# No BatchNorm (mixes samples within a batch), nothing that loads or saves.
DEFAULT_LAYERS: tuple[str, ...] = (
    "Module", "Sequential", "ModuleList", "ModuleDict", "Identity", "Linear", "Bilinear",
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "GroupNorm", "LayerNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh", "Softplus",
    "Softmax", "LogSoftmax", "Flatten", "Unflatten", "Upsample", "Embedding",
)
DEFAULT_FUNCTIONS: tuple[str, ...] = (
    # torch.nn.functional
    "relu", "leaky_relu", "elu", "gelu", "silu", "mish", "sigmoid", "tanh", "softplus",
    "softmax", "log_softmax", "dropout", "dropout3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool3d", "interpolate", "pad", "linear", "conv3d",
    "group_norm", "layer_norm", "instance_norm", "normalize",
    # torch
    "cat", "stack", "flatten", "reshape", "relu", "sigmoid", "tanh", "exp", "log", "abs",
    "clamp", "sqrt", "mean", "sum", "amax", "amin", "zeros_like", "ones_like", "where",
    "matmul", "einsum", "transpose", "permute", "squeeze", "unsqueeze", "chunk", "split",
    "float32",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Access(_Strict):
    """Who may submit plans on a dataset, and until when."""

    researchers: list[str] = Field(default_factory=list,
                                   description="researcher emails allowed (exact, any case)")
    domains: list[str] = Field(default_factory=list,
                               description="email domains allowed; glob patterns such as "
                                           "'*.nhs.uk' match subdomains")
    institutions: list[str] = Field(default_factory=list,
                                    description="if set, the account's institution must be "
                                                "one of these")
    expires: date | None = Field(None, description="access ends after this day")

    def email_allowed(self, email: str) -> bool:
        email = email.strip().lower()
        if email in {r.strip().lower() for r in self.researchers}:
            return True
        domain = email.rpartition("@")[2]
        return bool(domain) and any(fnmatch.fnmatchcase(domain, d.lower())
                                    for d in self.domains)

    def institution_allowed(self, institution: str | None) -> bool:
        if not self.institutions:
            return True
        return (institution or "").strip().lower() in {i.strip().lower()
                                                       for i in self.institutions}


class Privacy(_Strict):
    delta_max: float = Field(gt=0, lt=1e-2, description="largest δ a plan may use")
    epsilon_per_plan: float = Field(gt=0, le=100, description="cap on one plan's ε target")
    epsilon_total: float = Field(gt=0, le=1000, description="cap on a researcher's ε over all "
                                                          "their plans on this dataset")
    min_noise_multiplier: float = Field(0.3, ge=0, description="smallest σ a plan may get")
    max_grad_norm: float = Field(10.0, gt=0, description="largest clipping norm C")
    accountant: Literal["rdp", "prv", "pld"] | None = Field(
        None, description="the one accountant this dataset's ledgers compose with (σ is "
                          "derived with it too); default pld when the cohort size is public "
                          "(replace-one adjacency), rdp when it is private")

    @model_validator(mode="before")
    @classmethod
    def _no_accountant_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and "accountants" in data:
            raise ValueError("'accountants' was replaced by 'accountant' (one accountant per "
                             "ledger): write e.g. accountant: rdp, or leave it out")
        return data

    @model_validator(mode="after")
    def _total_covers_plan(self) -> Privacy:
        if self.epsilon_total < self.epsilon_per_plan:
            raise ValueError("epsilon_total must be at least epsilon_per_plan")
        return self


class BatchRange(_Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> BatchRange:
        if self.min > self.max:
            raise ValueError("batch_size.min must not exceed batch_size.max")
        return self


class Training(_Strict):
    max_rounds: int = Field(ge=1, le=10_000)
    max_local_epochs: int = Field(10, ge=1, le=1000)
    batch_size: BatchRange = Field(default_factory=BatchRange)
    max_parameters: int = Field(10_000_000, ge=1)
    max_activation_mib: int = Field(
        2048, ge=1, description="activation memory of one sample through the training graph "
                                "(forward and backward), as the site measures it")
    max_wall_time_s: int = Field(3600, ge=10, description="wall time of one round at the site")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tasks: list[Literal["classify", "segment", "synthesize", "gan"]] = Field(
        default_factory=lambda: ["classify", "segment", "synthesize", "gan"], min_length=1,
        description="what plans may train on this dataset: classify (the label), segment "
                    "(the voxel mask), synthesize (one modality from the others), gan "
                    "(synthesis against a discriminator each site keeps)")


class ModelCode(_Strict):
    layers: list[Identifier] = Field(default_factory=lambda: list(DEFAULT_LAYERS),
                                     description="torch.nn classes a model may use")
    functions: list[Identifier] = Field(default_factory=lambda: list(DEFAULT_FUNCTIONS),
                                        description="torch / torch.nn.functional functions")
    monai_nets: list[Identifier] = Field(
        default_factory=list, description="MONAI networks (monai.networks.nets.NAME) a model "
        "may build; none unless named: the layers they build are not checked against "
        "`layers`, only their traced graph against the site's operators")

    @field_validator("monai_nets")
    @classmethod
    def _known_monai_nets(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - MONAI_NETS)
        if unknown:
            raise ValueError(f"unknown MONAI network(s) {', '.join(unknown)}; medsyft allows "
                             f"{', '.join(sorted(MONAI_NETS))}")
        return v


class Release(_Strict):
    """What a run may reveal besides DP-noised weights: the cohort size and timing.

    `exact`: N is public and ε is stated under replace-one adjacency. `rounded` and
    `hidden`: N is private and ε is stated under add/remove adjacency; what is released
    depends on N only through one DP count Ñ = N + 𝒩(0, count_noise²), drawn once per
    published cohort and charged to every ledger on it (q = B/Ñ reveals Ñ). `rounded`
    sends Ñ rounded to `round_to` as the round's sample count; `hidden` sends none.
    """

    sample_count: Literal["exact", "rounded", "hidden"] = "exact"
    round_to: int = Field(10, ge=2, le=10_000, description="multiple used when 'rounded'")
    count_noise: float = Field(10.0, ge=1.0, le=10_000,
                               description="standard deviation, in subjects, of the DP count "
                                           "of a private cohort size")
    pad_seconds: int = Field(0, ge=0, le=86_400,
                             description="a round's duration is padded up to a multiple of "
                                         "this (0: not padded)")

    @property
    def adjacency(self) -> Literal["add_remove", "replace_one"]:
        """The neighbouring relation ε is stated under on this dataset."""
        return "replace_one" if self.sample_count == "exact" else "add_remove"

    def count(self, n: int) -> int | None:
        """A count as this rule releases it: exact, rounded to a multiple (never 0), or None.
        Under `rounded`, `n` must already be the DP count."""
        if self.sample_count == "exact":
            return n
        if self.sample_count == "rounded":
            return max(self.round_to, int(round(n / self.round_to)) * self.round_to)
        return None


class Audit(_Strict):
    """Subjects kept out of training for the data owner's privacy audit."""

    holdout_fraction: float = Field(0.0, ge=0.0, le=0.5,
                                    description="share of subjects held out of training at "
                                                "publish time (fixed then; 0: none)")


class DatasetPolicy(_Strict):
    access: Access
    privacy: Privacy
    training: Training
    model_code: ModelCode = Field(default_factory=ModelCode)
    release: Release = Field(default_factory=Release)
    audit: Audit = Field(default_factory=Audit)

    @model_validator(mode="after")
    def _accountant_fits_relation(self) -> DatasetPolicy:
        if self.release.adjacency == "replace_one" and self.privacy.accountant in ("rdp", "prv"):
            raise ValueError(
                f"privacy.accountant: {self.privacy.accountant} states ε under add/remove "
                "adjacency only, but release.sample_count: exact makes the cohort size "
                "public (replace-one); use accountant: pld, or sample_count: rounded/hidden")
        return self

    @property
    def ledger_accountant(self) -> Literal["rdp", "prv", "pld"]:
        """The accountant this dataset's ledgers compose with."""
        if self.privacy.accountant is not None:
            return self.privacy.accountant
        return "pld" if self.release.adjacency == "replace_one" else "rdp"


class SitePolicy(_Strict):
    version: Literal[1]
    approval: Literal["manual", "auto"] = "manual"
    approvals_required: Literal[1, 2] = 1
    reviewers: list[str] = Field(min_length=1, description="data owners who may approve")
    datasets: dict[str, DatasetPolicy] = Field(
        description="rules per published dataset name; '*' covers datasets not listed")

    @model_validator(mode="after")
    def _consistent(self) -> SitePolicy:
        if self.approvals_required == 2 and len(set(self.reviewers)) < 2:
            raise ValueError("approvals_required: 2 needs at least two distinct reviewers")
        if self.approval == "auto" and self.approvals_required != 1:
            raise ValueError("approval: auto cannot be combined with approvals_required: 2")
        return self

    def for_dataset(self, name: str) -> DatasetPolicy | None:
        return self.datasets.get(name) or self.datasets.get("*")

    def public(self) -> dict[str, Any]:
        """What researchers may read: limits and allowed code, not who is allowed."""
        out: dict[str, Any] = {"version": self.version, "approval": self.approval,
                               "approvals_required": self.approvals_required, "datasets": {}}
        for name, ds in self.datasets.items():
            out["datasets"][name] = {
                "privacy": ds.privacy.model_dump(mode="json"),
                "training": ds.training.model_dump(mode="json"),
                "model_code": ds.model_code.model_dump(mode="json"),
                "release": ds.release.model_dump(mode="json"),
                "accounting": {"accountant": ds.ledger_accountant,
                               "adjacency": ds.release.adjacency},
                "access": {"expires": ds.access.expires.isoformat()
                           if ds.access.expires else None},
            }
        return out


class PolicyError(MedsyftError, ValueError):
    """A policy file that cannot be used; the message names the file, line and field."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let the schema reject it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort line number of a field path in the YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(getattr(k, "value", "")) == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line if line else (node.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _field_name(part: object) -> str:
    text = str(part)
    return text if re.fullmatch(r"[\w\-*. ]{1,80}", text) else repr(text)[:80]


def parse_policy(text: str, source: str = "<policy>") -> SitePolicy:
    """Parse and validate policy text; PolicyError names `source`, line and field."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(f"{source}{where}: not valid YAML: {problem}") from None
    except (ValueError, RecursionError) as exc:
        raise PolicyError(f"{source}: not valid YAML: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}:1: (top level): expected a mapping with version, "
                          f"reviewers and datasets, got {type(raw).__name__}")
    try:
        return SitePolicy.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(text, loc)
            field = ".".join(_field_name(p) for p in loc) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (misspelt?); see `medsyft policy schema`"
            lines.append(f"{source}{':' + str(line) if line else ''}: {field}: {msg}")
        raise PolicyError("\n".join(lines)) from None


def load_policy(path: str | Path) -> tuple[SitePolicy, str]:
    """The policy and its hash (sha256 of the file's bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_policy(text, str(path)), hashlib.sha256(data).hexdigest()
