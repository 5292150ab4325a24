"""Data-owner operations on a running site: researcher accounts and dataset publication.

Logs in as the site admin with the password from the keyring. Researchers can
only be created here (sign-up stays off). A published dataset's mock is
generated from public parameters only, never from private values, and the
description states schema and N only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets.cohort import Cohort
from datasets.synthetic import DEMO_PROFILES, NEUTRAL, SiteProfile, generate_cohort, generate_mock
from sites import lifecycle
from sites.config import SiteConfig, load_site
from sites.governance import Governance
from sites.syft_client import login, quiet, syft

ASSET_NAME = "cohort"


class AdminError(RuntimeError):
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
                   institution: str = "") -> None:
    with admin_client(site_dir) as (site_dir, cfg, client):
        existing = [u.email for u in client.users.get_all()]
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
        Governance(site_dir).audit(cfg.admin_email, "account.created", email,
                                   role="data_scientist", institution=institution)


def publish_cohort(site_dir: Path, dataset: str, cohort: Cohort, mock: Cohort,
                   summary: str) -> None:
    if mock.volume_shape != cohort.volume_shape or set(mock.volumes) != set(cohort.volumes):
        raise AdminError("mock schema differs from the private cohort")
    with admin_client(site_dir) as (site_dir, cfg, client):
        sy = syft()
        if any(d.name == dataset for d in client.datasets.get_all()):
            raise AdminError(f"dataset {dataset!r} is already published on {cfg.name}")
        description = f"{summary} {cohort.describe()} Mock: synthetic, same schema."
        ds = sy.Dataset(name=dataset, description=description)
        ds.add_asset(sy.Asset(name=ASSET_NAME, data=cohort.to_asset(), mock=mock.to_asset(),
                              description=cohort.describe()))
        with quiet():
            res = client.upload_dataset(ds)
        _ok(res, f"cannot publish {dataset}")
        Governance(site_dir).register_dataset(dataset, cohort.cohort_id, cohort.n,
                                              description, actor=cfg.admin_email)


def publish_synthetic(site_dir: Path, dataset: str, n: int, seed: int,
                      profile: str | None = None, shape: tuple[int, int, int] = (24, 24, 24),
                      mock_n: int | None = None) -> Cohort:
    _, cfg = load_site(site_dir)
    prof: SiteProfile = DEMO_PROFILES.get(profile or cfg.name, NEUTRAL)
    cohort = generate_cohort(n=n, seed=seed, profile=prof, shape=shape)
    mock = generate_mock(n=mock_n or min(n, 16), shape=shape, seed=seed)
    publish_cohort(site_dir, dataset, cohort, mock,
                   summary=f"Synthetic brain MRI+PET cohort (profile {prof.name}).")
    return cohort
