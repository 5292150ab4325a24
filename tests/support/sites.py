"""Real datasites for tests: started on loopback through the product's own lifecycle, with
the in-memory keyring backend (`sites.common.keyring_backends.MemoryKeyring`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def one_site(root: Path, name: str, policy: Path, email: str, password: str, n: int,
             seed: int, shape: tuple[int, int, int], manifest: Path | None = None,
             console: dict | None = None, lesions: bool = False) -> Iterator[dict]:
    """A real datasite with one researcher and a published cohort, stopped after.

    The cohort is generated in memory, or ingested from `manifest` (DICOM/NIfTI files)
    onto a `shape` grid when one is given (`lesions`: the synthetic cohort has lesion
    masks). `console` updates site.yaml's web console
    settings before the site starts."""
    from researcher.federation import Federation, FederationConfig, SiteEntry, store_password
    from sites.operator import admin, lifecycle

    d = root / name
    lifecycle.init_site(name, d, policy_file=policy, train_threads=1)
    if console:
        from sites.operator.config import load_site, save_site

        _, cfg = load_site(d)
        save_site(d, cfg.model_copy(update={"console": cfg.console.model_copy(
            update=console)}))
    lifecycle.up(d)
    try:
        admin.add_researcher(d, email, "Ada Lovelace", password, "Lovelace Institute")
        if manifest is None:
            cohort = admin.publish_synthetic(d, "brain-mri-pet", n=n, seed=seed, shape=shape,
                                             lesions=lesions)
        else:
            from datasets.preprocess import Preprocessing

            cohort, _, _ = admin.publish_manifest(d, "brain-mri-pet", manifest,
                                                  Preprocessing(shape=shape))
        config = FederationConfig(
            sites=[SiteEntry(name=name, port=lifecycle.load_site(d)[1].port, email=email)],
            checkpoints=str(root / "ckpt"))
        store_password(config.sites[0], password)
        yield {"dir": d, "config": config, "fed": Federation(config).connect(),
               "cohort": cohort}
    finally:
        lifecycle.down(d)


_PASSWORDS: dict[tuple[str, str], str] = {}


def as_reviewer(site_dir: Path, name: str):
    """The reviewer account `name` (`NAME@reviewers.test`) of a site, logged in: created on
    first use, as the data owner would with `medsyft site add-reviewer`. Policies in tests
    name reviewers by these names."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance

    reviewers = Reviewers(Governance(site_dir))
    email = f"{name}@reviewers.test"
    key = (str(Path(site_dir).resolve()), name)
    if key not in _PASSWORDS:
        if reviewers.get(email) is None:
            _PASSWORDS[key] = reviewers.add(email, name, actor="test")[1]
        else:  # made by another test process: give it a password this one knows
            _PASSWORDS[key] = reviewers.reset_password(email, actor="test")
    return reviewers.authenticate(email, _PASSWORDS[key], source="test")


def wait_for(predicate, timeout_s: float = 60.0, poll_s: float = 0.5):
    """The predicate's first truthy value, polled until `timeout_s` (a site's steward
    works in sweeps); fails the test when it never comes."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("condition not reached in time")
