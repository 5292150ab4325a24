"""`medsyft site ...` (hospital IT) and `medsyft console ...` (data owner) commands.

Thin typer layers over `lifecycle`, `admin` and `console`; heavy imports
(syft, torch) happen inside commands so `--help` stays instant.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from datasets.cli import (
    MRI_NORM,
    PET_NORM,
    SHAPE,
    SPACING,
    preprocessing_from,
    print_ingest_report,
    progress_bar,
)
from policies.cli_output import err, esc, out, plain, print_json
from policies.contract.claims import guarantee
from policies.contract.errors import printable

site_app = typer.Typer(help="Run a hospital datasite: create, start, stop, add researchers, "
                       "publish cohorts.", no_args_is_help=True)
console_app = typer.Typer(help="Approval console for the data owner: review, approve and deny "
                          "training plans.", no_args_is_help=True)

SiteDir = typer.Option(Path("."), "--site", "-s", help="site folder (holds site.yaml)",
                       envvar="MEDSYFT_SITE")


PlaintextKeyringOption = typer.Option(
    False, "--allow-plaintext-keyring",
    help="demo only: let a keyring that stores secrets in clear hold them (recorded in "
         "`site status`, the site log and the audit log)")


@site_app.command("init")
def site_init(
    name: str = typer.Argument(..., help="site name, e.g. st-agnes"),
    dir: Path = typer.Option(None, "--dir", help="site folder (default: ./NAME)"),
    port: int = typer.Option(0, "--port", help="port to serve on (default: a free one)"),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="address to bind; loopback unless you mean otherwise"),
    device: str = typer.Option("auto", "--device", help="training device: auto, cpu or cuda"),
    policy: Path = typer.Option(None, "--policy", exists=True, dir_okay=False,
                                help="policy file to copy into the site"),
    admin_email: str = typer.Option(None, "--admin-email", help="data owner's admin login"),
    allow_plaintext_keyring: bool = PlaintextKeyringOption,
) -> None:
    """Create a site folder with site.yaml; its signing key and admin password go to the
    keyring, never to a file. A keyring that would keep them in clear, or that nobody
    chose, is refused with the steps to set up the encrypted one."""
    from sites.common.keychain import allow_plaintext_keyring as allow_plaintext
    from sites.operator.lifecycle import init_site

    if allow_plaintext_keyring:
        allow_plaintext()

    site_dir = dir or Path(name)
    cfg = init_site(name, site_dir, port=port or None, host=host, device=device,
                    policy_file=policy, admin_email=admin_email)
    out.print(f"created site [bold]{cfg.name}[/bold] in {site_dir.resolve()} "
              f"(http://{cfg.host}:{cfg.port}); secrets stored in the keyring")
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]note:[/yellow] binding to {host}, not loopback")


@site_app.command("up")
def site_up(site_dir: Path = typer.Argument(Path("."), help="site folder"),
            allow_plaintext_keyring: bool = PlaintextKeyringOption) -> None:
    """Start the datasite; returns once it answers with the site's own identity. Refuses a
    keyring backend that keeps secrets in clear or that nobody chose."""
    from sites.operator.lifecycle import up

    with err.status("starting datasite..."):
        st = up(site_dir, allow_plaintext_keyring=allow_plaintext_keyring)
    out.print(f"site [bold]{st.name}[/bold] is up at {st.url} (pid {st.pid})")
    if st.keyring_plaintext:
        err.print(f"[yellow]warning:[/yellow] {esc(st.keyring)}")
    if st.console_url:
        out.print(f"approval console: {st.console_url} (reviewers log in with the accounts "
                  "from `medsyft site add-reviewer`)")


@site_app.command("upgrade")
def site_upgrade(
    site_dir: Path = typer.Argument(Path("."), help="site folder (the site must be stopped)"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="migrate a temporary copy and report; change nothing"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Bring the governance database to this release's schema: backs it up to
    SITE_DIR/backups first, migrates in one transaction, then verifies the audit chain.
    A database written by a later release is refused (restore a backup instead). Exit 1
    if the audit chain does not verify afterwards."""
    from sites.operator.upgrade import upgrade_site

    with err.status("upgrading the governance database..."):
        report = upgrade_site(site_dir, dry_run=dry_run)
    if json_out:
        print_json(report.model_dump())
    else:
        what = "would apply" if dry_run else "applied"
        if report.applied:
            out.print(f"{report.site}: schema {esc(str(report.from_revision))} → "
                      f"{report.to_revision}; {what} {', '.join(report.applied)}")
        else:
            out.print(f"{report.site}: schema {report.to_revision} is current; nothing to do")
        if report.backup:
            out.print(f"backup taken first: {report.backup} (sha256 {report.backup_sha256})")
        colour = "green" if report.audit_ok else "red"
        out.print(f"audit chain: [{colour}]{esc(report.audit_message)}[/{colour}]")
    raise typer.Exit(0 if report.audit_ok else 1)


@site_app.command("backup")
def site_backup(
    site_dir: Path = typer.Argument(Path("."), help="site folder (running or stopped)"),
    out_file: Path = typer.Option(..., "--out", help="the archive to write (must not exist)"),
    include_secrets: bool = typer.Option(
        False, "--include-secrets",
        help="also carry the site's signing key and admin password (for a new machine "
             "whose keyring will not hold them)"),
    recipient: list[str] = typer.Option(
        None, "--recipient",
        help="an age X25519 public key (age1…) that can open the archive too, with its "
             "identity kept offline (repeatable)"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Back the site up into one encrypted archive, while it runs: the databases (online
    snapshots), blobs, releases, site.yaml, the policy and logs, with a manifest of
    SHA-256 sums, the audit head and the ledger. Sealed with the site's backup key
    (AES-256-GCM, the key in the keyring, made at the first backup): keep a copy of the
    keyring, or the archive cannot be opened."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from sites.operator.backup import backup_site

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=err, transient=True, disable=json_out) as bar:
        task = bar.add_task("backing up", total=None)

        def tick(done: int, path: str) -> None:
            bar.update(task, completed=done, description=f"backing up {path[-48:]}")

        report = backup_site(site_dir, out_file, include_secrets=include_secrets,
                             progress=tick, recipients=recipient or [])
    if json_out:
        print_json(report.model_dump())
        return
    out.print(f"{report.site}: {report.files} files, {report.bytes / 1e6:.1f} MB sealed "
              f"in {esc(report.archive)} ({report.seconds:.1f} s; backup key "
              f"{report.key_id})")
    out.print(f"site verify key: {report.verify_key} (the manifest is signed with the site's "
              "key; keep this with any age identity)")
    out.print(f"audit: {report.audit_entries} entries, head {report.audit_head[:16]}; "
              f"{len(report.ledger)} ledger(s); {len(report.datasets)} dataset(s)")
    out.print("keyring secrets: " + ("included" if report.secrets_included else
                                     "not included (restore needs this site's keyring)"))
    if report.recipients:
        out.print(f"also opens with the identity of: {', '.join(report.recipients)}")
    for line in report.left_out:
        out.print(f"[yellow]not archived:[/yellow] {esc(line)}")


@site_app.command("restore")
def site_restore(
    archive: Path = typer.Argument(..., help="an archive written by `site backup`",
                                   exists=True, dir_okay=False),
    site_dir: Path = typer.Argument(..., help="a new or empty folder for the site"),
    identity: Path = typer.Option(
        None, "--identity", help="an age identity file (mode 0600) for an archive made "
                                 "with --recipient; default: the keyring's backup key"),
    verify_key: str = typer.Option(
        None, "--verify-key", help="the site's verify key (hex, printed by `site backup`): "
                                   "required with --identity where the keyring lacks the "
                                   "site's signing key"),
    allow_older: bool = typer.Option(
        False, "--allow-older", help="restore although a newer backup of the site is on "
                                     "record (recorded in the audit log)"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Restore a site from its backup into a new folder, then prove it whole: every
    file's SHA-256, the audit chain and its head, the ledger per (researcher, dataset),
    each dataset's private asset, the syft accounts. Nothing is kept if a check fails.
    Start it afterwards with `medsyft site up SITE_DIR`."""
    from sites.operator.restore import restore_site

    with err.status("restoring (checking every file)...") if not json_out else nullcontext():
        report = restore_site(archive, site_dir, identity=identity, verify_key=verify_key,
                              allow_older=allow_older)
    if json_out:
        print_json(report.model_dump())
        return
    import time as _time

    made = _time.strftime("%Y-%m-%d %H:%M UTC", _time.gmtime(report.backup_created_at))
    out.print(f"backup of {report.site} made {made}, {report.audit_entries} audit entries; "
              f"manifest {esc(report.signature)}")
    if report.older_than_newest_backup:
        out.print("[yellow]older than the newest backup on record (--allow-older)[/yellow]")
    out.print(f"{report.site} restored into {esc(report.site_dir)}: {report.files} files, "
              f"{report.blob_paths_rewritten} blob path(s) rewritten, secrets "
              f"{report.secrets} ({report.seconds:.1f} s)")
    for c in report.checks:
        mark = "[green]ok[/green]" if c.ok else "[red]FAIL[/red]"
        out.print(f"  {mark}  {esc(c.name)}: {esc(c.detail)}")
    if report.upgrade_needed:
        out.print(f"[yellow]run `medsyft site upgrade {esc(report.site_dir)}` before "
                  "starting it[/yellow]")


@site_app.command("doctor")
def site_doctor(
    site_dir: Path = typer.Argument(Path("."), help="site folder"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable report"),
) -> None:
    """Say whether this site is safe to run and what to fix: keyring, secrets, database
    and schema, server id, syft's store, policy, audit chain, disk, TLS certificates,
    GPU, ports, sandbox, permissions; each pass, warn or fail with its fix. Exit 1 on any
    fail. `site up` runs the checks that would make a start unsafe first."""
    from sites.operator.doctor import diagnose

    report = diagnose(site_dir)
    if json_out:
        print_json(report.model_dump())
    else:
        colours = {"pass": "green", "warn": "yellow", "fail": "red"}
        out.print(f"{report.site} ({esc(report.site_dir)}), "
                  f"{'running' if report.running else 'stopped'}")
        for c in report.checks:
            colour = colours[c.status]
            out.print(f"  [{colour}]{c.status:4}[/{colour}]  {c.name:12} {esc(c.detail)}")
            if c.fix:
                out.print(f"        {'':12} fix: {esc(c.fix)}")
        fails = sum(c.status == "fail" for c in report.checks)
        warns = sum(c.status == "warn" for c in report.checks)
        out.print("[green]safe to run[/green]" if not fails else
                  f"[red]{fails} check(s) failed[/red]", f"({warns} warning(s))")
    raise typer.Exit(0 if report.ok else 1)


@site_app.command("service")
def site_service_unit(
    site_dir: Path = typer.Argument(Path("."), help="site folder"),
    user: str = typer.Option(None, "--user", help="the account the site runs as (not root; "
                                                   "default: you)"),
    keyring_file: Path = typer.Option(None, "--keyring-file",
                                      help="medsyft's encrypted keyring file "
                                           "(default: $MEDSYFT_KEYRING_FILE or the user's)"),
    credential: Path = typer.Option(None, "--credential",
                                    help="the sealed passphrase (default: "
                                         "/etc/credstore.encrypted/medsyft-keyring)"),
) -> None:
    """Print a hardened systemd unit for this site: runs as USER, the keyring passphrase
    from an encrypted systemd credential, no new privileges, read-only system with only
    the site folder and the keyring's folder writable, private /tmp, restarted on
    failure. Save it as /etc/systemd/system/medsyft-NAME.service."""
    import getpass
    import os

    from sites.common import cryptfile_keyring
    from sites.operator.service import unit

    user = user or getpass.getuser()
    if user == "root":
        raise typer.BadParameter("a site must not run as root: give --user ACCOUNT "
                                 "(e.g. a system user made with `useradd --system medsyft`)",
                                 param_hint="--user")
    if keyring_file is None and os.environ.get(cryptfile_keyring.FILE_ENV):
        keyring_file = Path(os.environ[cryptfile_keyring.FILE_ENV])
    sys.stdout.write(unit(site_dir, user, keyring_file=keyring_file, credential=credential))


@site_app.command("down")
def site_down(site_dir: Path = typer.Argument(Path("."), help="site folder")) -> None:
    """Stop the datasite and any training it runs."""
    from sites.operator.lifecycle import down

    out.print("stopped" if down(site_dir) else "was not running")


@site_app.command("status")
def site_status(site_dir: Path = typer.Argument(Path("."), help="site folder"),
                json_out: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """Whether the datasite runs and answers with its own identity (exit 1 if not)."""
    from sites.operator.lifecycle import status, status_dict

    st = status(site_dir)
    if json_out:
        print_json(status_dict(st))
    else:
        state = "[green]running[/green]" if st.running else "[red]not running[/red]"
        out.print(f"{st.name}: {state} at {st.url} (pid {st.pid}, answering={st.answering}, "
                  f"identity_ok={st.identity_ok})")
        out.print(f"sandbox: {esc(st.sandbox)}")
        if st.keyring:
            colour = "red" if st.keyring_plaintext else "green"
            out.print(f"keyring: [{colour}]{esc(st.keyring)}[/{colour}]")
        if st.console_url:
            answer = "" if st.console_answering else " [red](not answering)[/red]"
            out.print(f"approval console: {st.console_url}{answer}")
        else:
            out.print("approval console: off (site.yaml console.enabled: false)")
    raise typer.Exit(0 if st.running else 1)


@site_app.command("add-researcher")
def site_add_researcher(
    email: str = typer.Argument(..., help="researcher's login email"),
    name: str = typer.Option(..., "--name", help="full name"),
    institution: str = typer.Option("", "--institution"),
    site_dir: Path = SiteDir,
) -> None:
    """Create a data-scientist account and the site's record of who it is (email, name,
    institution: what access rules and the audit use). The initial password is read from
    stdin when piped, else generated and shown once."""
    from sites.common.keychain import generate_password
    from sites.operator.admin import add_researcher

    if not sys.stdin.isatty():
        password = sys.stdin.readline().strip()
        if len(password) < 8:
            raise typer.BadParameter("password from stdin must have at least 8 characters")
        shown = False
    else:
        password, shown = generate_password(), True
    r = add_researcher(site_dir, email, name, password, institution)
    out.print(f"created researcher {r.email}")
    if shown:
        out.print(f"initial password (shown once, pass it on securely): {password}")


@site_app.command("update-researcher")
def site_update_researcher(
    email: str = typer.Argument(..., help="the researcher's current email"),
    new_email: str = typer.Option(None, "--email", help="new login email"),
    name: str = typer.Option(None, "--name", help="new full name"),
    institution: str = typer.Option(None, "--institution", help="new institution"),
    site_dir: Path = SiteDir,
) -> None:
    """Change a researcher's email, name or institution (researchers cannot change their
    own on a medsyft site). Audited; an email change carries the researcher's privacy
    ledger over, and plans naming the old email stop running until resubmitted."""
    from sites.operator.admin import update_researcher

    if new_email is None and name is None and institution is None:
        raise typer.BadParameter("give at least one of --email, --name, --institution")
    r = update_researcher(site_dir, email, new_email=new_email, name=name,
                          institution=institution)
    out.print(f"updated researcher {r.email}: {r.name}, {r.institution or '(no institution)'}")


@site_app.command("researchers")
def site_researchers(site_dir: Path = SiteDir,
                     json_out: bool = typer.Option(False, "--json", help="machine-readable")
                     ) -> None:
    """The site's own record of its researchers: the identity review and access rules use."""
    from sites.governance.registry import Registry
    from sites.governance.store import Governance
    from sites.operator.config import load_site

    site_dir, _ = load_site(site_dir)
    people = Registry(Governance(site_dir)).all()
    if json_out:
        print_json([p.model_dump() for p in people])
        return
    t = Table("email", "name", "institution", "syft account", "verify key", "since")
    for p in people:
        t.add_row(plain(p.email), plain(p.name), plain(p.institution), p.user_id[:12],
                  p.verify_key[:12], _when(p.created_at))
    out.print(t)


@site_app.command("add-reviewer")
def site_add_reviewer(
    email: str = typer.Argument(..., help="the reviewer's login email (their identity in "
                                          "every decision)"),
    name: str = typer.Option(..., "--name", help="full name, as decisions show it"),
    site_dir: Path = SiteDir,
    json_out: bool = typer.Option(False, "--json", help="machine-readable (includes the "
                                                        "password: pipe it somewhere safe)"),
) -> None:
    """Create a named reviewer account for the approval console (web page and CLI). Its
    first password is generated and shown once; only an Argon2id hash is stored. Name the
    account in the policy's `reviewers` (by email or name) so it may decide; with
    `approvals_required: 2` two different accounts must approve."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance
    from sites.operator.config import load_site

    site_dir, cfg = load_site(site_dir)
    reviewer, password = Reviewers(Governance(site_dir)).add(email, name,
                                                             actor="operator via CLI")
    if json_out:
        print_json({"email": reviewer.email, "name": reviewer.name, "password": password})
        return
    out.print(f"created reviewer {esc(reviewer.name)} <{reviewer.email}> on {cfg.name}")
    out.print(f"first password (shown once, hand it over in person): {password}")


@site_app.command("reset-reviewer")
def site_reset_reviewer(email: str = typer.Argument(...), site_dir: Path = SiteDir) -> None:
    """Give a reviewer a new generated password (shown once) and lift a lock-out."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance
    from sites.operator.config import load_site

    site_dir, _ = load_site(site_dir)
    password = Reviewers(Governance(site_dir)).reset_password(email, actor="operator via CLI")
    out.print(f"new password for {email} (shown once): {password}")


@site_app.command("disable-reviewer")
def site_disable_reviewer(email: str = typer.Argument(...), site_dir: Path = SiteDir,
                          enable: bool = typer.Option(False, "--enable",
                                                      help="enable it again instead")) -> None:
    """Stop (or restore) a reviewer account; its earlier decisions stay on record."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance
    from sites.operator.config import load_site

    site_dir, _ = load_site(site_dir)
    Reviewers(Governance(site_dir)).set_disabled(email, not enable, actor="operator via CLI")
    out.print(f"{'enabled' if enable else 'disabled'} reviewer {email}")


@site_app.command("reviewers")
def site_reviewers(site_dir: Path = SiteDir,
                   json_out: bool = typer.Option(False, "--json", help="machine-readable")
                   ) -> None:
    """The site's reviewer accounts, whether the policy names each, and lock-outs."""
    from sites.governance.reviewers import Reviewers
    from sites.governance.store import Governance
    from sites.operator.config import load_site
    from sites.operator.site import Site

    site_dir, cfg = load_site(site_dir)
    try:
        allowed = Site(site_dir, cfg).policy()[0].reviewers
    except Exception:
        allowed = []
    rows = [{"email": r.email, "name": r.name, "in_policy": r.listed_in(allowed),
             "locked": r.locked, "disabled": r.disabled, "created_at": r.created_at,
             "last_login": r.last_login} for r in Reviewers(Governance(site_dir)).all()]
    if json_out:
        print_json(rows)
        return
    t = Table("email", "name", "named in policy", "state", "since", "last login")
    for r in rows:
        state = "disabled" if r["disabled"] else ("locked" if r["locked"] else "active")
        t.add_row(plain(r["email"]), plain(r["name"]), "yes" if r["in_policy"] else "no",
                  state, _when(r["created_at"]),
                  _when(r["last_login"]) if r["last_login"] else "never")
    out.print(t if rows else "no reviewers yet (medsyft site add-reviewer EMAIL --name N)")


def _login_reviewer(site_dir: Path, email: str, password_stdin: bool):
    """The reviewer's own account, authenticated with their password (prompted, or one line
    on stdin with --password-stdin)."""
    import getpass

    from sites.governance.reviewers import LoginRefused, Reviewers
    from sites.governance.store import Governance
    from sites.operator.config import load_site

    site_dir, _ = load_site(site_dir)
    password = (sys.stdin.readline().rstrip("\n") if password_stdin
                else getpass.getpass(f"password for reviewer {email}: "))
    try:
        return Reviewers(Governance(site_dir)).authenticate(email, password, source="cli")
    except LoginRefused as exc:
        err.print(f"[red]login refused:[/red] {esc(str(exc))}")
        raise typer.Exit(2) from None


ReviewerOpt = typer.Option(..., "--reviewer", envvar="MEDSYFT_REVIEWER",
                           help="your reviewer account's email (medsyft site add-reviewer); "
                                "your password is asked for")
PasswordStdin = typer.Option(False, "--password-stdin",
                             help="read your password from one line on stdin (scripts)")


def _when(ts: float) -> str:
    from sites.review.console import format_time

    return format_time(ts)


@site_app.command("publish")
def site_publish(
    site_dir: Path = typer.Argument(Path("."), help="site folder"),
    manifest: Path = typer.Option(None, "--manifest", help="cohort manifest CSV (subject_id, "
                                  "mri, pet, label): DICOM series folders or NIfTI files"),
    synthetic: int = typer.Option(None, "--synthetic", min=2,
                                  help="instead: publish a synthetic cohort of N subjects"),
    dataset: str = typer.Option("brain-mri-pet", "--dataset", help="dataset name"),
    spacing: str = SPACING, shape: str = SHAPE, mri_norm: str = MRI_NORM,
    pet_norm: str = PET_NORM,
    seed: int = typer.Option(0, "--seed", help="synthetic: generator seed"),
    profile: str = typer.Option(None, "--profile",
                                help="synthetic: site profile (default: the site's name)"),
    size: int = typer.Option(24, "--size", min=8, max=256, help="synthetic: volume edge"),
    lesions: bool = typer.Option(False, "--lesions",
                                 help="synthetic: tumour-like lesions and a voxel mask (0 "
                                      "background, 1 core, 2 oedema) for segmentation"),
    misalign: float = typer.Option(0.0, "--misalign", min=0.0, max=1.0,
                                   help="synthetic: move each PET against its MRI (0 to 1: "
                                        "up to 5° rotation, 1.5 voxels, 3 % scale)"),
    mask_classes: int = typer.Option(None, "--mask-classes", min=2, max=16,
                                     help="manifest with a mask column: how many classes "
                                          "the masks have, background included"),
    json_out: bool = typer.Option(False, "--json", help="print the ingest report as JSON"),
) -> None:
    """Publish a cohort: the private asset holds volumes and labels only (no identifiers);
    the mock is synthetic with the same schema and never derived from private values."""
    from sites.operator.admin import publish_manifest, publish_synthetic

    if (manifest is None) == (synthetic is None):
        raise typer.BadParameter("give exactly one of --manifest FILE or --synthetic N")
    if synthetic is not None:
        with err.status("generating and uploading cohort..."):
            cohort = publish_synthetic(site_dir, dataset, synthetic, seed, profile,
                                       (size, size, size), lesions=lesions,
                                       misalign=misalign)
        out.print(f"published {dataset}: {cohort.describe()}")
        return
    pp = preprocessing_from(spacing, shape, mri_norm, pet_norm)
    with progress_bar("reading subjects", enabled=not json_out) as update:
        _, report, description = publish_manifest(site_dir, dataset, manifest, pp,
                                                  progress=update, mask_classes=mask_classes)
    if json_out:
        print_json({"dataset": dataset, "description": description,
                    "report": report.model_dump(mode="json")})
        return
    print_ingest_report(report)
    out.print(f"published {dataset}: {description}")


def _checks_table(view) -> Table:
    t = Table("rule", "result", "seen", "limit", "why", "override", title="verdict")
    colours = {"pass": "green", "fail": "red", "warn": "yellow"}
    for c in view.checks:
        t.add_row(plain(c.rule), f"[{colours[c.status]}]{c.status}[/]", plain(c.seen),
                  plain(c.limit), plain(c.message),
                  "" if c.status == "pass" else ("yes" if c.overridable else "never"))
    return t


@console_app.command("requests")
def console_requests(site_dir: Path = SiteDir,
                     json_out: bool = typer.Option(False, "--json")) -> None:
    """Pending, approved and denied requests with researcher, dataset, plan, rounds, ε."""
    from sites.review.console import list_requests

    views = list_requests(site_dir)
    if json_out:
        print_json([v.summary() for v in views])
        return
    t = Table("id", "status", "researcher", "dataset", "plan", "rounds", "ε target",
              "submitted", "checks")
    for v in views:
        s = v.summary()
        checks = "[green]ok[/]" if not s["checks_failed"] else \
            f"[red]{len(s['checks_failed'])} failing[/]"
        t.add_row(v.short_id, s["status"], plain(s["researcher"]), plain(s["dataset"]),
                  plain(f"{s['plan']} v{s['version']}") if s["plan"]
                  else Text(printable(str(v.function)), style="red"),
                  str(s["rounds"]), str(s["target_epsilon"]), s["submitted_at"], checks)
    out.print(t)


@console_app.command("show")
def console_show(request_id: str = typer.Argument(..., help="request id (a prefix will do)"),
                 site_dir: Path = SiteDir, json_out: bool = typer.Option(False, "--json")) -> None:
    """The whole plan, its model source, template check, projected noise and policy checks."""
    from sites.review.console import show

    v = show(site_dir, request_id)
    if json_out:
        print_json(v.summary() | {
            "plan": v.plan.model_dump(mode="json") if v.plan else None,
            "template_error": v.template_error, "noise_multiplier": v.noise_multiplier,
            "cohort_n": v.cohort_n, "adjacency": v.adjacency, "accountant": v.accountant,
            "guarantee": guarantee(v.plan.dp.target_epsilon, v.plan.dp.delta, v.adjacency)
            if v.plan and v.adjacency else None,
            "checks": [c.model_dump() for c in v.checks]})
        return
    out.rule(f"request {v.short_id} · {v.status} · {esc(v.researcher)}")
    if v.template_error:
        out.print(f"[red]NOT the medsyft template:[/red] {esc(v.template_error)}")
    else:
        out.print("[green]submitted code is exactly the medsyft template[/green]")
    if v.plan:
        p = v.plan
        out.print(f"plan [bold]{esc(p.name)}[/bold] v{p.version} on dataset {esc(p.dataset)}; "
                  f"inputs {esc(', '.join(p.inputs))}; loss {p.loss}; {p.optimizer} lr "
                  f"{p.learning_rate}; "
                  f"batch {p.batch_size}; {p.local_epochs} local epoch(s); {p.rounds} rounds")
        if v.adjacency:
            out.print(f"DP: {guarantee(p.dp.target_epsilon, p.dp.delta, v.adjacency)}, over "
                      f"all rounds; clip {p.dp.max_grad_norm}; accountant {v.accountant}")
        if v.noise_multiplier is not None:
            size = (f"N = {v.cohort_n}" if v.adjacency == "replace_one"
                    else f"from the DP count {v.cohort_n} of the private N")
            out.print(f"projected noise multiplier σ = {v.noise_multiplier:.3f} ({size})")
        if v.n_parameters is not None:
            out.print(f"parameters: {v.n_parameters:,} (measured on the meta device)")
        out.print(f"approvals: {len(v.approvers)} of {v.approvals_required} "
                  f"({esc(', '.join(v.approvers)) or 'none yet'})")
        out.print(f"model class {esc(p.model.class_name)}({esc(p.model.kwargs)}):")
        # the researcher's source, control characters shown as `?` (no terminal escapes)
        out.print(Syntax(printable(p.model.source, 200_000), "python", line_numbers=True))
    out.print(_checks_table(v))


@console_app.command("approve")
def console_approve(
    request_id: str = typer.Argument(...), site_dir: Path = SiteDir,
    note: str = typer.Option("", "--note", help="recorded with the approval"),
    reviewer: str = ReviewerOpt,
    password_stdin: bool = PasswordStdin,
    override: bool = typer.Option(False, "--override",
                                  help="approve despite failing policy rules (needs --reason)"),
    reason: str = typer.Option("", "--reason", help="why the override is justified"),
) -> None:
    """Approve a plan that passes every rule; recorded in the governance DB and audit.
    With two approvals required, the plan runs only after a second, different reviewer."""
    from sites.review.console import approve

    account = _login_reviewer(site_dir, reviewer, password_stdin)
    v = approve(site_dir, request_id, account, note=reason or note, override=override,
                via="CLI")
    what = f"{v.short_id}: {v.plan.name} v{v.plan.version} for {v.researcher}"
    if v.status == "approved":
        out.print(f"approved {what} (reviewers: {', '.join(v.approvers)})")
    else:
        out.print(f"recorded approval 1 of {v.approvals_required} for {what}; a second, "
                  "different reviewer must approve before it can run")


@console_app.command("deny")
def console_deny(request_id: str = typer.Argument(...), site_dir: Path = SiteDir,
                 reason: str = typer.Option(..., "--reason", help="the researcher reads this"),
                 reviewer: str = ReviewerOpt, password_stdin: bool = PasswordStdin) -> None:
    """Deny (or revoke) a request with a reason the researcher will see. The researcher's
    plans on the dataset that were approved automatically are revoked with it; later plans
    of theirs there go to a reviewer until one is approved."""
    from sites.review.console import deny

    account = _login_reviewer(site_dir, reviewer, password_stdin)
    v = deny(site_dir, request_id, reason=reason, reviewer=account, via="CLI")
    out.print(f"denied {v.short_id}")
    if v.also_revoked:
        out.print("also revoked (this researcher's automatically approved plans here): "
                  + ", ".join(r[:8] for r in v.also_revoked))


@console_app.command("ledger")
def console_ledger(site_dir: Path = SiteDir,
                   researcher: str = typer.Option(None, "--researcher"),
                   dataset: str = typer.Option(None, "--dataset"),
                   json_out: bool = typer.Option(False, "--json")) -> None:
    """Privacy budget per researcher and dataset: spent, reserved, remaining, per plan."""
    from sites.review.ledger import ledger

    entries = ledger(site_dir, researcher, dataset)
    if json_out:
        print_json([e.model_dump() for e in entries])
        return
    t = Table("researcher", "dataset", "relation", "spent ε", "reserved ε", "remaining ε",
              "cap", "per plan",
              caption="ε per subject at the policy's δ, composed by the ledger's accountant "
                      "over every run that touched the data (failed runs included)")
    for e in entries:
        t.add_row(e.researcher, e.dataset, f"{e.adjacency} ({e.accountant})",
                  f"{e.spent:.3f}", f"{e.reserved:.3f}",
                  "-" if e.remaining is None else f"{e.remaining:.3f}",
                  "-" if e.cap is None else f"{e.cap:g}",
                  "; ".join(f"{p.plan}: {p.epsilon:.3f} ({p.rounds_charged} rounds)"
                            for p in e.plans))
    out.print(t if entries else "no privacy budget spent yet")


@console_app.command("plans")
def console_plans(site_dir: Path = SiteDir,
                  json_out: bool = typer.Option(False, "--json")) -> None:
    """Every plan decided at this site: rounds done and left, ε spent."""
    from sites.review.ledger import plans

    rows = plans(site_dir)
    if json_out:
        print_json([p.model_dump() for p in rows])
        return
    t = Table("plan", "researcher", "dataset", "status", "rounds done", "rounds left",
              "running", "ε spent")
    for p in rows:
        t.add_row(plain(p.plan), plain(p.researcher), plain(p.dataset), p.status,
                  str(p.rounds_done),
                  str(p.rounds_left), str(p.running),
                  "-" if p.epsilon is None else f"{p.epsilon:.3f}")
    out.print(t if rows else "no plans yet")


@console_app.command("audit-privacy")
def console_audit_privacy(
    plan: str = typer.Argument(..., help="plan hash (a prefix is enough) or 'name vN', as "
                                         "`console plans` lists it"),
    site_dir: Path = SiteDir,
    round_no: int = typer.Option(None, "--round", help="audit this round's release "
                                                      "(default: the last one)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Attack a plan's released weights with the subjects held out at publish: membership
    inference (AUC, TPR at 1% FPR) and an empirical lower bound on ε, next to the largest
    values the reported ε allows. Warns (exit 3) when a measured value exceeds them. For
    the data owner only: the result goes to the audit log, never to the researcher."""
    from sites.review.privacy_audit import audit_plan

    with out.status("scoring the training and held-out subjects in the sandbox…"):
        report = audit_plan(site_dir, plan, round_no)
    f = report.figures
    if json_out:
        print_json(report.model_dump(mode="json"))
    else:
        out.rule(f"privacy audit · {plain(report.plan)} · round {report.round}")
        out.print(f"claim: {report.guarantee} ({report.accountant}; the researcher's "
                  f"ledger here up to this release; the plan alone: ε "
                  f"{report.plan_epsilon:.3g} over {report.rounds_charged} charged round(s))")
        out.print(f"subjects: {f.members} trained on, {f.nonmembers} held out")
        t = Table("measure", "measured", "95% interval", "largest the claim allows",
                  caption="loss-threshold membership inference on the released weights")
        t.add_row("AUC", f"{f.auc:.3f}", f"{f.auc_ci[0]:.3f}–{f.auc_ci[1]:.3f}",
                  f"{f.max_auc_allowed:.3f}")
        t.add_row("TPR at 1% FPR", f"{f.tpr_at_1pct_fpr:.3f}",
                  f"{f.tpr_at_1pct_fpr_ci[0]:.3f}–{f.tpr_at_1pct_fpr_ci[1]:.3f}",
                  f"{f.max_tpr_at_1pct_allowed:.3f}")
        t.add_row("ε (empirical lower bound)", f"{f.epsilon_lower_bound:.3f}",
                  f"95% ({f.epsilon_lower_bound_method})", f"{f.epsilon_claimed:.3f}")
        out.print(t)
        for w in report.warnings:
            out.print(f"[red]warning:[/red] {esc(w)}")
        if not report.warnings:
            out.print("[green]nothing measured exceeds what the claim allows[/green]")
    if report.warnings:
        raise typer.Exit(3)


@console_app.command("audit")
def console_audit(
    site_dir: Path = SiteDir,
    since: str = typer.Option(None, "--since", help="only entries from this time on "
                              "(ISO date or date-time)"),
    verify: bool = typer.Option(False, "--verify", help="check the hash chain; exit 1 and "
                                "name the first broken entry if it is not intact"),
    export: Path = typer.Option(None, "--export", help="write the entries (with their hashes) "
                                "as JSON lines for auditors"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Every decision, budget movement and execution recorded at this site, oldest first."""
    from datetime import datetime

    from sites.governance.store import Governance
    from sites.operator.config import load_site
    from sites.review.console import format_time

    site_dir, _ = load_site(site_dir)
    gov = Governance(site_dir)
    if verify:
        ok, n, message = gov.verify_audit()
        if json_out:
            print_json({"ok": ok, "entries": n, "message": message})
        else:
            out.print(("[green]intact:[/green] " if ok else "[red]BROKEN:[/red] ") + message)
        raise typer.Exit(0 if ok else 1)
    try:
        start = datetime.fromisoformat(since).timestamp() if since else 0.0
    except ValueError:
        raise typer.BadParameter(f"--since {since!r}: use an ISO date such as 2026-11-23") \
            from None
    entries = gov.audit_entries(start)
    if export:
        with open(export, "w") as f:
            for e in entries:
                f.write(json.dumps(e, sort_keys=True) + "\n")
        out.print(f"wrote {len(entries)} entries to {export}")
        return
    if json_out:
        print_json(entries)
        return
    t = Table("#", "time", "actor", "event", "subject", "details")
    for e in entries:
        t.add_row(str(e["seq"]), format_time(e["at"]), plain(e["actor"]), e["event"],
                  plain(e["subject"][:16]), plain(", ".join(
                      f"{k}={v}" for k, v in e["details"].items() if v not in (None, "", []))))
    out.print(t)
