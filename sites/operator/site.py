"""One `Site` handle: a site folder with its configuration, paths, policy and store.

Every part of the site that needs `site.yaml`, the policy file or the governance
database opens the folder once through `Site.open` instead of re-reading and
re-joining paths itself. Must never hold or print a secret (those are the keychain's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from policies.schema import SitePolicy, load_policy
from sites.governance.store import Governance
from sites.operator.config import SiteConfig, load_site


@dataclass(frozen=True)
class Site:
    """A site folder and its validated `site.yaml`.

    Attributes:
        folder: the site folder, resolved.
        config: its `site.yaml`.
    """

    folder: Path
    config: SiteConfig

    @classmethod
    def open(cls, folder: str | Path) -> Site:
        """The site in `folder`.

        Raises:
            SiteConfigError: no `site.yaml` there, or it is invalid (the message names
                the file and the field).
        """
        folder, config = load_site(folder)
        return cls(folder, config)

    @property
    def name(self) -> str:
        return self.config.name

    def path(self, rel: str) -> Path:
        """A path from `site.yaml`, relative to the site folder unless absolute."""
        return self.config.path(self.folder, rel)

    @property
    def policy_file(self) -> Path:
        return self.path(self.config.policy)

    def policy(self) -> tuple[SitePolicy, str]:
        """The policy file as it is now, and its SHA-256 (read afresh on every call: the
        data owner may edit it while the site runs).

        Raises:
            PolicyError: the file is missing or invalid (with file, line and field).
        """
        return load_policy(self.policy_file)

    def governance(self) -> Governance:
        """The site's governance store."""
        return Governance(self.folder)

    @property
    def runs_dir(self) -> Path:
        return self.folder / "runs"

    @property
    def logs_dir(self) -> Path:
        return self.folder / "logs"

    @property
    def training_log(self) -> Path:
        return self.logs_dir / "training.log"
