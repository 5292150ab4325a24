"""`site.yaml`: what a site operator configures, validated with pydantic.

The file holds no secret: the signing key and admin password live in the
keyring (see `keychain`). Paths inside are relative to the site folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies.contract.errors import MedsyftError, format_errors

SITE_FILE = "site.yaml"
NAME_RE = r"^[a-z][a-z0-9-]{1,39}$"


class SiteConfigError(MedsyftError, ValueError):
    """site.yaml missing or invalid; the message names the file and field."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ConsoleConfig(BaseModel):
    """The web approval console (`sites.console`), served by the site process."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = Field("127.0.0.1", description="address to bind; anything but loopback "
                                               "needs tls_cert and tls_key")
    port: int | None = Field(None, ge=1, le=65535, description="default: the site's port + 1")
    tls_cert: str | None = Field(None, description="PEM certificate (path, site-relative)")
    tls_key: str | None = Field(None, description="PEM private key (path, site-relative)")
    webhook_url: str | None = Field(
        None, pattern=r"^https?://[^\s]+$",
        description="receives {site, request_id, researcher, dataset, verdict} (no data) "
                    "when a request arrives")
    session_idle_minutes: int = Field(30, ge=1, le=24 * 60)

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> ConsoleConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("console: give both tls_cert and tls_key, or neither")
        if self.host not in LOOPBACK and self.tls_cert is None:
            raise ValueError(f"console.host {self.host}: serving beyond loopback needs "
                             "console.tls_cert and console.tls_key")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class TransferConfig(BaseModel):
    """The weights endpoint (`sites.runtime.weights_api`): on the site's syft port, or with
    a certificate on a TLS port of its own (and then only there)."""

    model_config = ConfigDict(extra="forbid")

    tls_cert: str | None = Field(None, description="PEM certificate (path, site-relative): "
                                                   "serve the endpoint over TLS on `port`")
    tls_key: str | None = Field(None, description="PEM private key (path, site-relative)")
    host: str = Field("127.0.0.1", description="address the TLS endpoint binds")
    port: int | None = Field(None, ge=1, le=65535, description="port of the TLS endpoint")

    idle_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="an upload that sends nothing this long is cut off")
    min_rate_mib_s: float = Field(
        1.0, gt=0, description="an upload must average at least this rate (after the idle "
                               "allowance), or it is cut off: a slow client cannot hold a "
                               "connection open for ever")

    @model_validator(mode="after")
    def _tls_complete(self) -> TransferConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("transfer: give both tls_cert and tls_key, or neither")
        if self.tls_cert is not None and self.port is None:
            raise ValueError("transfer: a TLS endpoint needs its own port (transfer.port)")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE)
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    storage: str = "storage"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    policy: str = "policy.yaml"
    server_uid: str = Field(pattern=r"^[0-9a-f]{32}$")
    admin_email: str
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="logs/site.log as text lines, or as JSON lines for a collector")
    log_max_mb: int = Field(50, ge=1, le=100_000,
                            description="a log file is rotated when it reaches this size")
    log_keep: int = Field(5, ge=1, le=1000, description="rotated log files kept (.1 … .N)")
    training_timeout_s: int = Field(3600, ge=10)
    train_threads: int = Field(0, ge=0, le=256,
                               description="CPU threads per training run; 0 = all cores")
    review_timeout_s: int = Field(
        20, ge=2, le=600, description="longest the sealed tracer may take to build and trace a "
                                      "plan's model (researcher code runs there, and only there)")
    sandbox: Literal["strict", "relaxed"] = Field(
        "strict", description="strict: refuse to run researcher code where the kernel cannot "
                              "seal the sandbox; relaxed: run it with what the kernel offers "
                              "(stated in the site log, site status and the audit log)")
    tracer_memory_mib: int = Field(4096, ge=1024, description="address-space cap of the tracer")
    training_memory_mib: int = Field(
        32768, ge=2048, description="address-space cap of a training process (CPU runs)")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    warm_training_process: bool = Field(
        True, description="keep the next run's training process started and waiting "
                          "(saves its start-up, ~2 s a round; costs ~300 MB of RAM)")

    @property
    def console_port(self) -> int:
        return self.console.port or self.port + 1

    @property
    def console_url(self) -> str:
        scheme = "https" if self.console.tls else "http"
        host = f"[{self.console.host}]" if ":" in self.console.host else self.console.host
        return f"{scheme}://{host}:{self.console_port}"

    def path(self, site_dir: Path, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (site_dir / p)


def load_site(site_dir: str | Path) -> tuple[Path, SiteConfig]:
    site_dir = Path(site_dir).resolve()
    file = site_dir / SITE_FILE
    if not file.exists():
        raise SiteConfigError(f"{file}: no site here (run `medsyft site init` first)")
    try:
        raw = yaml.safe_load(file.read_text())
        return site_dir, SiteConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise SiteConfigError(f"{file}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise SiteConfigError(f"{file}: {format_errors(exc)}") from None


def save_site(site_dir: Path, cfg: SiteConfig) -> Path:
    file = site_dir / SITE_FILE
    text = "# medsyft site configuration (no secrets here: they live in the keyring)\n"
    text += yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(file)
    return file


def valid_site_name(name: str) -> bool:
    return re.match(NAME_RE, name) is not None
