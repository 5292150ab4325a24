"""Shared fixtures: an in-memory keyring, small site folders, and real datasites.

Integration fixtures start real syft 0.9.5 datasites on loopback through the
product's own `lifecycle.up` and talk to them with the real syft client.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend

os.environ.setdefault("TQDM_DISABLE", "1")
# CLI tables wrap at the terminal's width; xdist workers report 80 columns. One width for all
# runs (140 is what the CLI uses when its output is not a terminal).
os.environ["COLUMNS"] = "140"

TEST_POLICY = Path(__file__).resolve().parent / "policies" / "integration.yaml"


class MemoryKeyring(KeyringBackend):
    """In-memory keyring backend for tests (the product never uses it)."""

    priority = 0

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


@pytest.fixture(scope="session")
def memory_keyring() -> MemoryKeyring:
    from sites import keychain

    backend = MemoryKeyring()
    keychain.use_backend(backend)
    return backend


@pytest.fixture()
def site_dir(tmp_path: Path, memory_keyring: MemoryKeyring) -> Path:
    """An initialised (not started) site with the integration policy.

    In-process runtime tests start each run's training process cold: a waiting
    process per test would only cost the suite time (tests/test_training_process.py
    covers the warm path)."""
    from sites import lifecycle
    from sites.config import load_site, save_site

    name = f"unit-{tmp_path.name[-12:].replace('_', '-').lower().strip('-')}"
    name = "u" + "".join(c for c in name if c.isalnum() or c == "-")[:30]
    lifecycle.init_site(name, tmp_path / "site", policy_file=TEST_POLICY, train_threads=1)
    d, cfg = load_site(tmp_path / "site")
    save_site(d, cfg.model_copy(update={"warm_training_process": False}))
    return tmp_path / "site"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def small_model_source() -> str:
    return '''
class Tiny(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)))
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def make_plan(name: str = "tiny", rounds: int = 2, source: str | None = None,
              class_name: str = "Tiny", researcher: str = "", version: int = 1,
              epsilon: float = 8.0, dataset: str = "brain-mri-pet"):
    from researcher.plan import TrainingPlan

    return TrainingPlan.model_validate({
        "name": name, "version": version, "dataset": dataset, "researcher": researcher,
        "model": {"source": source or small_model_source(), "class_name": class_name,
                  "kwargs": {"in_channels": 2}},
        "inputs": ["mri", "pet"], "loss": "bce_with_logits", "optimizer": "sgd",
        "learning_rate": 0.1, "batch_size": 8, "local_epochs": 1, "rounds": rounds,
        "dp": {"target_epsilon": epsilon, "delta": 1e-5, "max_grad_norm": 1.0},
    })


@pytest.fixture()
def plan_factory():
    return make_plan


@contextmanager
def one_site(root: Path, name: str, policy: Path, email: str, password: str, n: int,
             seed: int, shape: tuple[int, int, int], manifest: Path | None = None
             ) -> Iterator[dict]:
    """A real datasite with one researcher and a published cohort, stopped after.

    The cohort is generated in memory, or ingested from `manifest` (DICOM/NIfTI files)
    onto a `shape` grid when one is given."""
    from researcher.federation import Federation, FederationConfig, SiteEntry, store_password
    from sites import admin, lifecycle

    d = root / name
    lifecycle.init_site(name, d, policy_file=policy, train_threads=1)
    lifecycle.up(d)
    try:
        admin.add_researcher(d, email, "Ada Lovelace", password, "Lovelace Institute")
        if manifest is None:
            cohort = admin.publish_synthetic(d, "brain-mri-pet", n=n, seed=seed, shape=shape)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run unit tests first, integration (real datasites) last."""
    items.sort(key=lambda it: 1 if it.get_closest_marker("integration") else 0)
