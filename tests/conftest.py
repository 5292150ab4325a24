"""Shared fixtures: an in-memory keyring, small site folders, a plan factory.

Helpers that tests import live in `tests/support/` (no test module imports another).
Integration suites start real syft 0.9.5 datasites on loopback through the product's
own `lifecycle.up` (`tests.support.sites.one_site`) and talk to them with the real syft
client.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sites.common.keyring_backends import MemoryKeyring
from tests.support.plans import TEST_POLICY, make_plan

os.environ.setdefault("TQDM_DISABLE", "1")
# CLI tables wrap at the terminal's width; xdist workers report 80 columns. One width for all
# runs (140 is what the CLI uses when its output is not a terminal).
os.environ["COLUMNS"] = "140"

@pytest.fixture(scope="session")
def memory_keyring() -> MemoryKeyring:
    from sites.common import keychain

    backend = MemoryKeyring()
    keychain.use_backend(backend)
    return backend


_site_names = {"n": 0}


@pytest.fixture()
def site_dir(tmp_path: Path, memory_keyring: MemoryKeyring) -> Path:
    """An initialised (not started) site with the integration policy.

    In-process runtime tests start each run's training process cold: a waiting
    process per test would only cost the suite time (tests/unit/sites/test_training_process.py
    covers the warm path)."""
    from sites.operator import lifecycle
    from sites.operator.config import load_site, save_site

    # Unique in this process's keyring: two tests' folders can end alike (`..._is_refused0`).
    _site_names["n"] += 1
    tail = "".join(c for c in tmp_path.name[-12:].replace("_", "-").lower()
                   if c.isalnum() or c == "-")
    name = f"u{_site_names['n']}-{tail.strip('-')}"[:40].rstrip("-")
    lifecycle.init_site(name, tmp_path / "site", policy_file=TEST_POLICY, train_threads=1)
    d, cfg = load_site(tmp_path / "site")
    save_site(d, cfg.model_copy(update={"warm_training_process": False}))
    return tmp_path / "site"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture()
def plan_factory():
    return make_plan


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run unit tests first, integration (real datasites) last."""
    items.sort(key=lambda it: 1 if it.get_closest_marker("integration") else 0)


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for this test process (skipped, saying so, where
    PostgreSQL is not installed: Debian's `postgresql` package)."""
    from tests.support.postgres import PostgresServer, binaries

    found = binaries()
    if found is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql): "
                    "the PostgreSQL tests did not run")
    server = PostgresServer(found)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_governance(request, tmp_path):
    """Open a site's governance store on each database: SQLite in the site folder, or a
    fresh database on the real PostgreSQL server. Call it (with a folder) for a store;
    calling it again with the same folder opens the same database."""
    from sites.governance.store import Governance

    urls: dict[Path, str | None] = {}

    def open_(folder: Path = tmp_path) -> Governance:
        folder = Path(folder)
        if folder not in urls:
            urls[folder] = (None if request.param == "sqlite" else
                            request.getfixturevalue("postgres_server").new_database())
        return Governance(folder, url=urls[folder])

    open_.database = request.param
    return open_
