"""The researcher's client: a federation of hospital datasites and the round loop.

`Federation` logs into every site (passwords from the keyring), lists datasets
and their mocks, submits a plan as the fixed syft template, reports request
status, and runs all rounds: global weights out to every site concurrently (streamed
to each site's weights endpoint, `researcher.transfer`, with syft carrying only their
digest), parameters + n_k + ε back, FedAvg, evaluation on the researcher's own
validation data, a checkpoint per round, resume after a restart. A site that
fails a round is retried once; the round goes on without it while the quorum
holds, else the run stops with a clear error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datasets.cohort import Cohort
from policies.contract import transfer as contract_transfer
from policies.contract.errors import MedsyftError, format_errors
from policies.contract.model_code import build_model, trainable_parameters
from policies.contract.plan import DISCRIMINATOR_PREFIX, TrainingPlan
from policies.contract.public import ENDPOINT_PATH as POLICY_ENDPOINT
from policies.contract.template import build_function
from policies.contract.transfer import WeightsRef
from policies.contract.wire import RoundResult, SiteFailed, attach_released, parse_round
from researcher import transfer
from researcher.aggregate import FedAvg, Strategy
from researcher.checkpoint import Checkpoints
from researcher.evaluate import evaluate_task, load_params
from researcher.results import RoundReport, RunReport, SiteRoundReport
from sites.common import keychain, syft_guard, syft_patches
from sites.common.syft_client import login, quiet, syft


class SiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,39}$")
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    email: str
    weights_url: str | None = Field(
        None, pattern=r"^https://[^\s/]+:[0-9]{1,5}$",
        description="the site's TLS weights endpoint (https://HOST:PORT), when it has one; "
                    "by default the weights go to the syft port")
    ca_file: str | None = Field(None, description="CA bundle (PEM) that signed the endpoint's "
                                                  "certificate, if not a system one")


class FederationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "federation"
    sites: list[SiteEntry] = Field(min_length=1)
    quorum: int | None = Field(None, ge=1, description="sites needed per round; "
                               "default: a majority")
    checkpoints: str = "medsyft-runs"

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("site names must be unique")
        if self.quorum is not None and self.quorum > len(self.sites):
            raise ValueError(f"quorum {self.quorum} exceeds the {len(self.sites)} sites")
        return self

    @property
    def effective_quorum(self) -> int:
        return self.quorum or (len(self.sites) // 2 + 1)


class FederationError(MedsyftError, RuntimeError):
    """A federation-level failure; `retry` says whether the same call may succeed later
    (a site unreachable or failing transiently) or not (a site's refusal)."""


def load_federation(path: str | Path) -> FederationConfig:
    path = Path(path)
    try:
        return FederationConfig.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise FederationError(f"{path}: cannot read: {exc}") from None
    except ValidationError as exc:
        raise FederationError(f"{path}: {format_errors(exc)}") from None


def researcher_service(site: str) -> str:
    return keychain.RESEARCHER_SERVICE.format(site=site)


def store_password(site: SiteEntry, password: str) -> None:
    keychain.set_secret(researcher_service(site.name), site.email, password)


@dataclass
class RequestStatus:
    site: str
    status: str  # pending | approved | denied | not submitted
    request_id: str | None = None
    reason: str | None = None


def initial_weights(plan: TrainingPlan, seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = build_model(plan.model)
    return {k: v.detach().numpy().astype(np.float32)
            for k, v in trainable_parameters(model).items()}


def initial_discriminator(plan: TrainingPlan, seed: int = 0) -> dict[str, np.ndarray]:
    """A GAN plan's discriminator as each site starts it, under the key prefix the sites
    read (`DISCRIMINATOR_PREFIX`); empty for any other plan. Sent with every round: a site
    uses it only until it has trained its own, which it keeps and never releases."""
    if plan.adversarial is None:
        return {}
    torch.manual_seed(seed + 1)
    model = build_model(plan.adversarial.discriminator)
    return {DISCRIMINATOR_PREFIX + k: v.detach().numpy().astype(np.float32)
            for k, v in trainable_parameters(model).items()}


#: How a round's weights travel: "stream" over each site's weights endpoint (syft carries
#: only their digests), or "syft" inside the syft call itself (the slower path of old).
Transport = Literal["stream", "syft"]


class Federation:
    def __init__(self, config: FederationConfig, strategy: Strategy | None = None,
                 transport: Transport = "stream") -> None:
        self.config = config
        self.strategy = strategy or FedAvg()
        self.transport: Transport = transport
        #: bytes and MB/s of the round in progress, summed over sites (for progress bars)
        self.meter = transfer.Meter()
        self._clients: dict[str, Any] = {}
        self._assets: dict[tuple[str, str], Any] = {}  # syft looks them up through a full
        # API refresh (~1.3 s a site); kept per connection, dropped when a call fails
        self.weights: dict[str, np.ndarray] | None = None  # global weights after `run`

    @classmethod
    def from_yaml(cls, path: str | Path) -> Federation:
        return cls(load_federation(path))

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.config.sites]

    def _entry(self, name: str) -> SiteEntry:
        for s in self.config.sites:
            if s.name == name:
                return s
        raise FederationError(f"no site {name!r} in the federation")

    # -- connection ----------------------------------------------------------
    def _login(self, site: SiteEntry) -> Any:
        password = keychain.get_secret(researcher_service(site.name), site.email)
        if password is None:
            raise FederationError(f"no password for {site.email} at {site.name} in the "
                                  f"keyring; run `medsyft researcher login {site.name}`")
        return login(site.host, site.port, site.email, password)

    def connect(self, require_all: bool = True) -> Federation:
        """Log into every site. With `require_all=False`, go on while the quorum is reachable
        (unreachable sites are retried at each round)."""
        syft()
        syft_patches.apply()  # the weights upload serialises once, not twice; see the module
        syft_guard.guard_deserialization(answers_untrusted=True)  # a site's answer is
        # untrusted: it cannot name code to call here, nor blow up collections or arrays
        with ThreadPoolExecutor(max_workers=len(self.config.sites)) as pool:
            futures = {s.name: pool.submit(self._login, s) for s in self.config.sites}
            errors = []
            for name, fut in futures.items():
                try:
                    self._clients[name] = fut.result()
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
        quorum = self.config.effective_quorum
        if errors and (require_all or len(self._clients) < quorum):
            need = "" if require_all else (f" ({len(self._clients)} reachable, "
                                           f"quorum is {quorum})")
            raise FederationError("cannot connect" + need + ": " + "; ".join(errors))
        return self

    def client(self, site: str) -> Any:
        if site not in self._clients:
            if not self._clients:
                raise FederationError("not connected; call connect() first")
            try:
                self._clients[site] = self._login(self._entry(site))
            except FederationError:
                raise
            except Exception as exc:
                raise FederationError(f"{site}: unreachable: {exc}", retry=True) from None
        return self._clients[site]

    # -- datasets ------------------------------------------------------------
    def datasets(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for name in self.site_names:
            entries = []
            for ds in self.client(name).datasets.get_all():
                desc = getattr(ds.description, "text", str(ds.description))
                entries.append({"name": ds.name, "description": desc})
            out[name] = entries
        return out

    def _asset(self, site: str, dataset: str) -> Any:
        if (site, dataset) in self._assets:
            return self._assets[site, dataset]
        client = self.client(site)
        try:
            ds = client.datasets[dataset]
        except Exception:
            raise FederationError(f"{site}: no dataset {dataset!r}") from None
        self._assets[site, dataset] = ds.assets[0]
        return ds.assets[0]

    def mock(self, site: str, dataset: str) -> Cohort:
        """The site's mock cohort (synthetic, same schema as the private one)."""
        with quiet():
            return Cohort.from_asset(self._asset(site, dataset).mock)

    # -- public policy and pre-check ----------------------------------------
    def public_policy(self, site: str) -> dict:
        """The site's published limits (no list of researchers), via its syft endpoint."""
        client = self.client(site)
        with quiet():
            try:
                # syft routes custom endpoints through jobs by default; a site runs no job
                # workers, so call the public function directly
                doc = client.api.services.api.call_public(POLICY_ENDPOINT)
            except Exception as exc:
                raise FederationError(f"{site}: no public policy: "
                                      f"{getattr(exc, 'public_message', type(exc).__name__)}"
                                      ) from None
        doc = getattr(doc, "syft_action_data", doc)
        if not isinstance(doc, dict) or "datasets" not in doc:
            raise FederationError(f"{site}: no public policy published")
        return doc

    def check(self, plan: TrainingPlan) -> dict[str, list]:
        """Per site, the verdict lines a plan would get from the public part of the policy
        (access rules are private and shown as not checked)."""
        from researcher.precheck import precheck

        plan = self.bind(plan)
        return {site: precheck(self.public_policy(site), plan) for site in self.site_names}

    # -- requests ------------------------------------------------------------
    def bind(self, plan: TrainingPlan) -> TrainingPlan:
        """The plan as submitted: with the researcher's account email filled in (lower case,
        as sites record it)."""
        emails = {s.email.strip().lower() for s in self.config.sites}
        if len(emails) != 1:
            raise FederationError("one researcher identity per federation is supported; "
                                  f"found {sorted(emails)}")
        return plan.model_copy(update={"researcher": emails.pop()})

    def _own_request(self, site: str, plan: TrainingPlan) -> Any | None:
        for req in self.client(site).requests.get_all():
            code = getattr(req, "code", None)
            if code is not None and getattr(code, "service_func_name", "") == plan.function_name:
                return req
        return None

    def submit(self, plan: TrainingPlan) -> dict[str, RequestStatus]:
        plan = self.bind(plan)
        sy = syft()
        out: dict[str, RequestStatus] = {}
        for site in self.site_names:
            existing = self._own_request(site, plan)
            if existing is None:
                client = self.client(site)
                asset = self._asset(site, plan.dataset)
                func = build_function(plan)
                with quiet():
                    code = sy.syft_function(input_policy=sy.MixedInputPolicy(
                        client=client, data=asset, weights=dict))(func)
                    try:
                        res = client.code.request_code_execution(code)
                    except Exception as exc:
                        msg = getattr(exc, "public_message", None) or type(exc).__name__
                        raise FederationError(f"{site}: submission failed: {msg}") from None
                if isinstance(res, sy.SyftError):
                    raise FederationError(f"{site}: submission failed: {res.message}")
            out[site] = self._status_one(site, plan)
        return out

    def _status_one(self, site: str, plan: TrainingPlan) -> RequestStatus:
        req = self._own_request(site, plan)
        if req is None:
            return RequestStatus(site, "not submitted")
        status = getattr(req.status, "name", str(req.status)).lower()
        status = {"rejected": "denied"}.get(status, status)
        reason = None
        if status == "denied":
            reason = _deny_reason(req)
        return RequestStatus(site, status, str(req.id).replace("-", ""), reason)

    def status(self, plan: TrainingPlan) -> dict[str, RequestStatus]:
        plan = self.bind(plan)
        return {site: self._status_one(site, plan) for site in self.site_names}

    # -- rounds --------------------------------------------------------------
    def run_site_round(self, site: str, plan: TrainingPlan,
                       weights: dict[str, np.ndarray],
                       extra: dict[str, np.ndarray] | None = None, round_no: int = 1,
                       blob: bytes | None = None, digest: str | None = None) -> RoundResult:
        """One round of `plan` at one site from `weights`: no retry, no quorum.

        `extra` goes to the site beside the weights and is never part of the result: by
        default a GAN plan's initial discriminator (`initial_discriminator`), which a site
        uses only until it keeps its own. With the stream transport the weights (and
        `extra`) go to the site's weights endpoint as one safetensors file (`blob`, when
        the caller encoded them already for several sites), syft carries their digest and
        `round_no`, and the released weights are fetched by the digest the site names.

        Raises:
            FederationError: the site is unreachable, refused the round or answered with
                something that is not a valid result; `retry` says whether trying again
                may help.
        """
        try:
            client = self.client(site)
        except FederationError:
            raise
        except Exception as exc:
            raise FederationError(f"{site}: unreachable: {type(exc).__name__}",
                                  retry=True) from None
        fn = getattr(client.code, plan.function_name, None)
        if fn is None:
            with quiet():
                client.refresh()
            fn = getattr(client.code, plan.function_name, None)
        if fn is None:
            raise FederationError(f"{site}: plan {plan.function_name} is not available "
                                  "(not submitted or not approved)", retry=True)
        asset = self._asset(site, plan.dataset)
        sent = {**weights, **(initial_discriminator(plan) if extra is None else extra)}
        endpoint = signer = None
        if self.transport == "stream":
            endpoint, signer = self._endpoint(site), transfer.Signer.of(client)
            if blob is None:
                blob = contract_transfer.encode(sent)
            try:
                digest = transfer.upload(endpoint, signer, plan.plan_hash, round_no, blob,
                                         self.meter.track(site + "/upload"), digest)
            except transfer.TransferFailed as exc:
                raise FederationError(f"{site}: weights upload: {exc}", retry=exc.retry
                                      ) from None
            sent = WeightsRef(sha256=digest, size=len(blob), round=round_no).to_wire()
        with quiet():
            try:
                ptr = fn(data=asset, weights=sent)
                payload = ptr.get() if hasattr(ptr, "get") else ptr
            except Exception as exc:
                self._assets.pop((site, plan.dataset), None)  # the retry looks it up afresh
                msg = getattr(exc, "public_message", None) or str(exc) or type(exc).__name__
                raise FederationError(f"{site}: {msg.strip()[:300]}", retry=True) from None
        try:
            result = parse_round(payload, weights, site=site, plan_hash=plan.plan_hash)
            if result.params is None:
                if endpoint is None or signer is None or result.weights_bytes is None:
                    raise SiteFailed("the site kept the weights at its endpoint, but this "
                                     "round did not use it")
                try:
                    released = transfer.download(
                        endpoint, signer, plan.plan_hash, result.round,
                        result.weights_sha256, result.weights_bytes,
                        self.meter.track(site + "/release"))
                except transfer.TransferFailed as exc:
                    raise FederationError(f"{site}: fetching the released weights: {exc}",
                                          retry=exc.retry) from None
                result = attach_released(result, released, weights)
            return result
        except SiteFailed as exc:
            raise FederationError(f"{site}: {exc.message}", retry=exc.retry) from None

    def _endpoint(self, site: str) -> transfer.Endpoint:
        entry = self._entry(site)
        if entry.weights_url is None:
            return transfer.Endpoint(entry.name, entry.host, entry.port)
        host, _, port = entry.weights_url.removeprefix("https://").rpartition(":")
        return transfer.Endpoint(entry.name, host.strip("[]"), int(port), tls=True,
                                 ca_file=entry.ca_file)

    def run_round(self, plan: TrainingPlan, weights: dict[str, np.ndarray],
                  retries: int = 1, round_no: int = 1
                  ) -> tuple[dict[str, RoundResult], dict[str, str]]:
        """One round at every site concurrently, each retried `retries` times on failure
        (the weights are uploaded again with each try)."""
        results: dict[str, RoundResult] = {}
        errors: dict[str, str] = {}
        pending = list(self.site_names)
        blob = (contract_transfer.encode({**weights, **initial_discriminator(plan)})
                if self.transport == "stream" else None)
        digest = contract_transfer.digest(blob) if blob is not None else None
        self.meter = transfer.Meter()
        for _attempt in range(retries + 1):
            if not pending:
                break
            with ThreadPoolExecutor(max_workers=len(pending)) as pool:
                futures = {s: pool.submit(self.run_site_round, s, plan, weights, None,
                                          round_no, blob, digest) for s in pending}
            pending = []
            for site, fut in futures.items():
                try:
                    results[site] = fut.result()
                    errors.pop(site, None)
                except Exception as exc:
                    errors[site] = str(exc)
                    # a refusal (no approval, budget spent, rounds run) stays a refusal
                    if not isinstance(exc, MedsyftError) or exc.retry:
                        pending.append(site)
        return results, errors

    def run(self, plan: TrainingPlan, validation: Cohort | None = None,
            on_round: Callable[[RoundReport], None] | None = None,
            on_start: Callable[[int, int], None] | None = None,
            resume: bool = True, seed: int = 0) -> RunReport:
        """All remaining rounds of `plan`; resumes from the last checkpoint if any."""
        plan = self.bind(plan)
        ckpt = Checkpoints(Path(self.config.checkpoints), plan.function_name)
        latest = ckpt.latest() if resume else None
        if latest is not None:
            done, weights, report = latest
        else:
            done, weights = 0, initial_weights(plan, seed)
            report = RunReport(plan=plan.name, plan_hash=plan.plan_hash)
        model = build_model(plan.model) if validation is not None else None
        if on_start:
            on_start(done, plan.rounds)
        quorum = self.config.effective_quorum
        for rnd in range(done + 1, plan.rounds + 1):
            t0 = time.perf_counter()
            results, errors = self.run_round(plan, weights, round_no=rnd)
            if len(results) < quorum:
                detail = "; ".join(f"{s}: {e}" for s, e in errors.items())
                raise FederationError(
                    f"round {rnd}: only {len(results)} of {len(self.site_names)} sites answered, "
                    f"quorum is {quorum}. {detail}")
            counts = [r.n_k for r in results.values()]
            if any(c is None for c in counts):  # a site hides n_k: weigh sites equally
                counts = [1] * len(counts)
            weights = self.strategy.aggregate(
                [(c, r.params) for c, r in zip(counts, results.values(), strict=True)])
            auc = loss = None
            metrics: dict[str, float] = {}
            if model is not None and validation is not None:
                metrics = evaluate_task(load_params(model, weights), validation, plan)
                auc, loss = metrics.get("auc"), metrics.get("loss")
            sites = [SiteRoundReport.from_result(results[s]) if s in results
                     else SiteRoundReport(site=s, ok=False, error=errors.get(s))
                     for s in self.site_names]
            rr = RoundReport(round=rnd, sites=sites, auc=auc, loss=loss, metrics=metrics,
                             seconds=round(time.perf_counter() - t0, 3),
                             transfer_mb=round(self.meter.total / 2**20, 3),
                             transfer_mb_per_s=round(self.meter.mb_per_s, 1))
            report.rounds.append(rr)
            ckpt.save(rnd, weights, report)
            if on_round:
                on_round(rr)
        self.weights = weights
        return report


def _deny_reason(req: Any) -> str | None:
    """The data owner's reason for a denial, as syft 0.9.5 exposes it to the researcher."""
    try:
        status = req.code.status
        for value in status.status_dict.values():
            if isinstance(value, tuple) and len(value) == 2 and value[1]:
                return str(value[1])
            reason = getattr(value, "reason", None)
            if reason:
                return str(reason)
    except Exception:
        return None
    return None
