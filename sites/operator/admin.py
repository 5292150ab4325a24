"""Data-owner operations on a running site: researcher accounts and dataset publication.

Logs in as the site admin with the password from the keyring. Researchers can
only be created here (sign-up stays off), and each one is recorded in the
site's own registry (`sites.governance.registry`) with the syft account's id and verify
key: that record, not syft's editable profile, is who the researcher is. A
published dataset's mock is
generated from public parameters only, never from private values, and the
description states the schema and, as the policy allows, N (exact) or its DP count
(rounded); label counts only when N is public. Publishing fixes, once, the audit's
held-out subjects and the DP count of a private N.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datasets.cohort import Cohort, holdout_size, holdout_split
from datasets.ingest import IngestReport, Progress, ingest_manifest
from datasets.preprocess import Preprocessing
from datasets.synthetic import DEMO_PROFILES, NEUTRAL, SiteProfile, generate_cohort, generate_mock
from policies.contract.errors import MedsyftError
from policies.schema import DatasetPolicy, PolicyError
from sites.common.syft_client import login, quiet, syft
from sites.governance.registry import Registry, RegistryError, Researcher, normalise_email
from sites.governance.store import Governance, noisy_count
from sites.operator import lifecycle
from sites.operator.config import SiteConfig, load_site
from sites.operator.site import Site

ASSET_NAME = "cohort"
#: Subjects in every mock, whatever the cohort's size: a mock sized after N would reveal N.
MOCK_SIZE = 16


class AdminError(MedsyftError, RuntimeError):
    pass


@contextlib.contextmanager
def admin_client(site_dir: Path) -> Iterator[tuple[Path, SiteConfig, Any]]:
    site_dir, cfg = load_site(site_dir)
    st = lifecycle.status(site_dir)
    if not st.running:
        raise AdminError(f"site {cfg.name} is not running (start it with `medsyft site up "
                         f"{site_dir}`)")
    client = login(cfg.host, cfg.port, cfg.admin_email, lifecycle.admin_password(cfg))
    yield site_dir, cfg, client


def _ok(result: Any, what: str) -> Any:
    sy = syft()
    if isinstance(result, sy.SyftError):
        raise AdminError(f"{what}: {result.message}")
    return result


def add_researcher(site_dir: Path, email: str, name: str, password: str,
                   institution: str = "") -> Researcher:
    """Create a data-scientist account and the site's record of it."""
    email = normalise_email(email)
    with admin_client(site_dir) as (site_dir, cfg, client):
        existing = [u.email.lower() for u in client.users.get_all()]
        if email in existing:
            raise AdminError(f"{email} already has an account on {cfg.name}")
        syft()
        from syft.service.user.user_roles import ServiceRole

        with quiet():
            try:
                res = client.users.create(
                    name=name, email=email, password=password, password_verify=password,
                    institution=institution or None, role=ServiceRole.DATA_SCIENTIST)
            except Exception as exc:
                raise AdminError(f"cannot create {email}: "
                                 f"{getattr(exc, 'public_message', type(exc).__name__)}") from None
        _ok(res, f"cannot create {email}")
        # The verify key that will sign this researcher's calls: read by logging in once.
        # Without it there is no record, so the account would be useless: remove it again.
        try:
            account = login(cfg.host, cfg.port, email, password)
            user_id = str(account.account.id).replace("-", "")
        except Exception as exc:
            with quiet():
                client.users.delete(uid=getattr(res, "id", None))
            raise AdminError(f"cannot record {email}: first login failed "
                             f"({type(exc).__name__}); the account was removed, try again"
                             ) from None
        gov = Governance(site_dir)
        gov.audit(cfg.admin_email, "account.created", email, role="data_scientist",
                  institution=institution)
        try:
            return Registry(gov).add(user_id=user_id, verify_key=str(account.verify_key),
                                     email=email, name=name, institution=institution,
                                     actor=cfg.admin_email)
        except RegistryError as exc:
            raise AdminError(str(exc)) from None


def update_researcher(site_dir: Path, email: str, *, new_email: str | None = None,
                      name: str | None = None, institution: str | None = None) -> Researcher:
    """Change a researcher's email, name or institution: the site's record and syft's
    profile together (the record decides; the profile only follows it)."""
    with admin_client(site_dir) as (site_dir, cfg, client):
        registry = Registry(Governance(site_dir))
        current = registry.by_email(email)
        if current is None:
            raise AdminError(f"{email}: no researcher with this email on {cfg.name} "
                             "(see `medsyft site researchers`)")
        if new_email and normalise_email(new_email) != current.email and \
                registry.by_email(new_email) is not None:
            raise AdminError(f"{new_email}: another researcher already has this email")
        fields = {k: v for k, v in (("email", normalise_email(new_email) if new_email else None),
                                    ("name", name), ("institution", institution))
                  if v is not None}
        if fields:
            with quiet():
                try:
                    res = client.users.update(uid=_syft_uid(current.user_id), **fields)
                except Exception as exc:
                    raise AdminError(f"cannot update {email}: "
                                     f"{getattr(exc, 'public_message', type(exc).__name__)}"
                                     ) from None
            _ok(res, f"cannot update {email}")
        try:
            return registry.update(current.email, actor=cfg.admin_email, new_email=new_email,
                                   name=name, institution=institution)
        except RegistryError as exc:
            raise AdminError(str(exc)) from None


def _syft_uid(hex_id: str) -> Any:
    from syft.types.uid import UID

    return UID(hex_id)


def _dataset_rule(site_dir: Path, cfg: SiteConfig, dataset: str) -> DatasetPolicy:
    """The policy's rule for `dataset`; with no readable or covering policy, one that
    reveals the least (count hidden) and holds nothing out."""
    try:
        policy, _ = Site(site_dir, cfg).policy()
        rule = policy.for_dataset(dataset)
    except (PolicyError, OSError):
        rule = None
    if rule is not None:
        return rule
    return DatasetPolicy.model_validate({
        "access": {}, "privacy": {"delta_max": 1e-5, "epsilon_per_plan": 1,
                                  "epsilon_total": 1},
        "training": {"max_rounds": 1}, "release": {"sample_count": "hidden"}})


def publish_cohort(site_dir: Path, dataset: str, cohort: Cohort, mock: Cohort,
                   summary: str) -> str:
    """Upload private asset + mock; the description states N and label counts only as far
    as the policy's release rule allows. Returns the description."""
    if mock.volume_shape != cohort.volume_shape or set(mock.volumes) != set(cohort.volumes) \
            or (mock.masks is None) != (cohort.masks is None) \
            or mock.mask_classes != cohort.mask_classes:
        raise AdminError("mock schema differs from the private cohort")
    with admin_client(site_dir) as (site_dir, cfg, client):
        sy = syft()
        if any(d.name == dataset for d in client.datasets.get_all()):
            raise AdminError(f"dataset {dataset!r} is already published on {cfg.name}")
        rule = _dataset_rule(site_dir, cfg, dataset)
        holdout, training = None, cohort
        if rule.audit.holdout_fraction > 0:
            k = holdout_size(cohort.labels, rule.audit.holdout_fraction)
            if k < 2 or cohort.n - k < 2:
                raise AdminError(f"audit.holdout_fraction {rule.audit.holdout_fraction:g} of "
                                 f"this cohort leaves too few subjects on one side")
            holdout = (secrets.randbits(62), rule.audit.holdout_fraction)
            training = cohort.subset(holdout_split(cohort.labels,
                                                   rule.audit.holdout_fraction,
                                                   holdout[0])[0])
        n_train = training.n
        count = None
        if rule.release.adjacency == "add_remove":
            count = (noisy_count(n_train, rule.release.count_noise, secrets.randbits(64)),
                     rule.release.count_noise)
        public = training.describe(rule.release, public_n=count[0] if count else n_train)
        description = f"{summary} {public} Mock: synthetic, same schema."
        ds = sy.Dataset(name=dataset, description=description)
        mock_asset = mock.to_asset()
        ds.add_asset(sy.Asset(name=ASSET_NAME, data=cohort.to_asset(), mock=mock_asset,
                              description=public))
        with quiet(), _sized_as(mock_asset):
            res = client.upload_dataset(ds)
        _ok(res, f"cannot publish {dataset}")
        Governance(site_dir).register_dataset(dataset, cohort.cohort_id, n_train,
                                              description, actor=cfg.admin_email,
                                              volume_shape=cohort.volume_shape, count=count,
                                              holdout=holdout,
                                              mask_classes=cohort.mask_classes)
    return description


@contextlib.contextmanager
def _sized_as(public: Any) -> Iterator[None]:
    """syft 0.9.5's `upload_dataset` records the private asset's size in MB on the dataset
    (`Dataset.mb_size`, which every guest may read): N times the bytes of one subject, so
    N to the subject (red team, issue 15). While uploading, the size syft records is the
    mock's, which is public."""
    from syft.client import datasite_client

    measure = getattr(datasite_client, "get_mb_size", None)
    if measure is None:
        raise AdminError("this syft's upload does not measure datasets the way medsyft "
                         "checked (syft.client.datasite_client.get_mb_size); refusing to "
                         "publish a size that might be the private one")
    size = measure(public)
    datasite_client.get_mb_size = lambda _data: size
    try:
        yield
    finally:
        datasite_client.get_mb_size = measure


def publish_synthetic(site_dir: Path, dataset: str, n: int, seed: int,
                      profile: str | None = None, shape: tuple[int, int, int] = (24, 24, 24),
                      mock_n: int = MOCK_SIZE, lesions: bool = False,
                      misalign: float = 0.0) -> Cohort:
    """A synthetic cohort under the site's demo profile (`datasets.synthetic`), with lesion
    masks and misregistered PET when asked, published with a mock of the same schema."""
    _, cfg = load_site(site_dir)
    prof: SiteProfile = DEMO_PROFILES.get(profile or cfg.name, NEUTRAL)
    cohort = generate_cohort(n=n, seed=seed, profile=prof, shape=shape, lesions=lesions,
                             misalign=misalign)
    mock = generate_mock(n=mock_n, shape=shape, seed=seed, lesions=lesions)
    publish_cohort(site_dir, dataset, cohort, mock,
                   summary=f"Synthetic brain MRI+PET cohort (profile {prof.name}).")
    return cohort


def mock_for(cohort: Cohort, seed: int = 0, n: int = MOCK_SIZE) -> Cohort:
    """A synthetic mock with the cohort's modalities, shape and normalisation.

    Made by the generator from the public neutral profile and then normalised
    with the same per-volume method as the private data, so a researcher's code
    sees the same value ranges. Nothing of the private cohort is read but its
    shape and its meta (which holds only allowlisted technical fields).
    """
    from datasets.preprocess import normalise_volumes

    mock = generate_mock(n=n, shape=cohort.volume_shape, seed=seed,
                         lesions=cohort.masks is not None)
    volumes = normalise_volumes({m: mock.volumes[m] for m in cohort.volumes},
                                cohort.meta.get("normalisation") or {})
    masks = None
    if cohort.masks is not None:  # the mock's lesions, within the declared classes
        masks = np.minimum(mock.masks, max(1, cohort.mask_classes - 1)).astype(np.uint8)
    return Cohort(volumes=volumes, labels=mock.labels, meta=dict(cohort.meta), masks=masks)


def publish_manifest(site_dir: Path, dataset: str, manifest: Path, pp: Preprocessing,
                     progress: Progress | None = None, mask_classes: int | None = None
                     ) -> tuple[Cohort, IngestReport, str]:
    """Ingest a DICOM/NIfTI cohort from its manifest, then publish it with a synthetic mock."""
    load_site(site_dir)  # fail on a bad site folder before the long read
    if not lifecycle.status(site_dir).running:
        raise AdminError(f"the site in {site_dir} is not running (start it with `medsyft site "
                         f"up {site_dir}`)")
    cohort, report = ingest_manifest(manifest, pp, progress=progress, mask_classes=mask_classes)
    kinds = ", ".join(sorted({k for m in report.sources.values() for k in m}))
    description = publish_cohort(site_dir, dataset, cohort, mock_for(cohort),
                                 summary=f"Brain {'+'.join(m.upper() for m in report.modalities)}"
                                 f" cohort ingested from {kinds}.")
    return cohort, report, description
