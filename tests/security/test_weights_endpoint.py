"""The weights endpoint of a real site, attacked: every request from a researcher is
untrusted, signed or not.

One real datasite ("juliet") with two researchers: ada, whose plan is approved, and eve,
another registered researcher of the same site. Each test sends what an attacker would:
no signature, a forged or replayed one, a stale clock, another's plan or release, a body
that is not the plan's weights (too large, wrong names, shapes, dtypes, truncated,
malformed, not the signed digest), a client that stalls; and a site restart in the
middle of an upload. Each refusal must carry its named reason, and nothing refused may
be stored.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import numpy as np
import pytest

from policies.contract import transfer
from policies.contract.transfer import WeightsRef
from researcher import transfer as client_transfer
from researcher.federation import Federation, FederationConfig, SiteEntry, store_password
from sites.common.syft_client import login
from sites.governance.store import Governance
from sites.operator import admin, lifecycle
from sites.operator.config import load_site, save_site
from sites.review import console
from sites.runtime import releases, uploads
from tests.support.plans import TEST_POLICY, make_plan
from tests.support.sites import as_reviewer

pytestmark = pytest.mark.integration

ADA, EVE = "ada@lovelace-institute.org", "eve@lovelace-institute.org"
PASSWORD = "weights-endpoint-pw-1"
SHAPE = (12, 12, 12)


@pytest.fixture(scope="module")
def env(tmp_path_factory, memory_keyring):
    root = tmp_path_factory.mktemp("weights")
    d = root / "juliet"
    lifecycle.init_site("juliet", d, policy_file=TEST_POLICY, train_threads=1)
    _, cfg = load_site(d)
    # a stalled upload is cut off after 2 s here (30 s by default)
    save_site(d, cfg.model_copy(update={"transfer": cfg.transfer.model_copy(
        update={"idle_timeout_s": 2.0})}))
    lifecycle.up(d)
    try:
        admin.add_researcher(d, ADA, "Ada Lovelace", PASSWORD, "Lovelace Institute")
        admin.add_researcher(d, EVE, "Eve Mallory", PASSWORD, "Lovelace Institute")
        admin.publish_synthetic(d, "brain-mri-pet", n=32, seed=3, shape=SHAPE)
        port = lifecycle.load_site(d)[1].port
        config = FederationConfig(sites=[SiteEntry(name="juliet", port=port, email=ADA)],
                                  checkpoints=str(root / "ckpt"))
        store_password(config.sites[0], PASSWORD)
        fed = Federation(config).connect()
        # learning rate 1e-30: a step moves no weight of magnitude ≥ 0.1 in float32, so a
        # round releases exactly the weights it started from, whatever the noise drew
        plan = fed.bind(make_plan(name="wire", rounds=6).model_copy(
            update={"learning_rate": 1e-30}))
        fed.submit(plan)
        view = next(v for v in console.list_requests(d) if v.function == plan.function_name)
        console.approve(d, view.short_id, note="ok", reviewer=as_reviewer(d, "dpo"))
        eve = client_transfer.Signer.of(login("127.0.0.1", port, EVE, PASSWORD))
        yield {"dir": d, "port": port, "fed": fed, "plan": plan, "eve": eve,
               "ada": client_transfer.Signer.of(fed.client("juliet"))}
    finally:
        lifecycle.down(d)


def _weights(plan, seed: int = 0) -> dict[str, np.ndarray]:
    from researcher.federation import initial_weights

    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0.1, 0.2, v.shape).astype(np.float32)
            for k, v in initial_weights(plan).items()}


def _send(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
          ) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, {"raw": len(data)}


def _put(env, blob: bytes, signer=None, round_no: int = 1, digest: str | None = None,
         plan_hash: str | None = None, headers: dict | None = None, **sign) -> tuple[int, dict]:
    plan_hash = plan_hash or env["plan"].plan_hash
    digest = digest or transfer.digest(blob)
    path = transfer.upload_path(plan_hash, round_no, digest)
    signer = signer or env["ada"]
    signed = transfer.sign_headers(signer.signing_key, signer.verify_key, "PUT", path, digest,
                                   plan_hash, round_no, site=sign.pop("site", "juliet"), **sign)
    return _send(env["port"], "PUT", path, {**signed, **(headers or {})}, blob)


def _stored(env) -> list:
    folder = env["dir"] / uploads.FOLDER / env["plan"].plan_hash
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_streamed_round_and_a_syft_round_release_the_same_exact_weights(env):
    fed, plan = env["fed"], env["plan"]
    start = _weights(plan)
    streamed = fed.run_site_round("juliet", plan, start, round_no=1)
    assert streamed.params is not None and streamed.weights_bytes is not None
    for k in start:  # bit for bit: nothing lost or changed on the way in or out
        assert streamed.params[k].tobytes() == start[k].tobytes()
    kept = releases.path_of(env["dir"], plan.plan_hash, streamed.round)
    assert kept is not None and transfer.digest(kept.read_bytes()) == streamed.weights_sha256
    audit = [e for e in Governance(env["dir"]).audit_entries() if e["event"] == "run.released"]
    assert audit[-1]["details"]["weights_sha256"] == streamed.weights_sha256
    assert _stored(env) == []  # the upload served its round and is gone
    assert fed.meter.total == 2 * streamed.weights_bytes  # out and back, as the bar shows
    old = Federation(fed.config, transport="syft")
    old._clients = fed._clients
    inline = old.run_site_round("juliet", plan, start, round_no=2)
    assert inline.weights_bytes is None
    for k in start:
        assert inline.params[k].tobytes() == streamed.params[k].tobytes()
    assert inline.weights_sha256 == streamed.weights_sha256
    assert inline.accounting.steps > streamed.accounting.steps


def test_unsigned_forged_unknown_and_replayed_uploads_are_refused(env):
    blob = transfer.encode(_weights(env["plan"], 1))
    path = transfer.upload_path(env["plan"].plan_hash, 1, transfer.digest(blob))
    status, doc = _send(env["port"], "PUT", path, {}, blob)
    assert (status, doc["error"]) == (401, "unsigned")
    # signed by ada, but over another digest than the path's
    other = transfer.digest(b"something else")
    signed = transfer.sign_headers(env["ada"].signing_key, env["ada"].verify_key, "PUT", path,
                                   other, env["plan"].plan_hash, 1, site="juliet")
    status, doc = _send(env["port"], "PUT", path, signed, blob)
    assert (status, doc["error"]) == (401, "bad_signature")
    # eve's signature under ada's verify key
    forged = transfer.sign_headers(env["eve"].signing_key, env["ada"].verify_key, "PUT", path,
                                   transfer.digest(blob), env["plan"].plan_hash, 1, site="juliet")
    assert _send(env["port"], "PUT", path, forged, blob)[1]["error"] == "bad_signature"
    # a well-formed key of nobody the site registered
    from nacl.signing import SigningKey

    stranger = SigningKey.generate()
    status, doc = _put(env, blob, signer=client_transfer.Signer(
        stranger, stranger.verify_key.encode().hex()))
    assert (status, doc["error"]) == (401, "unknown_account")
    # the same signed request twice: the second is a replay
    nonce = "ab" * 16
    assert _put(env, blob, nonce=nonce)[0] == 201
    status, doc = _put(env, blob, nonce=nonce)
    assert (status, doc["error"]) == (401, "replayed")


def test_a_request_signed_for_another_site_is_refused(env):
    blob = transfer.encode(_weights(env["plan"], 10))
    status, doc = _put(env, blob, site="romeo")  # the same plan may be approved there too
    assert (status, doc["error"]) == (401, "bad_signature")


def test_stale_and_future_times_are_refused(env):
    blob = transfer.encode(_weights(env["plan"], 2))
    for at in (int(time.time()) - 10 * transfer.MAX_SKEW_S,
               int(time.time()) + 10 * transfer.MAX_SKEW_S):
        status, doc = _put(env, blob, at=at)
        assert (status, doc["error"]) == (401, "stale")


def test_another_researcher_cannot_upload_to_or_fetch_from_a_plan_not_theirs(env):
    plan = env["plan"]
    blob = transfer.encode(_weights(plan, 3))
    status, doc = _put(env, blob, signer=env["eve"])
    assert (status, doc["error"]) == (403, "not_approved")
    released = Governance(env["dir"]).released_weights(plan.plan_hash, 1)
    assert released is not None
    endpoint = client_transfer.Endpoint("juliet", "127.0.0.1", env["port"])
    size = releases.path_of(env["dir"], plan.plan_hash, 1).stat().st_size
    with pytest.raises(client_transfer.TransferFailed) as err:
        client_transfer.download(endpoint, env["eve"], plan.plan_hash, 1, released[1], size)
    assert err.value.code == "not_yours"
    # ada herself: a round that released nothing, a digest that is not the release's
    with pytest.raises(client_transfer.TransferFailed) as err:
        client_transfer.download(endpoint, env["ada"], plan.plan_hash, 5, released[1], size)
    assert err.value.code == "not_yours"
    with pytest.raises(client_transfer.TransferFailed) as err:
        client_transfer.download(endpoint, env["ada"], plan.plan_hash, 1, "0" * 64, size)
    assert err.value.code == "not_yours"
    assert client_transfer.download(endpoint, env["ada"], plan.plan_hash, 1, released[1],
                                    size)
    # a plan hash nobody has, and a round beyond the plan's
    assert _put(env, blob, plan_hash="f" * 64)[1]["error"] == "not_approved"
    assert _put(env, blob, round_no=plan.rounds + 1)[1]["error"] == "bad_round"


def _header(entries: dict) -> bytes:
    raw = json.dumps(entries).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def test_bodies_that_are_not_the_plans_weights_are_refused_and_not_stored(env):
    plan = env["plan"]
    before = _stored(env)
    good = _weights(plan, 4)
    name = sorted(good)[0]
    wrong_shape = {**good, name: np.zeros((*good[name].shape, 2), np.float32)}
    assert _put(env, transfer.encode(wrong_shape))[1]["error"] == "wrong_shape"
    wrong_dtype = {**good, name: good[name].astype(np.float64)}
    assert _put(env, transfer.encode(wrong_dtype))[1]["error"] == "wrong_dtype"
    extra = {**good, "smuggled": np.zeros(3, np.float32)}
    assert _put(env, transfer.encode(extra))[1]["error"] == "wrong_names"
    missing = {k: v for k, v in good.items() if k != name}
    assert _put(env, transfer.encode(missing))[1]["error"] == "wrong_names"
    blob = transfer.encode(good)
    for body in (b"{not json" + b" " * 7, struct.pack("<Q", 1 << 40) + b"{}",
                 _header([1, 2, 3]), b"\x01\x02"):
        status, doc = _put(env, body)
        assert status == 400 and doc["error"] in ("malformed", "truncated"), doc
    # offsets that overlap: the layout is right, the byte ranges are not
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    first, second = sorted(header, key=lambda k: header[k]["data_offsets"][0])[:2]
    header[second]["data_offsets"] = [0, header[second]["data_offsets"][1]
                                      - header[second]["data_offsets"][0]]
    assert _put(env, _header(header) + blob[8 + n:])[1]["error"] == "malformed"
    # headers our check and safetensors' own parser could read differently (red team,
    # issue 18): float or bool dimensions, metadata riding along, a key given twice
    for mutate in ("float", "bool", "metadata"):
        h = json.loads(blob[8:8 + n])
        if mutate == "float":
            h[first]["shape"] = [float(d) for d in h[first]["shape"]]
        elif mutate == "bool":
            one = next(k for k, v in h.items() if 1 in v["shape"])
            h[one]["shape"] = [True if d == 1 else d for d in h[one]["shape"]]
        else:
            h["__metadata__"] = {"note": "x"}
        status, doc = _put(env, _header(h) + blob[8 + n:])
        assert (status, doc["error"]) == (400, "malformed"), mutate
    raw = json.dumps(json.loads(blob[8:8 + n])).encode()
    twice = raw[:-1] + b", " + json.dumps({first: json.loads(blob[8:8 + n])[first]}
                                         ).encode()[1:]
    twice += b" " * (-len(twice) % 8)
    status, doc = _put(env, struct.pack("<Q", len(twice)) + twice + blob[8 + n:])
    assert (status, doc["error"]) == (400, "malformed")
    # a Content-Length beyond what the plan's weights can be: refused before the body
    status, doc = _put(env, b"x" * 16, headers={"Content-Length": str(1 << 33)})
    assert (status, doc["error"]) == (413, "too_large")
    # the plan's layout, but other bytes than the signed digest
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    status, doc = _put(env, bytes(tampered), digest=transfer.digest(blob))
    assert (status, doc["error"]) == (400, "digest_mismatch")
    assert _stored(env) == before


def _open_upload(env, blob: bytes, sent: int = 16) -> socket.socket:
    """A signed upload whose head and first `sent` bytes are sent, the rest withheld."""
    digest = transfer.digest(blob)
    path = transfer.upload_path(env["plan"].plan_hash, 1, digest)
    headers = transfer.sign_headers(env["ada"].signing_key, env["ada"].verify_key, "PUT",
                                    path, digest, env["plan"].plan_hash, 1, site="juliet")
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(blob)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", env["port"]), timeout=30)
    sock.sendall(head.encode() + blob[:sent])
    return sock


def test_a_stalled_upload_is_cut_off_and_a_truncated_one_is_not_kept(env):
    blob = transfer.encode(_weights(env["plan"], 5))
    before = _stored(env)
    sock = _open_upload(env, blob)
    t0 = time.monotonic()
    answer = b""  # the site speaks first (it gave up waiting), then closes
    while chunk := sock.recv(4096):
        answer += chunk
    answer = answer.decode("latin-1")
    waited = time.monotonic() - t0
    sock.close()
    assert answer.startswith("HTTP/1.1 408") and '"timeout"' in answer
    assert waited < 30  # cut off by the site, not by this test's socket timeout
    sock = _open_upload(env, blob)
    sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
    sock.recv(4096)
    sock.close()
    time.sleep(0.5)
    assert _stored(env) == before
    log = (env["dir"] / "logs" / "site.log").read_text()
    assert "truncated" in log or "went away" in log


def test_a_crash_during_an_upload_loses_nothing_and_the_round_retries(env):
    import os
    import signal

    fed, plan, d = env["fed"], env["plan"], env["dir"]
    start = _weights(plan, 6)
    blob = transfer.encode(start)
    n = struct.unpack("<Q", blob[:8])[0]
    sock = _open_upload(env, blob, sent=8 + n + 64)  # past the header: the file is open
    folder = d / uploads.FOLDER / plan.plan_hash
    deadline = time.monotonic() + 10
    while not list(folder.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.glob("*.part"))
    os.killpg(lifecycle._read_pid(d), signal.SIGKILL)  # the site dies mid-transfer
    sock.close()
    lifecycle.down(d)
    lifecycle.up(d)
    assert not list(folder.glob("*.part")) if folder.is_dir() else True
    fed._assets.clear()
    fed.connect()  # a fresh login, as after any site restart
    results, errors = fed.run_round(plan, start, retries=1, round_no=3)
    assert errors == {} and set(results) == {"juliet"}
    for k in start:
        assert results["juliet"].params[k].tobytes() == start[k].tobytes()


def test_a_reference_finds_only_the_upload_signed_for_its_round_and_size(env):
    from sites.common.syft_client import quiet

    fed, plan = env["fed"], env["plan"]
    fn = getattr(fed.client("juliet").code, plan.function_name)
    blob = transfer.encode(_weights(plan, 8))
    assert _put(env, blob, round_no=4)[0] == 201
    before = Governance(env["dir"]).runs(plan.plan_hash)
    digest = transfer.digest(blob)
    for ref in (WeightsRef(sha256="e" * 64, size=len(blob), round=4),  # nothing uploaded
                WeightsRef(sha256=digest, size=len(blob), round=5),  # signed for round 4
                WeightsRef(sha256=digest, size=len(blob) + 8, round=4)):  # not its size
        with quiet():
            payload = fn(data=fed._asset("juliet", plan.dataset), weights=ref.to_wire()).get()
        assert payload["ok"] is False and "upload" in payload["error"]
    assert Governance(env["dir"]).runs(plan.plan_hash) == before  # nothing ran, no charge


def test_what_a_client_puts_in_a_path_cannot_forge_a_site_log_line(env):
    status, _ = _send(env["port"], "GET", transfer.PREFIX + "/x%0A2099-01-01%20INFO%20"
                      "medsyft.runtime:%20run%2099%20released%20FORGED", {})
    assert status == 404
    log = (env["dir"] / "logs" / "site.log").read_text()
    assert "FORGED" in log  # it was logged, on the refusal's own line
    assert not any(line.startswith("2099-01-01") for line in log.splitlines())


def test_a_researcher_cannot_hold_more_than_a_few_transfers_open(env):
    from sites.runtime.weights_api import MAX_ACTIVE

    blob = transfer.encode(_weights(env["plan"], 9))
    held = [_open_upload(env, blob) for _ in range(MAX_ACTIVE)]
    try:
        time.sleep(0.3)  # the site has taken each into its slot
        status, doc = _put(env, blob)
        assert (status, doc["error"]) == (503, "busy")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert _put(env, blob)[0] == 201  # the slots come back as the connections end


def _self_signed(folder) -> tuple:  # noqa: ANN001
    """A certificate for 127.0.0.1 and its key, as a hospital's own CA would issue one."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "juliet.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "tls-cert.pem", folder / "tls-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_with_a_certificate_the_weights_travel_over_tls_and_never_in_clear(env):
    fed, plan, d = env["fed"], env["plan"], env["dir"]
    cert, key = _self_signed(d)
    tls_port = lifecycle.free_port()
    lifecycle.down(d)
    _, cfg = load_site(d)
    save_site(d, cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update={
        "tls_cert": cert.name, "tls_key": key.name, "port": tls_port})}))
    lifecycle.up(d)
    start = _weights(plan, 7)
    # the syft port no longer takes weights: a client that sends them there is told where
    status, doc = _put(env, transfer.encode(start))
    assert (status, doc["error"]) == (421, "use_tls") and str(tls_port) in doc["message"]
    entry = fed.config.sites[0].model_copy(update={
        "weights_url": f"https://127.0.0.1:{tls_port}", "ca_file": str(cert)})
    tls = Federation(fed.config.model_copy(update={"sites": [entry]}))
    tls.connect()
    result = tls.run_site_round("juliet", plan, start, round_no=5)
    for k in start:
        assert result.params[k].tobytes() == start[k].tobytes()
    # a signed request sent in clear is used up there: it cannot be replayed over TLS
    released = Governance(d).released_weights(plan.plan_hash, 1)
    path = transfer.release_path(plan.plan_hash, 1, released[1])
    signed = transfer.sign_headers(env["ada"].signing_key, env["ada"].verify_key, "GET", path,
                                   released[1], plan.plan_hash, 1, site="juliet")
    assert _send(env["port"], "GET", path, signed)[1]["error"] == "use_tls"
    import ssl

    conn = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=30,
                                       context=ssl.create_default_context(cafile=str(cert)))
    try:
        conn.request("GET", path, headers=signed)
        resp = conn.getresponse()
        assert resp.status == 401 and json.loads(resp.read())["error"] == "replayed"
    finally:
        conn.close()
    # a client that does not trust the certificate does not talk to it
    untrusted = client_transfer.Endpoint("juliet", "127.0.0.1", tls_port, tls=True)
    with pytest.raises(client_transfer.TransferFailed):
        client_transfer.upload(untrusted, env["ada"], plan.plan_hash, 6,
                               transfer.encode(start))
