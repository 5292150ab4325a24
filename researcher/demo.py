"""`medsyft demo`: a whole federated DP training across three demo hospitals on loopback.

From nothing: three sites with different synthetic cohorts (non-IID), a
researcher account at each, a plan submitted, each data owner's approval given
through the console, all rounds run with a table per round, and
`demo-report.json` written. Every server it started is stopped, whatever
happens. Secrets live in a keyring file scoped to the demo's own folder (the
demo says so); a real site uses the system keyring.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from datasets.preprocess import Preprocessing, methods_of, normalise_volumes
from datasets.synthetic import DEMO_PROFILES, generate_cohort
from datasets.synthetic_files import write_synthetic_cohort
from policies.contract.plan import load_plan
from researcher.federation import Federation, FederationConfig, SiteEntry, store_password
from researcher.results import RunReport

EXAMPLES = Path(__file__).parent / "examples"
POLICIES = Path(__file__).resolve().parent.parent / "policies"

HOSPITALS = [  # name, cohort size, seed
    ("st-agnes", 480, 11),
    ("riverside", 320, 23),
    ("northgate", 400, 37),
]
#: How each hospital's scanners export (synthetic files written, then ingested for real).
EXPORTS = {
    "st-agnes": dict(mri_format="dicom", pet_format="dicom", pet_spacing_mm=12.0),
    "riverside": dict(mri_format="nifti", pet_format="nifti"),
    "northgate": dict(mri_format="dicom-multiframe", pet_format="dicom-multiframe",
                      rotation_deg=12.0),
}
GRID = dict(spacing_mm=(8.0, 8.0, 8.0), shape=(24, 24, 24))
RESEARCHER = ("ada@lovelace-institute.org", "Ada Lovelace", "Lovelace Institute")
DATASET = "brain-mri-pet"
#: the example plan of each task (`researcher/examples/`)
TASK_PLANS = {"classify": "plan.yaml", "segment": "segment.yaml",
              "synthesize": "synthesize.yaml", "gan": "gan.yaml"}
#: segmentation and synthesis: lesioned cohorts on this grid. Segmentation goes through the
#: files and the ingest (each hospital's masks as DICOM SEG or NIfTI label maps); synthesis
#: is published from memory, PET moved slightly against the MRI (the file writer has no
#: misregistration)
TASK_GRID = (16, 16, 16)
MASK_EXPORTS = {"st-agnes": "dicom-seg", "riverside": "nifti", "northgate": "dicom-seg"}
TASK_MISALIGN = {"segment": 0.0, "synthesize": 0.3, "gan": 0.3}


def _policy_file(name: str) -> Path:
    candidate = POLICIES / f"{name}.yaml"
    if not candidate.exists():
        import policies

        candidate = Path(policies.__file__).parent / f"{name}.yaml"
    return candidate


def run_demo(workdir: Path, report_path: Path, rounds: int | None = None,
             console: Console | None = None, cohort_scale: float = 1.0,
             task: str = "classify") -> RunReport:
    """The whole demo: three hospitals, one researcher, a DP plan approved and trained.

    Args:
        workdir: scratch folder for the demo's sites, exports and keyring (recreated).
        report_path: where the JSON report is written.
        rounds: override the plan's rounds.
        console: where progress goes (the CLI's stdout by default).
        cohort_scale: multiplies each hospital's cohort size (a quicker, smaller run).
        task: classify (scans ingested from DICOM/NIfTI files), segment, synthesize or gan
            (synthetic lesioned cohorts published from memory; see `TASK_GRID`).

    Returns:
        The run's report, round by round and site by site.
    """
    from policies.cli_output import out
    from researcher.cli import metrics_text, run_with_progress
    from sites.common import keychain
    from sites.console.http_client import ConsoleSession
    from sites.operator import admin, lifecycle
    from sites.operator.site import Site
    from sites.review import console as site_console

    con = console or out
    if task not in TASK_PLANS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASK_PLANS)}")
    t_start = time.perf_counter()
    workdir = workdir.resolve()
    if workdir.exists():  # a previous demo: stop anything it left running, then start over
        for site_yaml in workdir.glob("sites/*/site.yaml"):
            try:
                lifecycle.down(site_yaml.parent)
            except Exception:
                pass
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    keychain.use_folder_keyring(workdir / "keyring")
    con.print(f"[dim]demo secrets are kept in CLEAR in a keyring file scoped to "
              f"{workdir / 'keyring'} (the demo's --allow-plaintext-keyring, recorded in each "
              "site's status and audit log); a real site uses an encrypted keyring[/dim]")

    site_dirs = {name: workdir / "sites" / name for name, _, _ in HOSPITALS}
    for name, _, _ in HOSPITALS:
        # three sites share this machine's cores: one training thread each
        lifecycle.init_site(name, site_dirs[name], policy_file=_policy_file(name),
                            train_threads=1)
    started: list[Path] = []
    try:
        con.rule("1. hospitals start their datasites")
        with ThreadPoolExecutor(max_workers=len(HOSPITALS)) as pool:
            futures = {name: pool.submit(lifecycle.up, d) for name, d in site_dirs.items()}
            for name, fut in futures.items():
                st = fut.result()
                started.append(site_dirs[name])
                con.print(f"  {name}: datasite up at {st.url}; approval console at "
                          f"{st.console_url}")

        reviewer_logins = _create_reviewers(site_dirs, con)

        con.rule("2. each hospital creates the researcher's account and publishes its scans "
                 "(DICOM/NIfTI → ingest → private asset + synthetic mock)")
        email, full_name, institution = RESEARCHER
        password = keychain.generate_password()
        pp = Preprocessing(**GRID)
        for name, n, seed in HOSPITALS:
            # never so small that a DP count (σ 10) could leave too few for a batch of 48
            n = max(100, round(n * cohort_scale))
            admin.add_researcher(site_dirs[name], email, full_name, password, institution)
            if task == "segment":
                exports = workdir / "imaging" / name
                fmt = {k: v for k, v in EXPORTS[name].items() if k != "pet_spacing_mm"}
                manifest = write_synthetic_cohort(
                    exports, n=n, seed=seed, profile=DEMO_PROFILES[name], shape=TASK_GRID,
                    spacing_mm=GRID["spacing_mm"][0], mask_format=MASK_EXPORTS[name], **fmt)
                cohort, ingest, _ = admin.publish_manifest(
                    site_dirs[name], DATASET, manifest,
                    Preprocessing(spacing_mm=GRID["spacing_mm"], shape=TASK_GRID),
                    mask_classes=3)
                lesioned = int((cohort.masks.reshape(cohort.n, -1).max(1) > 0).sum())
                con.print(f"  {name}: account {email}; ingested {cohort.n} subjects with "
                          f"masks ({', '.join(ingest.mask_sources)}) in {ingest.seconds:.0f} s;"
                          f" {lesioned} with a lesion (mask: core, oedema)")
                continue
            if task != "classify":
                cohort = admin.publish_synthetic(site_dirs[name], DATASET, n, seed, name,
                                                 TASK_GRID, lesions=True,
                                                 misalign=TASK_MISALIGN[task])
                lesioned = int((cohort.masks.reshape(cohort.n, -1).max(1) > 0).sum())
                con.print(f"  {name}: account {email}; published {DATASET}: {cohort.n} "
                          f"synthetic subjects on a {'x'.join(map(str, TASK_GRID))} grid, "
                          f"{lesioned} with a lesion (mask: core, oedema)")
                continue
            exports = workdir / "imaging" / name
            manifest = write_synthetic_cohort(exports, n=n, seed=seed,
                                              profile=DEMO_PROFILES[name], **EXPORTS[name])
            cohort, ingest, _ = admin.publish_manifest(site_dirs[name], DATASET, manifest, pp)
            kinds = ", ".join(f"{m.upper()} {'/'.join(ingest.sources[m])}"
                              for m in ingest.modalities)
            con.print(f"  {name}: account {email}; ingested {cohort.n} subjects ({kinds}"
                      f"{', PET as SUVbw' if ingest.suv_factor_range else ''}) in "
                      f"{ingest.seconds:.0f} s; published {DATASET} "
                      f"({int(cohort.labels.sum())} disease)")

        con.rule("3. the researcher logs in and submits a plan")
        config = FederationConfig(
            name="demo", checkpoints=str(workdir / "checkpoints"),
            sites=[SiteEntry(name=name, host="127.0.0.1",
                             port=lifecycle.load_site(site_dirs[name])[1].port, email=email)
                   for name, _, _ in HOSPITALS])
        (workdir / "federation.yaml").write_text(json.dumps(config.model_dump(), indent=2))
        for site in config.sites:
            store_password(site, password)
        plan = load_plan(EXAMPLES / TASK_PLANS[task])
        if rounds:
            plan = plan.model_copy(update={"rounds": rounds})
        fed = Federation(config).connect()
        for status in fed.submit(plan).values():
            con.print(f"  {status.site}: request {status.request_id[:8]} {status.status}")

        con.rule("4. each data owner reviews the plan in the approval console")
        for name, _, _ in HOSPITALS:
            policy, _ = Site.open(site_dirs[name]).policy()
            views = _wait_for_verdicts(site_console, site_dirs[name], fed.bind(plan))
            for v in views:
                passed = sum(c.status == "pass" for c in v.checks)
                con.print(f"  {name}: request {v.short_id} verdict {passed}/{len(v.checks)} "
                          f"rules pass, projected σ {v.noise_multiplier:.3f}, "
                          f"{v.n_parameters:,} parameters")
                if v.status == "approved":
                    con.print("    approved automatically: its policy says approval: auto "
                              "and every rule passes")
                    continue
                url = lifecycle.status(site_dirs[name]).console_url
                for email_r, password_r in reviewer_logins[name][:policy.approvals_required]:
                    # through the web console, as a reviewer in a browser would
                    with ConsoleSession(url) as page:
                        done = page.login(email_r, password_r).approve(
                            v.id, note="demo: reviewed in the web console")
                    con.print(f"    {email_r} approved at {url} → {done['message']}")

        con.rule(f"5. federated DP training, {plan.rounds} rounds")
        if task == "classify":
            validation = generate_cohort(150, seed=2024)
            validation.volumes = normalise_volumes(validation.volumes, methods_of(pp))
        else:
            validation = generate_cohort(60, seed=2024, shape=TASK_GRID, lesions=True,
                                         misalign=TASK_MISALIGN[task])
        report = run_with_progress(fed, plan, validation, resume=False, console=con)
        report_path.write_text(_report_json(report, time.perf_counter() - t_start))
        last = report.rounds[-1]
        con.rule("done")
        if task == "classify":
            con.print(f"global AUC per round: "
                      f"{', '.join(f'{r.auc:.3f}' for r in report.rounds)}; final "
                      f"{last.auc:.3f}")
        else:
            for r in report.rounds:
                con.print(f"round {r.round} on the validation cohort: {metrics_text(r.metrics)}")
        for s in last.sites:
            if s.ok:
                con.print(f"  {s.site}: {s.guarantee} (target {s.target_epsilon:g}, "
                          f"accountant {s.accountant})")
        con.rule("6. each data owner audits what left the site "
                 "(membership inference with the subjects held out at publish)")
        from sites.review.privacy_audit import audit_plan

        for name, _, _ in HOSPITALS:
            audit = audit_plan(site_dirs[name], fed.bind(plan).plan_hash)
            f = audit.figures
            con.print(f"  {name}: AUC {f.auc:.3f} (claim allows ≤ {f.max_auc_allowed:.3f}), "
                      f"TPR at 1% FPR {f.tpr_at_1pct_fpr:.3f} (≤ "
                      f"{f.max_tpr_at_1pct_allowed:.3f}), empirical ε ≥ "
                      f"{f.epsilon_lower_bound:.2f} (claimed {f.epsilon_claimed:.2f}, "
                      f"{audit.adjacency}); {f.members} trained on, {f.nonmembers} held out"
                      + ("" if not audit.warnings else f" [red]{'; '.join(audit.warnings)}"
                                                       "[/red]"))
        con.print(f"report written to {report_path} "
                  f"({time.perf_counter() - t_start:.0f} s in all)")
        return report
    finally:
        for d in started:
            lifecycle.down(d)
        con.print(f"[dim]stopped {len(started)} datasite(s)[/dim]")


def _create_reviewers(site_dirs: dict[str, Path], con) -> dict[str, list[tuple[str, str]]]:
    """Each hospital's data owner creates an account per reviewer its policy names (as
    `medsyft site add-reviewer` does); the demo keeps their first passwords in memory."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance
    from sites.operator.site import Site

    logins: dict[str, list[tuple[str, str]]] = {}
    for name, d in site_dirs.items():
        logins[name] = []
        for who in Site.open(d).policy()[0].reviewers:
            account, password = Reviewers(Governance(d)).add(
                f"{who}@{name}.example", who, actor="data owner (demo)")
            logins[name].append((account.email, password))
        con.print(f"  {name}: reviewer accounts {', '.join(e for e, _ in logins[name])}")
    return logins


def _wait_for_verdicts(site_console, site_dir: Path, plan, timeout_s: float = 90.0) -> list:
    """The plan's request at a site once the site steward has reviewed it."""
    from sites.governance.store import Governance

    deadline = time.monotonic() + timeout_s
    while True:
        views = [v for v in site_console.list_requests(site_dir) if v.plan == plan]
        if views and all(Governance(site_dir).verdict_seen(v.id, v.policy_hash) for v in views):
            return views
        if time.monotonic() > deadline:
            return views
        time.sleep(1.0)


def _report_json(report: RunReport, seconds: float) -> str:
    doc = {
        "plan": report.plan, "plan_hash": report.plan_hash, "seconds": round(seconds, 1),
        "rounds": [
            {"round": r.round, "auc": r.auc, "loss": r.loss, "metrics": r.metrics,
             "seconds": r.seconds,
             "sites": [s.model_dump(include={"site", "ok", "n_k", "sample_rate",
                                             "noise_multiplier", "steps", "delta", "epsilon",
                                             "target_epsilon", "adjacency", "accountant",
                                             "guarantee", "ledger_epsilon", "count_noise",
                                             "error"})
                       for s in r.sites]}
            for r in report.rounds],
    }
    return json.dumps(doc, indent=2)
