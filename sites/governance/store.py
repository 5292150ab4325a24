"""The site's governance database: datasets, plans, decisions, rounds and audit.

SQLite in the site folder (one file, WAL). This is where approval lives: the
runtime refuses any execution without an approval record bound to the plan
hash, whatever syft's own request status says, and counts rounds here (syft
0.9.5 output policies do not limit executions). Round reservation is atomic
(`BEGIN IMMEDIATE`) and charges the researcher's privacy ledger on the dataset
(composition of every run of all their plans there: a run that touched the private
data is charged whether it released weights or failed, and counts as a round).
Every decision, reservation, commit, release and execution appends to
`audit`, an append-only hash chain (`sites.governance.audit`): each entry holds
the previous entry's hash, so `verify_audit` finds any altered, removed or
reordered entry.

Never store pixel values, labels or secrets here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from policies.contract.errors import MedsyftError, Refused
from policies.contract.wire import FailureCode
from sites.governance import audit, database, schema

DB_FILE = "governance.sqlite"

#: Runs charged to the ledger and counted as rounds: every run that began (it reached the
#: private data), whatever its end. "aborted": the site stopped during it.
RUN_ACTIVE = ("running", "released", "failed", "aborted")
#: Runs whose charge is final (the ledger's "spent"; a running one is "reserved").
RUN_FINISHED = ("released", "failed", "aborted")
#: Decision method of the steward's refusal of a request that fails a hard check.
REFUSED = "refused"
#: The reviewer name of the steward's own decisions (automatic approvals and refusals).
AUTO_REVIEWER = "policy:auto"
class SiteMismatch(MedsyftError, RuntimeError):
    """The database belongs to another site (another syft server id)."""


@dataclass(frozen=True)
class Approval:
    """A plan that is runnable: enough distinct reviewers approved it since any denial."""

    request_id: str
    plan_hash: str
    researcher: str
    institution: str | None
    dataset: str
    policy_hash: str
    reviewers: tuple[str, ...]
    overridden: tuple[str, ...]
    decided_at: float
    graph_digest: str | None = None  # the training graph the reviewers saw (None: older)


@dataclass(frozen=True)
class Budget:
    """A researcher's privacy ledger on one dataset: cap and how to compose ε."""

    researcher: str
    dataset: str
    cap: float
    epsilon_of: Callable[[list[tuple[float, float, int]]], float]


@dataclass(frozen=True)
class RunRecord:
    id: int
    plan_hash: str
    round: int
    status: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    n_k: int | None
    epsilon: float | None
    started_at: float
    ended_at: float | None
    adjacency: str = "replace_one"
    category: str | None = None

    @property
    def noise(self) -> tuple[float, float, int]:
        """This run's (σ, q, steps): one entry of a history that ε composes."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def noisy_count(n: int, noise: float, seed: int) -> int:
    """max(1, round(N + 𝒩(0, noise²))): a Gaussian mechanism on a count (sensitivity 1)."""
    import numpy as np

    return max(1, int(round(n + np.random.default_rng(seed).normal(0.0, noise))))


class Governance:
    def __init__(self, site_dir: str | Path, url: str | None = None) -> None:
        """Open the site's database (SQLite in the site folder, or the PostgreSQL
        database at `url`, password included): created at this code's schema when there
        is none, refused (`SchemaMismatch`, naming both revisions and the command) when it
        is at another (`sites.governance.schema`)."""
        self.site_dir = Path(site_dir)
        self.path = self.site_dir / DB_FILE if url is None else None
        self.where = str(self.path) if url is None else database.redact(url)
        target = self.path if url is None else url
        schema.require_current(target, self.site_dir)
        self._engine = database.engine_for(url or database.sqlite_url(self.path))

    @contextmanager
    def _connect(self, immediate: bool = True) -> Iterator[database.Tx]:
        """One transaction (`sites.governance.database`). A writer by default: every
        writer is serialised, so the audit chain never forks and reservations never race."""
        with database.transaction(self._engine, write=immediate) as tx:
            yield tx

    # -- which site this database belongs to ------------------------------------
    def server_uid(self) -> str | None:
        """The syft server id recorded in the database (None: not recorded yet)."""
        with self._connect(immediate=False) as db:
            row = db.execute("SELECT value FROM site_meta WHERE key = 'server_uid'").fetchone()
        return row[0] if row else None

    def bind_server(self, server_uid: str, actor: str) -> None:
        """Record the site's server id once; a database already bound to another site's
        id is refused (`SiteMismatch`)."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM site_meta WHERE key = 'server_uid'").fetchone()
            if row is not None:
                if row[0] != server_uid:
                    raise SiteMismatch(f"{self.where} belongs to the site with server id "
                                       f"{row[0]}, not {server_uid} (site.yaml)")
                return
            db.execute("INSERT INTO site_meta (key, value) VALUES ('server_uid', ?)",
                       (server_uid,))
            self._audit(db, actor, "site.bound", server_uid)

    # -- audit (the chain itself is `sites.governance.audit`) -------------------
    _audit = staticmethod(audit.append)

    def audit(self, actor: str, event: str, subject: str, **details: object) -> None:
        """Append one entry to the audit chain in a transaction of its own."""
        with self._connect() as db:
            audit.append(db, actor, event, subject, **details)

    def verify_audit(self) -> tuple[bool, int, str]:
        """(ok, entries checked, message naming the first broken entry)."""
        with self._connect(immediate=False) as db:
            return audit.verify(db)

    def audit_entries(self, since: float = 0.0) -> list[dict]:
        """Audit entries since a time, oldest first, with their details decoded."""
        with self._connect(immediate=False) as db:
            return audit.entries(db, since)

    # -- datasets ------------------------------------------------------------
    def register_dataset(self, name: str, cohort_id: str, n: int, description: str,
                         actor: str, volume_shape: tuple[int, ...] = (),
                         count: tuple[int, float] | None = None,
                         holdout: tuple[int, float] | None = None,
                         mask_classes: int = 0) -> None:
        """Record a published dataset; audited.

        Args:
            name, cohort_id: how the runtime recognises the private asset.
            n: the training part's size N (the held-out subjects excluded).
            description: what researchers read.
            actor: who published.
            volume_shape: what a plan's model is traced on.
            count: (Ñ, s), the DP count of N drawn at publish for a private cohort size.
            holdout: (seed, fraction) of the audit split (`datasets.cohort.holdout_split`).
            mask_classes: classes of the voxel mask published with it (0: no mask).
        """
        with self._connect() as db:
            db.execute("DELETE FROM datasets WHERE name = ? OR cohort_id = ?", (name, cohort_id))
            db.execute(
                "INSERT INTO datasets (name, cohort_id, n, description, "
                "published_at, volume_shape, count_value, count_noise, holdout_seed, "
                "holdout_fraction, n_disclosed, mask_classes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, cohort_id, n, description, time.time(),
                 ",".join(str(int(s)) for s in volume_shape),
                 count[0] if count else None, count[1] if count else None,
                 holdout[0] if holdout else None, holdout[1] if holdout else None,
                 0 if count else 1, int(mask_classes)),
            )
            if count:
                db.execute("INSERT INTO count_draws VALUES (?,?,?,?,?)",
                           (name, cohort_id, count[0], float(count[1]), time.time()))
            self._audit(db, actor, "dataset.published", name, n=n,
                        holdout_fraction=holdout[1] if holdout else 0.0)
            if count:
                self._audit(db, actor, "dataset.count_released", name, count=count[0],
                            noise=count[1])

    def cohort_count(self, name: str, noise: float, actor: str = "site") -> tuple[int, float]:
        """(Ñ, s): the dataset's DP count of N, drawn once with std `noise` if it has none
        yet (a dataset published while its size was public); the draw is kept and audited.
        Ñ = max(1, round(N + 𝒩(0, s²))), the noise from the operating system's randomness.

        Raises:
            KeyError: no such dataset.
        """
        import secrets

        with self._connect(immediate=True) as db:
            row = db.execute("SELECT n, count_value, count_noise FROM datasets WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            if row["count_value"] is not None:
                return int(row["count_value"]), float(row["count_noise"])
            value = noisy_count(int(row["n"]), noise, secrets.randbits(64))
            db.execute("UPDATE datasets SET count_value = ?, count_noise = ? WHERE name = ?",
                       (value, float(noise), name))
            db.execute("INSERT INTO count_draws SELECT name, cohort_id, ?, ?, ? FROM datasets"
                       " WHERE name = ?", (value, float(noise), time.time(), name))
            self._audit(db, actor, "dataset.count_released", name, count=value, noise=noise)
            return value, float(noise)

    def dataset(self, name: str) -> dict | None:
        """The published dataset's record (name, cohort_id, n, description), or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
            return dict(row) if row else None

    def count_noises(self, name: str) -> list[float]:
        """The noise of every DP count of N ever drawn for this dataset name, oldest first
        (a dataset published again gets a new draw; every draw was released through q)."""
        with self._connect() as db:
            return [float(r[0]) for r in db.execute(
                "SELECT noise FROM count_draws WHERE dataset = ? ORDER BY drawn_at", (name,))]

    def private_cohort_ids(self) -> set[str]:
        """Cohort ids of every published private asset (to tell them from mocks)."""
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT cohort_id FROM datasets")}

    # -- decisions -----------------------------------------------------------
    def record_decision(self, *, request_id: str, plan_hash: str, researcher: str,
                        dataset: str, decision: str, policy_hash: str, reviewer: str,
                        actor: str, note: str, method: str, plan_json: str,
                        institution: str | None = None, overridden: list[str] | None = None,
                        approvals_required: int = 1, verdict: list[dict] | None = None,
                        graph_digest: str | None = None) -> None:
        """Append a decision. An approval by a reviewer who already approved since the
        last denial, or of a plan bound to another request, is refused."""
        if decision not in ("approved", "denied"):
            raise ValueError(decision)
        with self._connect(immediate=True) as db:
            if decision == "approved":
                other = db.execute(
                    "SELECT request_id FROM decisions WHERE plan_hash = ? AND request_id != ?"
                    " AND decision = 'approved'", (plan_hash, request_id)).fetchone()
                if other:
                    raise ValueError(
                        f"plan {plan_hash[:12]} is already bound to request {other[0][:8]}")
                if reviewer in self._current_approvers(db, request_id):
                    raise ValueError(f"{reviewer} already approved this request; a second, "
                                     "different reviewer must approve")
            db.execute(
                "INSERT INTO decisions (request_id, plan_hash, researcher, institution, dataset,"
                " decision, policy_hash, reviewer, actor, note, method, overridden,"
                " approvals_required, plan_json, decided_at, graph_digest)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (request_id, plan_hash, researcher, institution, dataset, decision, policy_hash,
                 reviewer, actor, note, method, json.dumps(overridden or []),
                 approvals_required, plan_json, time.time(), graph_digest),
            )
            event = f"request.{decision}" if method != "override" else "request.override"
            self._audit(db, actor, event, request_id, plan_hash=plan_hash,
                        researcher=researcher, dataset=dataset, policy_hash=policy_hash,
                        reviewer=reviewer, note=note, method=method,
                        overridden=overridden or [], approvals_required=approvals_required,
                        failing=[v["rule"] for v in (verdict or []) if v["status"] == "fail"])

    @staticmethod
    def _current_approvers(db: database.Tx, request_id: str) -> list[str]:
        rows = db.execute("SELECT decision, reviewer FROM decisions WHERE request_id = ?"
                          " AND method != ? ORDER BY id", (request_id, REFUSED)).fetchall()
        approvers: list[str] = []
        for r in rows:
            if r["decision"] == "denied":
                approvers = []
            elif r["reviewer"] not in approvers:
                approvers.append(r["reviewer"])
        return approvers

    def approvers(self, request_id: str) -> list[str]:
        """Distinct reviewers who approved the request since its last denial."""
        with self._connect() as db:
            return self._current_approvers(db, request_id)

    def approval(self, plan_hash: str) -> Approval | None:
        """The plan's approval if enough distinct reviewers approved it since any denial."""
        with self._connect() as db:
            # A refusal is of a request that could never be approved (anyone may send one
            # carrying any plan): it neither grants nor revokes the plan's approval.
            rows = db.execute("SELECT * FROM decisions WHERE plan_hash = ? AND method != ?"
                              " ORDER BY id", (plan_hash, REFUSED)).fetchall()
            if not rows:
                return None
            last = rows[-1]
            if last["decision"] != "approved":
                return None
            approvers = self._current_approvers(db, last["request_id"])
        if len(approvers) < last["approvals_required"]:
            return None
        overridden = sorted({rule for r in rows if r["decision"] == "approved"
                             for rule in json.loads(r["overridden"])})
        return Approval(last["request_id"], plan_hash, last["researcher"], last["institution"],
                        last["dataset"], last["policy_hash"], tuple(approvers),
                        tuple(overridden), last["decided_at"], last["graph_digest"])

    def decided_plan(self, plan_hash: str) -> dict | None:
        """The plan's JSON as its last decision recorded it (researcher, rounds, ...), or
        None."""
        with self._connect() as db:
            row = db.execute("SELECT plan_json FROM decisions WHERE plan_hash = ? AND"
                             " method != ? ORDER BY id DESC LIMIT 1",
                             (plan_hash, REFUSED)).fetchone()
        if row is None or not row["plan_json"]:
            return None
        return json.loads(row["plan_json"])

    def committed_epsilon(self, researcher: str, dataset: str, exclude_plan: str) -> float:
        """Σ ε targets of the researcher's other approved plans on the dataset."""
        total = 0.0
        with self._connect() as db:
            hashes = {r[0] for r in db.execute(
                "SELECT plan_hash FROM decisions WHERE researcher = ? AND dataset = ?"
                " AND plan_hash != ?", (researcher, dataset, exclude_plan))}
        for h in hashes:
            appr = self.approval(h)
            if appr is not None:
                with self._connect() as db:
                    row = db.execute("SELECT plan_json FROM decisions WHERE plan_hash = ?"
                                     " ORDER BY id DESC LIMIT 1", (h,)).fetchone()
                total += float(json.loads(row["plan_json"])["dp"]["target_epsilon"])
        return total

    def decisions(self) -> list[dict]:
        """Every recorded decision, oldest first."""
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY id")]

    # -- model facts ----------------------------------------------------------
    def cached_graph(self, trace_key: str, error_ttl_s: float | None = None
                     ) -> tuple[str | None, str | None] | None:
        """(graph JSON, error) traced earlier for this model and input shape, or None; a
        failure older than `error_ttl_s` counts as none (it may have been the moment's:
        a timeout under load, a tracer killed by the machine)."""
        with self._connect() as db:
            row = db.execute("SELECT graph_json, error, traced_at FROM model_graphs"
                             " WHERE trace_key = ?", (trace_key,)).fetchone()
        if row is None:
            return None
        if (row["graph_json"] is None and error_ttl_s is not None
                and time.time() - row["traced_at"] > error_ttl_s):
            return None
        return row["graph_json"], row["error"]

    def cache_graph(self, trace_key: str, graph_json: str | None,
                    error: str | None = None) -> None:
        """Remember a trace, failures too: a model that cannot be traced is not traced again
        at every listing or round (until its failure is old: `cached_graph`). The graph is
        validated again whenever it is used."""
        with self._connect() as db:
            db.execute("DELETE FROM model_graphs WHERE trace_key = ?", (trace_key,))
            db.execute("INSERT INTO model_graphs VALUES (?, ?, ?, ?)",
                       (trace_key, graph_json, error, time.time()))

    # -- verdicts -------------------------------------------------------------
    def verdict_seen(self, request_id: str, policy_hash: str) -> bool:
        """Whether the steward has reviewed this request under this policy version."""
        with self._connect() as db:
            return db.execute("SELECT 1 FROM verdicts WHERE request_id = ? AND policy_hash = ?",
                              (request_id, policy_hash)).fetchone() is not None

    def record_verdict(self, request_id: str, plan_hash: str, policy_hash: str,
                       report: list[dict], researcher: str) -> bool:
        """Store a request's verdict under a policy version; audit its arrival and result.
        True when this is the request's first verdict (it has just arrived)."""
        failing = [r["rule"] for r in report if r["status"] == "fail"]
        with self._connect(immediate=True) as db:
            first = db.execute("SELECT 1 FROM verdicts WHERE request_id = ?",
                               (request_id,)).fetchone() is None
            db.execute("DELETE FROM verdicts WHERE request_id = ? AND policy_hash = ?",
                       (request_id, policy_hash))
            db.execute("INSERT INTO verdicts VALUES (?,?,?,?,?)",
                       (request_id, policy_hash, plan_hash, time.time(), json.dumps(report)))
            if first:
                self._audit(db, "steward", "request.received", request_id,
                            researcher=researcher, plan_hash=plan_hash)
            self._audit(db, "steward", "request.verdict", request_id, policy_hash=policy_hash,
                        result="pass" if not failing else "fail", failing=failing)
        return first

    # -- rounds --------------------------------------------------------------
    def begin_run(self, plan_hash: str, max_rounds: int, noise_multiplier: float,
                  sample_rate: float, steps: int, actor: str,
                  budget: Budget | None = None, adjacency: str = "replace_one",
                  accountant: str | None = None) -> RunRecord:
        """Atomically reserve the next round of an approved plan, or refuse.

        With a `budget`, the reservation is also charged to the researcher's privacy
        ledger on the dataset: the composition of every run of all their plans there
        (released, failed, aborted or running), plus this one, must stay within the cap.
        The charge is never returned: a run that began reached the private data. Both checks and the
        insert happen in one `BEGIN IMMEDIATE` transaction, so parallel triggers at the
        budget's edge are serialised and never overspend.
        """
        refusal = None
        with self._connect(immediate=True) as db:
            used = db.execute(
                f"SELECT COUNT(*) FROM runs WHERE plan_hash = ? AND status IN {RUN_ACTIVE}",
                (plan_hash,)).fetchone()[0]
            running = db.execute(
                "SELECT COUNT(*) FROM runs WHERE plan_hash = ? AND status = 'running'",
                (plan_hash,)).fetchone()[0]
            if running:  # one round of a plan at a time: its ε and a GAN's kept
                # discriminator follow the rounds in order (red team, issue 17)
                self._audit(db, actor, "run.refused", plan_hash, reason="round in progress")
                refusal = ("a round of this plan is already running at this site; send the "
                           "next one when it has ended")
                code = FailureCode.BUSY
            elif used >= max_rounds:
                self._audit(db, actor, "run.refused", plan_hash, reason="rounds exhausted",
                            rounds=max_rounds)
                refusal = f"all {max_rounds} rounds of this plan have been run"
                code = FailureCode.ROUNDS_EXHAUSTED
            elif budget is not None:
                rows = db.execute(
                    f"SELECT noise_multiplier, sample_rate, steps FROM runs WHERE researcher = ?"
                    f" AND dataset = ? AND status IN {RUN_ACTIVE}",
                    (budget.researcher, budget.dataset)).fetchall()
                history = [(r[0], r[1], r[2]) for r in rows]
                spent = budget.epsilon_of(history)
                after = budget.epsilon_of(history + [(noise_multiplier, sample_rate, steps)])
                if after > budget.cap:
                    self._audit(db, actor, "run.refused", plan_hash, reason="budget exhausted",
                                spent=spent, cap=budget.cap, would_be=after)
                    code = FailureCode.BUDGET_EXHAUSTED
                    refusal = (f"privacy budget exhausted for {budget.dataset}: spent "
                               f"{spent:.2f} of {budget.cap:g}; this round would take it to "
                               f"{after:.2f}")
            if refusal is None:
                now = time.time()
                run_id = db.execute(
                    "INSERT INTO runs (plan_hash, round, researcher, dataset, status, started_at,"
                    " noise_multiplier, sample_rate, steps, adjacency, accountant)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                    (plan_hash, used + 1, budget.researcher if budget else "",
                     budget.dataset if budget else "", "running", now, noise_multiplier,
                     sample_rate, steps, adjacency, accountant)).scalar()
                self._audit(db, actor, "run.started", plan_hash, round=used + 1,
                            run=run_id)
                self._audit(db, actor, "budget.reserved", plan_hash, run=run_id,
                            noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                            steps=steps, adjacency=adjacency, accountant=accountant)
                record = RunRecord(run_id, plan_hash, used + 1, "running",
                                   noise_multiplier, sample_rate, steps, None, None, now, None,
                                   adjacency)
        if refusal is not None:
            raise Refused(refusal, code=code)
        return record

    def ledger_history(self, researcher: str, dataset: str,
                       statuses: tuple[str, ...] = RUN_FINISHED) -> list[RunRecord]:
        """The researcher's runs on the dataset (all their plans) with these statuses,
        oldest first: what their privacy ledger there composes."""
        placeholders = ",".join("?" * len(statuses))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT * FROM runs WHERE researcher = ? AND dataset = ? AND status IN"
                f" ({placeholders}) ORDER BY id", (researcher, dataset, *statuses)).fetchall()
        return [self._run(r) for r in rows]

    def ledger_keys(self) -> list[tuple[str, str]]:
        """Every (researcher, dataset) pair that has a ledger."""
        with self._connect() as db:
            return [(r[0], r[1]) for r in db.execute(
                "SELECT DISTINCT researcher, dataset FROM runs WHERE researcher != ''"
                " ORDER BY researcher, dataset")]

    def finish_run(self, run_id: int, *, released: bool, actor: str, n_k: int | None = None,
                   epsilon: float | None = None, category: str | None = None,
                   weights_sha256: str | None = None) -> None:
        """Close a reserved run: released (its ε and the released weights' digest are
        recorded) or failed (`category` says why). Either way its charge stays on the
        ledger and it counts as a round: it touched the private data, and whether it failed
        could depend on that data. Audited in the same transaction.

        Args:
            run_id: the id `begin_run` returned.
            released: whether weights left the site.
            actor: who closes it (`runtime`, `site` on restart).
            n_k: the cohort size used, recorded for the data owner.
            epsilon: the plan's ε at this site after this run.
            category: for a failure, its category (never a free-form message).
            weights_sha256: for a release, `policies.contract.wire.weights_digest`.
        """
        status = "released" if released else "failed"
        with self._connect(immediate=True) as db:
            row = db.execute("SELECT plan_hash, round FROM runs WHERE id = ?",
                             (run_id,)).fetchone()
            db.execute(
                "UPDATE runs SET status = ?, ended_at = ?, n_k = ?, epsilon = ?, category = ?,"
                " weights_sha256 = ? WHERE id = ?",
                (status, time.time(), n_k, epsilon, category,
                 weights_sha256 if released else None, run_id))
            self._audit(db, actor, "budget.committed", row["plan_hash"], run=run_id,
                        released=released)
            self._audit(db, actor, f"run.{status}", row["plan_hash"], round=row["round"],
                        run=run_id, n_k=n_k, epsilon=epsilon, category=category,
                        weights_sha256=weights_sha256)

    def abort_running(self, actor: str = "site") -> int:
        """Mark runs left 'running' by a crash as aborted (called at site start); their
        charge stays (the run may have trained on the data before the site stopped)."""
        with self._connect(immediate=True) as db:
            rows = db.execute("SELECT id, plan_hash, round FROM runs WHERE status = 'running'")
            rows = rows.fetchall()
            for r in rows:
                db.execute("UPDATE runs SET status = 'aborted', ended_at = ? WHERE id = ?",
                           (time.time(), r["id"]))
                self._audit(db, actor, "budget.committed", r["plan_hash"], run=r["id"],
                            released=False)
                self._audit(db, actor, "run.aborted", r["plan_hash"], round=r["round"],
                            run=r["id"])
            return len(rows)

    def runs(self, plan_hash: str | None = None) -> list[RunRecord]:
        """Every run (of one plan, if given), oldest first."""
        q = "SELECT * FROM runs" + (" WHERE plan_hash = ?" if plan_hash else "") + " ORDER BY id"
        with self._connect() as db:
            rows = db.execute(q, (plan_hash,) if plan_hash else ()).fetchall()
        return [self._run(r) for r in rows]

    @staticmethod
    def _run(r: database.Rec) -> RunRecord:
        return RunRecord(r["id"], r["plan_hash"], r["round"], r["status"], r["noise_multiplier"],
                         r["sample_rate"], r["steps"], r["n_k"], r["epsilon"], r["started_at"],
                         r["ended_at"], r["adjacency"], r["category"])

    def released_weights(self, plan_hash: str, round_no: int) -> tuple[str, str] | None:
        """(researcher, SHA-256) of the weights the plan's round `round_no` released here,
        or None if that round released nothing (or has not ended)."""
        with self._connect(immediate=False) as db:
            row = db.execute("SELECT researcher, weights_sha256 FROM runs WHERE plan_hash = ?"
                             " AND round = ? AND status = 'released' AND weights_sha256 IS NOT"
                             " NULL ORDER BY id DESC LIMIT 1",
                             (plan_hash, int(round_no))).fetchone()
        return (row["researcher"], row["weights_sha256"]) if row else None

    def use_nonce(self, nonce: str, window_s: float) -> bool:
        """Record a signed request's nonce; False if it was seen within `window_s` (a
        replay). Nonces older than that are forgotten: a request that old is refused as
        stale before its nonce is looked at."""
        now = time.time()
        with self._connect() as db:
            db.execute("DELETE FROM transfer_nonces WHERE seen_at < ?", (now - window_s,))
            try:
                db.execute("INSERT INTO transfer_nonces VALUES (?, ?)", (nonce, now))
            except IntegrityError:
                return False
        return True

    def history_through(self, run: RunRecord) -> list[tuple[float, float, int]]:
        """The (σ, q, steps) of every run of `run`'s plan up to and including it, whatever
        its status: what the plan's ε is once `run` has reached the data."""
        return [r.noise for r in self.runs(run.plan_hash)
                if r.id <= run.id and r.status in RUN_ACTIVE]

    def ledger_through(self, run: RunRecord, researcher: str, dataset: str
                       ) -> list[tuple[float, float, int]]:
        """The (σ, q, steps) of every run on the researcher's ledger for the dataset (all
        their plans) up to and including `run`, whatever its status: a round of another
        of their plans may be reading the data at the same time."""
        return [r.noise for r in self.ledger_history(researcher, dataset, RUN_ACTIVE)
                if r.id <= run.id]

    def charged_history(self, plan_hash: str) -> list[tuple[float, float, int]]:
        """The (σ, q, steps) of every finished run of the plan, released or failed: what
        its ε composes."""
        return [r.noise for r in self.runs(plan_hash) if r.status in RUN_FINISHED]

    def ledger_adjacency(self, researcher: str, dataset: str, current: str) -> str:
        """The relation the researcher's ledger on the dataset is stated under: replace-one
        once any of their runs there was (the exact N reached them), else `current`."""
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM runs WHERE researcher = ? AND dataset = ? AND"
                             " adjacency = 'replace_one' LIMIT 1",
                             (researcher, dataset)).fetchone()
        return "replace_one" if row else current
