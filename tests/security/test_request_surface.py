"""The request surface of a real medsyft site, attacked as a hostile researcher would.

One datasite on loopback under automatic approval (anything review lets through
runs at once), three researchers created by the data owner: Ada and Bob at an
allowed institution, Mallory at one the policy does not allow. Every attack
goes through the real syft 0.9.5 client with the attacker's own credentials:
custom and non-template policies, extra request fields, identity edits,
reads of another researcher's objects through every method syft offers a data
scientist, a denied plan resubmitted, a review-stalling model, a model that
lies about its size. A compliant plan still goes through review, approval and
a round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from policies.contract.template import build_function
from researcher.federation import Federation, FederationConfig, SiteEntry, initial_weights
from sites.common.syft_client import LoginFailed, login, quiet, syft
from sites.governance.registry import Registry
from sites.governance.store import Governance
from sites.operator import admin, lifecycle
from sites.operator.config import save_site
from sites.review import console
from sites.review.researcher_api import GUEST_RULES, RULES, syft_methods_for_researchers
from tests.support.plans import make_plan, small_model_source
from tests.support.sites import as_reviewer, one_site, wait_for

pytestmark = pytest.mark.integration

ADA, ADA_PW = "ada@lovelace-institute.org", "surface-ada-pw-1"
BOB, BOB_PW = "bob@lovelace-institute.org", "surface-bob-pw-2"
MALLORY, MALLORY_PW = "mallory@evil.example", "surface-mallory-pw-3"
SHAPE = (8, 8, 8)
sy = syft()
from syft.service.policy.policy import OutputPolicyExecuteCount  # noqa: E402


class SneakyOutput(sy.CustomOutputPolicy):
    def __init__(self):
        import os
        import pathlib

        if os.environ.get("MEDSYFT_SITE_DIR"):
            pathlib.Path(os.environ["MEDSYFT_SITE_DIR"], "pwned-output-init").write_text("x")

    def apply_to_output(self, context, outputs, update_policy=True):
        import os
        import pathlib

        if os.environ.get("MEDSYFT_SITE_DIR"):
            pathlib.Path(os.environ["MEDSYFT_SITE_DIR"], "pwned-output").write_text("x")
        return outputs


class SneakyInput(sy.CustomInputPolicy):
    def __init__(self):
        import os
        import pathlib

        if os.environ.get("MEDSYFT_SITE_DIR"):
            pathlib.Path(os.environ["MEDSYFT_SITE_DIR"], "pwned-input-init").write_text("x")

    def filter_kwargs(self, kwargs, context, code_item_id):
        import os
        import pathlib

        if os.environ.get("MEDSYFT_SITE_DIR"):
            pathlib.Path(os.environ["MEDSYFT_SITE_DIR"], "pwned-input").write_text("x")
        return kwargs

    def is_valid(self, context, usr_input_kwargs):
        return True


@pytest.fixture(scope="module")
def site(tmp_path_factory, memory_keyring, repo_root):
    root = tmp_path_factory.mktemp("surface")
    with one_site(root, "omega", repo_root / "tests" / "policies" / "surface.yaml", ADA,
                  ADA_PW, n=32, seed=6, shape=SHAPE) as env:
        d = env["dir"]
        admin.add_researcher(d, BOB, "Bob Babbage", BOB_PW, "Lovelace Institute")
        admin.add_researcher(d, MALLORY, "Mallory", MALLORY_PW, "Evil Corp")
        cfg = lifecycle.load_site(d)[1]
        env["port"] = cfg.port
        env["admin"] = login(cfg.host, cfg.port, cfg.admin_email, lifecycle.admin_password(cfg))
        yield env


def client_of(site, email: str, password: str):
    return login("127.0.0.1", site["port"], email, password)


def federation_of(site, email: str, password: str, name: str) -> Federation:
    from researcher.federation import store_password

    config = FederationConfig(sites=[SiteEntry(name="omega", port=site["port"], email=email)],
                              checkpoints=str(site["dir"].parent / f"ckpt-{name}"))
    store_password(config.sites[0], password)
    return Federation(config).connect()


def raw_call(client, method: str, *args, **kwargs):
    """Any service method, called as this client, whether or not its API lists it."""
    from syft.client.api import SyftAPICall

    call = SyftAPICall(server_uid=client.id, path=method, args=list(args), kwargs=kwargs,
                       blocking=kwargs.pop("_blocking", True))
    with quiet():
        try:
            return client.api.make_call(call)
        except Exception as exc:  # the client raises for some refusals
            return exc


def refused(result) -> bool:
    text = str(getattr(result, "message", result))
    return type(result).__name__ == "SyftError" or isinstance(result, Exception) or \
        "refused" in text


def value(result):
    return getattr(result, "value", result)


def no_marks(site) -> list[str]:
    return sorted(p.name for p in Path(site["dir"]).glob("pwned-*"))


def request_count(site) -> int:
    with quiet():
        return len(site["admin"].requests.get_all())


def submit_code(client, code):
    with quiet():
        try:
            return client.code.request_code_execution(code)
        except Exception as exc:
            return exc


def template_code(site, client, plan, **options):
    """The medsyft template for `plan`, wrapped by syft with the given policy options."""
    asset = client.datasets["brain-mri-pet"].assets[0]
    func = build_function(plan)
    input_policy = options.pop("input_policy", None) or sy.MixedInputPolicy(
        client=client, data=asset, weights=dict)
    with quiet():
        return sy.syft_function(input_policy=input_policy, **options)(func)


# -- a compliant plan ----------------------------------------------------------------------
def good_plan(site: dict):
    """Ada's approved plan, bound to this site (made here when a test runs on its own)."""
    if "good_plan" not in site:
        fed = site["fed"]
        plan = make_plan(name="good", rounds=1)
        fed.submit(plan)
        wait_for(lambda: fed.status(plan)["omega"].status == "approved")
        site["good_plan"] = fed.bind(plan)
    return site["good_plan"]


def test_compliant_plan_is_reviewed_approved_and_runs(site):
    fed = site["fed"]
    plan = make_plan(name="good", rounds=1)
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)["omega"].status == "approved")
    report = fed.run(plan)
    assert [r.round for r in report.rounds] == [1]
    guard = next(line for line in (site["dir"] / "logs" / "site.log").read_text().splitlines()
                 if "syft request guard:" in line)
    for part in ("serde _GenericAlias v1", "serde _UnionGenericAlias v1",
                 "Server.handle_api_call_with_unsigned_result", "UserCodeService._submit",
                 "policy.execute_policy_code", "action_service.execute_byte_code"):
        assert part in guard
    site["good_plan"] = fed.bind(plan)


# -- the request around the template -------------------------------------------------------
@pytest.mark.parametrize("name,options,needle", [
    ("sneaky_out", {"output_policy": SneakyOutput()}, "custom policies never run"),
    ("sneaky_in", {"input_policy": SneakyInput()}, "MixedInputPolicy"),
    ("other_out", {"output_policy": OutputPolicyExecuteCount(limit=100)},
     "OutputPolicyExecuteOnce"),
    ("pool", {"worker_pool_name": "default-pool"}, "worker pool"),
])
def test_custom_or_other_policies_are_refused_at_submission_and_never_run(site, name, options,
                                                                           needle):
    """The exact template function, wrapped in a request the client never sends."""
    client = client_of(site, ADA, ADA_PW)
    before = request_count(site)
    plan = make_plan(name=name, researcher=ADA)
    res = submit_code(client, template_code(site, client, plan, **options))
    assert refused(res) and needle in str(getattr(res, "message", res))
    assert request_count(site) == before  # never stored
    assert no_marks(site) == []


def _request_of(site, function_name: str):
    with quiet():
        return next((r for r in site["admin"].requests.get_all()
                     if r.code.service_func_name == function_name), None)


def test_inputs_not_pinned_to_the_dataset_are_refused_by_review(site):
    """Passes the submission check (built-in policies) but is not what the client sends:
    the data argument is the researcher's own dict instead of the published asset."""
    client = client_of(site, ADA, ADA_PW)
    plan = make_plan(name="own_data", researcher=ADA)
    policy = sy.MixedInputPolicy(client=client, data=dict, weights=dict)
    res = submit_code(client, template_code(site, client, plan, input_policy=policy))
    assert not refused(res)
    req = wait_for(lambda: (r := _request_of(site, plan.function_name)) is not None
                   and console.status_name(r.status) == "denied" and r)
    note = next(d["note"] for d in Governance(site["dir"]).decisions()
                if d["request_id"] == str(req.id).replace("-", ""))
    assert note.startswith("refused: ") and "inputs" in note
    fed = site["fed"]
    assert fed.status(plan)["omega"].status == "denied"
    assert "inputs" in (fed.status(plan)["omega"].reason or "")


def test_a_function_that_is_not_the_template_never_executes(site):
    """Approved through raw syft by the admin, bypassing review: syft still may not run it."""
    client = client_of(site, ADA, ADA_PW)
    asset = client.datasets["brain-mri-pet"].assets[0]

    def not_a_plan(data, weights):
        import os
        import pathlib

        pathlib.Path(os.environ["MEDSYFT_SITE_DIR"], "pwned-function").write_text("x")
        return {"ok": True}

    with quiet():
        code = sy.syft_function(input_policy=sy.MixedInputPolicy(
            client=client, data=asset, weights=dict))(not_a_plan)
    assert not refused(submit_code(client, code))
    req = wait_for(lambda: (r := _request_of(site, "not_a_plan")) is not None
                   and console.status_name(r.status) == "denied" and r)  # review refused it
    with quiet():
        req.approve(disable_warnings=True)  # the admin, through raw syft, overrules review
        client = client_of(site, ADA, ADA_PW)
        try:
            res = client.code.not_a_plan(data=asset, weights={"w": np.zeros(2, np.float32)})
        except Exception as exc:
            res = exc
    assert refused(res) or "refused" in str(res)
    assert no_marks(site) == []


def test_a_forged_typing_alias_runs_nothing_on_any_route(site):
    """syft deserialises every body before any check; a forged alias used to run a shell
    there with no account (red-team finding)."""
    import urllib.error
    import urllib.request

    from tests.support.guard_probe import generic_alias_payload

    for route in ("api_call", "register"):
        mark = site["dir"] / f"pwned-serde-{route}"
        body = generic_alias_payload(f"touch {mark}")
        request = urllib.request.Request(f"http://127.0.0.1:{site['port']}/api/v2/{route}",
                                         data=body, method="POST")
        try:
            urllib.request.urlopen(request, timeout=30).read()
        except urllib.error.HTTPError:
            pass  # syft answers a body it cannot read with an error
        assert not mark.exists(), route
    assert client_of(site, ADA, ADA_PW) is not None  # the site still serves


def test_an_unsigned_body_may_not_make_the_site_inflate_an_array(site):
    """A 16-byte zstd frame declaring 3 GiB, posted with no account (syft allocates what the
    body declares before any check: red-team finding)."""
    import urllib.error
    import urllib.request

    from tests.support.guard_probe import array_body

    request = urllib.request.Request(f"http://127.0.0.1:{site['port']}/api/v2/api_call",
                                     data=array_body(3 * 1024**3), method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=60).read()
    log = (site["dir"] / "logs" / "site.log").read_text()
    assert "refused to deserialise numpy_ndarray in an unsigned body" in log
    assert client_of(site, ADA, ADA_PW) is not None


@pytest.mark.parametrize("depth", [12, 3000])
def test_an_error_deep_in_an_unsigned_body_does_not_take_the_site_down(site, depth):
    """Nested lists with an unknown type at the bottom, posted with no account: unguarded
    syft crashed with a segmentation fault freeing the error (red-team finding)."""
    import urllib.error
    import urllib.request

    from tests.support.guard_probe import nested_body

    for route in ("api_call", "register"):
        request = urllib.request.Request(f"http://127.0.0.1:{site['port']}/api/v2/{route}",
                                         data=nested_body(depth), method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=60).read()
    assert client_of(site, ADA, ADA_PW) is not None  # the same server still serves


def _post(site: dict, route: str, body: bytes) -> bytes:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{site['port']}/api/v2/{route}",
                                     data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return answer.read()


def test_a_replayed_server_answer_does_not_make_anyone_the_data_owner(site):
    """Every answer is signed with the server's key, the root data owner's. Replayed with a
    `cached_deseralized_message` of the attacker's beside the signed bytes, syft ran that
    call as the data owner, with no account (red-team finding: every user read, Ada's
    result and weights read, an API endpoint added and run as root in the server)."""
    import urllib.error
    import urllib.request

    from syft.client.api import SyftAPICall
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize
    from syft.server.credentials import SyftSigningKey
    from syft.types.uid import UID

    from tests.support.guard_probe import forged_signed_call

    meta = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{site['port']}/api/v2/metadata", timeout=60).read())
    server_uid = UID(meta["id"])
    guest = SyftAPICall(server_uid=server_uid, path="metadata.get_metadata", args=[],
                        kwargs={}).sign(SyftSigningKey.generate())
    answer = _deserialize(_post(site, "api_call", _serialize(guest, to_bytes=True)),
                          from_bytes=True)
    assert str(answer.credentials) == meta["verify_key"]  # signed by the server's key
    forged = SyftAPICall(server_uid=server_uid, path="user.get_all", args=[], kwargs={})
    with pytest.raises(urllib.error.HTTPError):
        _post(site, "api_call", forged_signed_call(answer, forged))
    replayed = _deserialize(_post(site, "api_call", _serialize(answer, to_bytes=True)),
                            from_bytes=True)
    said = str(replayed.message.data)
    assert "not an API call" in said and ADA not in said and MALLORY not in said
    log = (site["dir"] / "logs" / "site.log").read_text()
    assert "refused to deserialise SignedSyftAPICall with fields it does not have" in log
    assert client_of(site, ADA, ADA_PW) is not None


def test_an_unsigned_body_may_not_amplify_itself(site):
    """Pointers that alias one chunk (a 340 kB body built 3.5 GB; a 34 kB one kept a core
    busy for a minute) and a set of ints that all hash to 0 (the server froze 22 s):
    refused, and the same server serves on (red-team findings)."""
    import urllib.error

    from tests.support.guard_probe import aliased_bytes, aliased_list, colliding_set

    pid = (site["dir"] / "run" / "server.pid").read_text()
    for body in (aliased_list(4000, 100_000), aliased_bytes(3000, 10_000),
                 colliding_set(40_000)):
        with pytest.raises(urllib.error.HTTPError):
            _post(site, "api_call", body)
    assert client_of(site, ADA, ADA_PW) is not None
    assert (site["dir"] / "run" / "server.pid").read_text() == pid
    log = (site["dir"] / "logs" / "site.log").read_text()
    assert log.count("refused to deserialise a body that reads beyond its own size") >= 2
    assert "refused to deserialise a collection of more than 4096 elements" in log


def test_non_blocking_calls_are_refused(site):
    plan = good_plan(site)
    client = client_of(site, ADA, ADA_PW)
    res = raw_call(client, "code.call", uid=_request_of(site, plan.function_name).code.id,
                   _blocking=False)
    assert refused(res) and "blocking" in str(getattr(res, "message", res))


# -- identity ------------------------------------------------------------------------------
def test_researchers_cannot_edit_their_own_identity_but_can_change_their_password(site):
    from syft.service.user.user_roles import ServiceRole

    client = client_of(site, MALLORY, MALLORY_PW)
    me = value(raw_call(client, "user.get_current_user"))
    for edit in ({"email": "eve@lovelace-institute.org"}, {"institution": "Lovelace Institute"},
                 {"name": "Ada Lovelace"}, {"role": ServiceRole.DATA_OWNER},
                 {"mock_execution_permission": True}, {"website": "https://evil.example"}):
        res = raw_call(client, "user.update", uid=me.id, **edit)
        assert refused(res), edit
    with quiet():
        profiles = {u.email: u for u in site["admin"].users.get_all()}
    assert MALLORY in profiles and profiles[MALLORY].institution == "Evil Corp"
    assert profiles[MALLORY].role == ServiceRole.DATA_SCIENTIST
    assert Registry(Governance(site["dir"])).by_email(MALLORY).institution == "Evil Corp"
    # nobody else's password either
    ada = Registry(Governance(site["dir"])).by_email(ADA)
    from syft.types.uid import UID

    assert refused(raw_call(client, "user.update", uid=UID(ada.user_id), password="x" * 12))
    # one's own password, as the client sets it: allowed
    with quiet():
        client.account.set_password("new-mallory-pw-9", confirm=False)
    changed = client_of(site, MALLORY, "new-mallory-pw-9")
    with pytest.raises(LoginFailed):
        client_of(site, MALLORY, MALLORY_PW)
    with quiet():  # back, so that each test logs in as the fixture made her
        changed.account.set_password(MALLORY_PW, confirm=False)
    assert client_of(site, MALLORY, MALLORY_PW) is not None


def test_access_rules_use_the_sites_record_not_syfts_profile(site):
    """Even with syft's profile made to look allowed (here by raw syft, as 0.9.5 let a
    researcher do), the site judges Mallory by its own record."""
    with quiet():
        uid = next(u.id for u in site["admin"].users.get_all() if u.email == MALLORY)
        site["admin"].users.update(uid=uid, institution="Lovelace Institute")
    fed = federation_of(site, MALLORY, MALLORY_PW, "mallory")
    plan = make_plan(name="mallory_plan")
    fed.submit(plan)
    view = wait_for(lambda: next((v for v in console.list_requests(site["dir"])
                                  if v.plan == fed.bind(plan) and Governance(
                                      site["dir"]).verdict_seen(v.id, v.policy_hash)), None))
    failing = {c.rule for c in view.failing}
    assert {"access.researcher", "access.institution"} <= failing
    assert view.researcher == MALLORY and view.institution == "Evil Corp"
    time.sleep(3)
    assert fed.status(plan)["omega"].status == "pending"  # never approved automatically


def test_a_plan_naming_another_researcher_is_refused_and_revokes_nothing(site):
    """Mallory sends Ada's own approved plan, word for word: refused, and Ada's approval of
    that plan stands."""
    d = site["dir"]
    client = client_of(site, MALLORY, MALLORY_PW)
    plan = good_plan(site)  # names Ada
    assert Governance(d).approval(plan.plan_hash) is not None
    assert not refused(submit_code(client, template_code(site, client, plan)))

    def mallorys():
        with quiet():
            return [r for r in site["admin"].requests.get_all()
                    if r.code.service_func_name == plan.function_name
                    and str(r.requesting_user_verify_key) == str(client.verify_key)]
    wait_for(lambda: mallorys() and console.status_name(mallorys()[0].status) == "denied")
    req_id = str(mallorys()[0].id).replace("-", "")
    view = next(v for v in console.list_requests(d) if v.id == req_id)
    assert "plan.researcher" in {c.rule for c in view.hard_failures}
    assert view.researcher == MALLORY
    approval = Governance(d).approval(plan.plan_hash)
    assert approval is not None and approval.researcher == ADA


def test_data_owner_changes_identity_with_an_audited_command(site):
    d = site["dir"]
    gov = Governance(d)
    spent_before = len(gov.ledger_history(ADA, "brain-mri-pet"))
    assert spent_before >= 1
    new = "ada.lovelace@lovelace-institute.org"
    admin.update_researcher(d, ADA, new_email=new, name="Augusta Ada King")
    registry = Registry(gov)
    assert registry.by_email(ADA) is None and registry.by_email(new).name == "Augusta Ada King"
    assert len(gov.ledger_history(new, "brain-mri-pet")) == spent_before  # ledger moved
    entry = [e for e in gov.audit_entries() if e["event"] == "researcher.updated"][-1]
    assert entry["details"]["changes"]["email"] == {"from": ADA, "to": new}
    with quiet():
        profile = next(u for u in site["admin"].users.get_all() if u.email == new)
    assert profile.name == "Augusta Ada King"
    # the old plan named the old email: it stops, with a reason
    fed = site["fed"]
    results, errors = fed.run_round(good_plan(site), initial_weights(good_plan(site)),
                                    retries=0)
    assert results == {} and "no record of the plan's researcher" in errors["omega"]
    admin.update_researcher(d, new, new_email=ADA, name="Ada Lovelace")
    assert len(gov.ledger_history(ADA, "brain-mri-pet")) == spent_before
    listed = subprocess.run([sys.executable, "-m", "sites.entrypoint", "site", "researchers",
                             "--site", str(d), "--json"], capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    people = {p["email"]: p for p in json.loads(listed.stdout)}
    assert set(people) == {ADA, BOB, MALLORY}
    assert people[MALLORY]["institution"] == "Evil Corp" and people[ADA]["name"] == "Ada Lovelace"


# -- no researcher reads another's anything ------------------------------------------------
@pytest.fixture(scope="module")
def adas_objects(site):
    """Ada's request, code, status, uploaded weights, round result and blob, by uid."""
    from syft.client.api import SyftAPI

    seen: dict[str, list] = {}
    original = SyftAPI.make_call

    def recording(self, api_call, cache_result=True):
        seen.setdefault(api_call.path, []).append(api_call)
        return original(self, api_call, cache_result)

    big = make_plan(name="big_weights", researcher=ADA, source=BIG_SOURCE, class_name="Big")
    fed = site["fed"]
    fed.submit(big)
    wait_for(lambda: fed.status(big)["omega"].status == "approved")
    # the weights inline through syft, so that syft holds ada's upload and result blobs
    inline = Federation(fed.config, transport="syft")
    inline._clients = fed._clients
    SyftAPI.make_call = recording
    try:
        result = inline.run_site_round("omega", fed.bind(big), initial_weights(fed.bind(big)))
    finally:
        SyftAPI.make_call = original
    assert result.round == 1
    req = _request_of(site, fed.bind(big).function_name)
    return {
        "request": req.id, "code": req.code.id, "status": req.code.status_link.object_uid,
        "weights": seen["action.set"][-1].args[0].id, "result": seen["action.get"][-1].args[0],
        "weights_blob": seen["action.set"][-1].args[0].syft_blob_storage_entry_id,
        "blob": seen["blob_storage.read"][-1].kwargs["uid"],
        "user": sy.UID(Registry(Governance(site["dir"])).by_email(ADA).user_id),
    }


BIG_SOURCE = '''
class Big(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)
        self.wide = nn.Linear(600, 600)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)))
        return self.head(x.mean(dim=(2, 3, 4))) + self.wide.bias[:1] * 0
'''


def test_allowed_methods_answer_only_with_the_callers_own_objects(site, adas_objects):
    from syft.service.code.status_service import UserCodeStatusService
    from syft.service.code.user_code import UserCode, UserCodeStatusCollection
    from syft.service.code.user_code_service import UserCodeService
    from syft.service.request.request import Request
    from syft.store.linked_obj import LinkedObject

    ids = adas_objects
    bob = client_of(site, BOB, BOB_PW)
    assert value(raw_call(bob, "request.get_all")) == []
    assert value(raw_call(bob, "code.get_all")) == []
    must_refuse = {
        "code.call": raw_call(bob, "code.call", uid=ids["code"]),
        "action.get result": raw_call(bob, "action.get", ids["result"]),
        "action.get weights": raw_call(bob, "action.get", ids["weights"]),
        "action.get_mock result": raw_call(bob, "action.get_mock", ids["result"]),
        "action.has_storage_permission": raw_call(bob, "action.has_storage_permission",
                                                  ids["result"]),
        "blob_storage.read": raw_call(bob, "blob_storage.read", uid=ids["blob"]),
        "blob_storage.write_to_disk": raw_call(bob, "blob_storage.write_to_disk",
                                               uid=ids["blob"], data=b"poison"),
        "migration._get_object request": raw_call(bob, "migration._get_object",
                                                  uid=ids["request"], object_type=Request),
        "migration._get_object code": raw_call(bob, "migration._get_object", uid=ids["code"],
                                               object_type=UserCode),
        "notifications.resolve_object": raw_call(
            bob, "notifications.resolve_object",
            LinkedObject.from_uid(ids["code"], UserCode, service_type=UserCodeService,
                                  server_uid=bob.id)),
        "notifications.resolve_object status": raw_call(
            bob, "notifications.resolve_object",
            LinkedObject.from_uid(ids["status"], UserCodeStatusCollection,
                                  service_type=UserCodeStatusService, server_uid=bob.id)),
        "api.call_public other": raw_call(bob, "api.call_public", path="other.endpoint"),
    }
    asset = bob.datasets["brain-mri-pet"].assets[0]
    private = raw_call(bob, "action.get", asset.action_id)
    assert refused(private) or site["cohort"].cohort_id not in str(value(private))
    overwrite = sy.ActionObject.from_obj({"poison": 1})
    overwrite.id = ids["result"]
    must_refuse["action.set over Ada's result"] = raw_call(bob, "action.set", overwrite)
    from syft.types.blob_storage import CreateBlobStorageEntry

    must_refuse["allocate with a path in its extension"] = raw_call(
        bob, "blob_storage.allocate",
        CreateBlobStorageEntry(file_size=10, extensions=["/../../escape"]))
    must_refuse["write_to_disk Ada's upload"] = raw_call(
        bob, "blob_storage.write_to_disk", uid=ids["weights_blob"], data=b"poison")
    # a twin whose mock claims Ada's blob: syft would make that blob readable by everyone
    from syft.types.twin_object import TwinObject

    private_part = sy.ActionObject.from_obj({"x": 1})
    mock_part = sy.ActionObject.from_obj({"y": 2})
    mock_part.syft_action_saved_to_blob_store = True
    mock_part.syft_blob_storage_entry_id = ids["weights_blob"]
    must_refuse["twin naming Ada's blob"] = raw_call(
        bob, "action.set", TwinObject(private_obj=private_part, mock_obj=mock_part))
    borrowed = sy.ActionObject.from_obj({"z": 3})
    borrowed.syft_action_saved_to_blob_store = True
    borrowed.syft_blob_storage_entry_id = ids["blob"]
    must_refuse["object naming Ada's result blob"] = raw_call(bob, "action.set", borrowed)
    assert {k for k, v in must_refuse.items() if not refused(v)} == set()
    for blob in (ids["weights_blob"], ids["blob"]):  # still Ada's alone
        assert refused(raw_call(bob, "blob_storage.read", uid=blob))
    ada = client_of(site, ADA, ADA_PW)
    mine = value(raw_call(ada, "action.get", ids["result"]))
    assert "poison" not in str(getattr(mine, "syft_action_data", mine))
    assert value(raw_call(ada, "request.get_all"))  # Ada does see her own


def test_every_other_method_syft_offers_a_data_scientist_is_refused(site, adas_objects):
    bob = client_of(site, BOB, BOB_PW)
    offered = syft_methods_for_researchers()
    assert len(offered) > 100 and set(RULES) <= set(offered)
    answers = {path: raw_call(bob, path, uid=adas_objects["code"])
               for path in offered if path not in RULES}
    assert "user.view" in answers and "output.get_by_user_code_id" in answers
    leaked = {p: str(a)[:80] for p, a in answers.items()
              if "not available to researchers" not in str(getattr(a, "message", a))}
    assert leaked == {}


def test_guests_reach_nothing(site):
    assert GUEST_RULES == frozenset()
    with quiet():
        guest = sy.login_as_guest(url="http://127.0.0.1", port=site["port"])
    for path in syft_methods_for_researchers():
        answer = raw_call(guest, path)
        assert refused(answer) and "an account is needed" in str(
            getattr(answer, "message", answer)), path


# -- sticky denials ------------------------------------------------------------------------
def _reviewed(site, fed, plan):
    d = site["dir"]
    return wait_for(lambda: next((v for v in console.list_requests(d)
                                  if v.plan == fed.bind(plan) and Governance(d).verdict_seen(
                                      v.id, v.policy_hash)), None))


def test_a_denied_plan_resubmitted_under_a_new_version_goes_to_a_human(site):
    d, fed = site["dir"], site["fed"]
    plan = make_plan(name="denied", rounds=2)
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)["omega"].status == "approved")
    view = next(v for v in console.list_requests(d) if v.plan == fed.bind(plan))
    console.deny(d, view.id, reason="cohort reserved for the stroke study",
                 reviewer=as_reviewer(d, "dpo"))
    again = plan.model_copy(update={"version": 2})
    other_lr = plan.model_copy(update={"name": "renamed", "learning_rate": 0.05})
    fresh = make_plan(name="different", rounds=1, epsilon=4.0,  # a model not used before
                      source=small_model_source().replace("GroupNorm(2, 4)", "GroupNorm(1, 4)"))
    for p in (again, other_lr, fresh):
        fed.submit(p)
    lines = {}
    for p in (again, other_lr, fresh):
        v = _reviewed(site, fed, p)
        lines[p.name, p.version] = (v, next(c for c in v.checks if c.rule == "history.denied"))
    time.sleep(3)  # a further sweep: none of them is approved automatically
    assert {fed.status(p)["omega"].status for p in (again, other_lr, fresh)} == {"pending"}
    for key, matched in ((("denied", 2), "model and training settings"),
                         (("renamed", 1), "model")):
        v, line = lines[key]
        assert line.status == "fail" and line.overridable
        assert "stroke study" in line.message and f"same {matched}" in line.message
    v, line = lines["different", 1]
    assert line.status == "warn" and "stroke study" in line.message  # held, not matched
    v_again = lines["denied", 2][0]
    with pytest.raises(console.ConsoleError, match="history.denied"):
        console.approve(d, v_again.id, reviewer=as_reviewer(d, "dpo"))
    done = console.approve(d, v_again.id, reviewer=as_reviewer(d, "dpo"), override=True,
                           note="new protocol agreed with the stroke study lead")
    assert done.status == "approved"
    site["human_approved"] = fed.bind(again)
    later = make_plan(name="after_hold", rounds=1, epsilon=1.0)
    fed.submit(later)  # a reviewer approved since the denial: automatic approval is back
    wait_for(lambda: fed.status(later)["omega"].status == "approved")


# -- review cannot be stalled --------------------------------------------------------------
DEEP = ('''
class Deep(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        y = 1''' + " + 1" * 8000 + '''
        return self.head(x.mean(dim=(2, 3, 4))) * y
''')


def test_a_model_too_deep_to_parse_is_refused_and_the_sweep_goes_on(site):
    d, fed = site["dir"], site["fed"]
    deep = make_plan(name="deep", source=DEEP, class_name="Deep")
    after = make_plan(name="after_deep", rounds=1, epsilon=2.0)
    fed.submit(deep)
    fed.submit(after)
    wait_for(lambda: fed.status(after)["omega"].status == "approved")
    wait_for(lambda: fed.status(deep)["omega"].status == "denied")
    assert "model_code.depth" in (fed.status(deep)["omega"].reason or "")
    views = console.list_requests(d)  # the console lists it, never crashes on it
    v = next(v for v in views if v.plan == fed.bind(deep))
    assert "model_code.depth" in {c.rule for c in v.hard_failures}


SLOW = '''
class Slow{k}(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.head = nn.Linear(4, 1)
        n = 0
        for i in range(10 ** 12):
            n = n + {k}

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3, 4)))
'''


def test_one_researchers_slow_requests_do_not_hold_up_anothers(site):
    """Each of Mallory's models takes the whole review timeout to build; Ada's plan, sent
    after all of them, is still reviewed before most of them (one review per researcher
    per turn)."""
    d = site["dir"]
    cfg = lifecycle.load_site(d)[1]
    save_site(d, cfg.model_copy(update={"review_timeout_s": 4}))  # read at every review
    try:
        mallory = federation_of(site, MALLORY, MALLORY_PW, "mallory-slow")
        slow = [make_plan(name=f"slow{k}", source=SLOW.format(k=k), class_name=f"Slow{k}")
                for k in range(1, 4)]
        for p in slow:
            mallory.submit(p)
        ada = site["fed"]
        mine = make_plan(name="while_busy", rounds=1, epsilon=1.5)
        ada.submit(mine)
        wait_for(lambda: ada.status(mine)["omega"].status == "approved", timeout_s=120)
        ids = {p.name: next(v.id for v in console.list_requests(d)
                            if v.plan == mallory.bind(p)) for p in slow}
        adas = next(v.id for v in console.list_requests(d) if v.plan == ada.bind(mine))
        wait_for(lambda: ids["slow3"] in [e["subject"] for e in Governance(d).audit_entries()
                                          if e["event"] == "request.verdict"], timeout_s=120)
        order = [e["subject"] for e in Governance(d).audit_entries()
                 if e["event"] == "request.verdict"]
        assert order.index(adas) < order.index(ids["slow3"])
        view = next(v for v in console.list_requests(d) if v.id == ids["slow1"])
        line = next(c for c in view.checks if c.rule == "training.graph")
        assert line.failed and "timed out" in line.seen
    finally:
        save_site(d, cfg)


def test_denying_a_plan_revokes_the_researchers_automatic_approvals_there(site):
    """Copies sent side by side and approved automatically before the denial stop with it,
    whether or not their source matches (a renamed class, an explicit default argument);
    a plan a person approved stays."""
    d, fed = site["dir"], site["fed"]
    source = small_model_source().replace("Linear(4, 1)", "Linear(4, 1, bias=True)")
    original = make_plan(name="grab", rounds=1, epsilon=1.0, source=source)
    copy = original.model_copy(update={"name": "grab_copy", "learning_rate": 0.2})
    variant = make_plan(name="grab_variant", rounds=1, epsilon=1.0,
                        source=source.replace("Tiny", "Tiny2"), class_name="Tiny2")
    for p in (original, copy, variant):
        fed.submit(p)
    for p in (original, copy, variant):
        wait_for(lambda p=p: fed.status(p)["omega"].status == "approved")
    view = next(v for v in console.list_requests(d) if v.plan == fed.bind(original))
    done = console.deny(d, view.id, reason="not this model", reviewer=as_reviewer(d, "dpo"))
    ids = {next(v.id for v in console.list_requests(d) if v.plan == fed.bind(p))
           for p in (copy, variant)}
    assert ids <= set(done.also_revoked)
    for p in (copy, variant):
        assert fed.status(p)["omega"].status == "denied"
        assert Governance(d).approval(fed.bind(p).plan_hash) is None
    results, errors = fed.run_round(fed.bind(variant), initial_weights(fed.bind(variant)),
                                    retries=0)
    assert results == {} and "omega" in errors
    if "human_approved" in site:  # the sticky-denial test's plan a person approved stays
        assert Governance(d).approval(site["human_approved"].plan_hash) is not None
    # a reviewer lifts the hold the denial set (later tests expect automatic approval)
    lift = make_plan(name="lift_hold", rounds=1, epsilon=0.5)
    fed.submit(lift)
    v = _reviewed(site, fed, lift)
    console.approve(d, v.id, reviewer=as_reviewer(d, "dpo"), override=bool(v.failing),
                    note="agreed")


def test_a_researcher_cannot_keep_more_than_ten_requests_waiting(site):
    from sites.review.researcher_api import MAX_PENDING_REQUESTS

    mallory = federation_of(site, MALLORY, MALLORY_PW, "mallory-flood")
    client = mallory.client("omega")

    def waiting() -> int:
        return len(value(raw_call(client, "request.get_all")) and [
            r for r in value(raw_call(client, "request.get_all"))
            if console.status_name(r.status) == "pending"])

    sent = 0
    while waiting() < MAX_PENDING_REQUESTS:
        mallory.submit(make_plan(name=f"flood{sent}"))  # fails access rules: stays pending
        sent += 1
        assert sent <= MAX_PENDING_REQUESTS
    with pytest.raises(Exception, match="awaiting review on this site"):
        mallory.submit(make_plan(name="one_too_many"))
    assert waiting() == MAX_PENDING_REQUESTS


def test_the_pending_cap_holds_under_concurrent_submissions(site):
    """Bob sends 15 plans at once that all wait for a reviewer (too many rounds): the cap is
    checked and the request stored one submission at a time (red-team finding)."""
    from concurrent.futures import ThreadPoolExecutor

    from sites.review.researcher_api import MAX_PENDING_REQUESTS

    client = client_of(site, BOB, BOB_PW)
    plans = [make_plan(name=f"burst{i}", researcher=BOB, rounds=5) for i in range(15)]
    codes = [template_code(site, client, p) for p in plans]
    with ThreadPoolExecutor(15) as pool:
        answers = list(pool.map(lambda c: submit_code(client, c), codes))
    accepted = [a for a in answers if not refused(a)]
    assert len(accepted) <= MAX_PENDING_REQUESTS < len(answers)
    assert all("awaiting review" in str(getattr(a, "message", a)) for a in answers
               if refused(a))


# -- parameter counts ----------------------------------------------------------------------
LIAR = '''
class Liar(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, stride=2, padding=1)
        self.wide = nn.Linear(1300, 1300)
        self.head = nn.Linear(4, 1)

    def parameters(self, recurse=True):
        return []

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.head(x.mean(dim=(2, 3, 4))) + self.wide.bias[:1] * 0
'''


def test_a_model_that_overrides_parameters_is_refused_by_review(site):
    """Review names the override; the count itself never asks the model
    (tests/unit/sites/test_runtime.py runs the same model past review, as if review had
    been fooled)."""
    fed = site["fed"]
    plan = make_plan(name="liar", source=LIAR, class_name="Liar")
    fed.submit(plan)
    wait_for(lambda: fed.status(plan)["omega"].status == "denied")
    assert "model_code.override" in (fed.status(plan)["omega"].reason or "")


def test_nothing_any_attack_sent_ran_on_the_site(site):
    assert no_marks(site) == []
    assert os.environ.get("MEDSYFT_SITE_DIR") is None  # the marks could only come from the site


def _peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("bomb", ["dtype", "strings"])
def test_arrays_in_a_signed_call_cannot_inflate_past_what_they_carry(site, bomb):
    """A 16.7 kB call to a method the gate refuses carried three int8 tensors declared
    complex128: syft cast each to 2 GiB and the server took 6.4 GB before refusing; a 3 kB
    one carried a string array syft decoded to 1.9 GB (red-team findings). Now such an
    array is refused as it is read."""
    from syft.serde.deserialize import _deserialize

    from tests.support.guard_probe import (
        dtype_bomb_array,
        signed_call_with_arrays,
        string_bomb_array,
    )

    fed = site["fed"]
    pid = lifecycle.status(site["dir"]).pid
    arrays = [dtype_bomb_array(128 * 1024**2)] * 3 if bomb == "dtype" else \
        [string_bomb_array(50_000, 10_000)]
    body = signed_call_with_arrays(fed.client("omega"), "user.get_all", arrays)
    assert len(body) < 100_000
    before = _peak_rss(pid)
    answer = _deserialize(_post(site, "api_call", body), from_bytes=True)
    assert "refused by the medsyft site" in str(getattr(answer, "message", answer))
    assert _peak_rss(pid) - before < 1024**3  # syft alone cast it to 6 GiB
    assert fed.datasets()["omega"]  # the site still serves


def test_a_model_source_cannot_write_terminal_escapes_to_the_data_owners_console(site):
    """A comment in the model source is invisible to the syntax-tree review; with escapes in
    it, `console show` rewrote the data owner's terminal, title and clipboard (red-team
    finding). The source is shown with control characters as `?`."""
    fed, d = site["fed"], site["dir"]
    source = small_model_source().replace(
        "class Tiny", "# \x1b]52;c;ZXZpbA==\x07\x1b[1A\x1b[2K all policy checks pass\nclass Tiny")
    plan = make_plan(name="escapes", rounds=1, source=source)
    fed.submit(plan)
    request = wait_for(lambda: fed.status(plan)["omega"].request_id)
    from typer.testing import CliRunner

    from sites.entrypoint import app

    shown = CliRunner().invoke(app, ["console", "show", request, "--site", str(d)])
    assert shown.exit_code == 0, shown.output[-2000:]
    assert "all policy checks pass" in shown.output  # the comment is shown, defused
    assert "\x1b]52" not in shown.output and "\x1b[1A" not in shown.output
    assert "\x07" not in shown.output
