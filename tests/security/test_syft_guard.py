"""The request guard against syft 0.9.5 as it is: each attack works on an unguarded
in-process datasite and fails once `sites.common.syft_guard` is installed
(tests/support/guard_probe.py, one process each way). The same attacks against a live
medsyft site, with the real client, are in tests/security/test_request_surface.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from sites.common import syft_guard

ATTACKS = ("deserialising_runs_a_shell", "custom_policy_submitted", "custom_policy_code_ran",
           "other_researchers_email_read", "own_institution_edited",
           "unsigned_cached_call_used", "aliased_pointers_copied")


@pytest.fixture(autouse=True)
def _site_side_reading(monkeypatch):
    """These tests read as a site does: a researcher client created earlier in this
    process (another test file) reads every message as untrusted, which would cap the
    ordinary data read here. The subprocess tests set the client side themselves."""
    monkeypatch.setitem(syft_guard._every_message_untrusted, "on", False)


def _probe(mode: str, marks) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.support.guard_probe", mode, str(marks)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_each_attack_works_on_plain_syft_and_fails_against_the_guard(tmp_path, repo_root):
    (tmp_path / "unguarded").mkdir()
    (tmp_path / "guarded").mkdir()
    runs = {mode: _probe(mode, tmp_path / mode) for mode in ("unguarded", "guarded")}
    outcome = {}
    for mode, proc in runs.items():
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, mode
        outcome[mode] = json.loads(stdout.strip().splitlines()[-1])
    assert outcome["unguarded"] == {a: True for a in ATTACKS}
    assert outcome["guarded"] == {a: False for a in ATTACKS}


def test_typing_aliases_that_name_anything_but_a_typing_constructor_are_refused():
    assert syft_guard.alias_problem({"path": "typing.List", "__origin__": list,
                                     "__args__": (int,)}) is None
    for forged in ({"path": "os.system", "command": "id"},
                   {"path": "typing.List", "__origin__": list, "command": "id"},
                   {"path": "builtins.eval", "__args__": ("1",)},
                   {"path": "typing.get_type_hints", "__args__": ()},
                   ["typing.List"]):
        assert syft_guard.alias_problem(forged), forged


def test_the_guard_refuses_to_install_over_a_function_it_does_not_know():
    owner = types.SimpleNamespace(target=lambda: None)
    with pytest.raises(syft_guard.GuardNotApplied, match="does not start unguarded"):
        syft_guard._replace("somewhere", owner, "target", syft_guard._gate, "expected_name")


def test_submission_check_names_what_differs_from_the_template():
    from sites.common.syft_client import syft

    sy = syft()
    from syft.service.code.user_code import SubmitUserCode
    from syft.service.policy.policy import (
        MixedInputPolicy,
        OutputPolicyExecuteCount,
        OutputPolicyExecuteOnce,
    )

    def code(**changes):
        base = dict(code="def f(data, weights):\n    return 1\n", func_name="f",
                    signature=__import__("inspect").signature(lambda data, weights: 0),
                    input_policy_type=MixedInputPolicy, input_policy_init_kwargs={},
                    output_policy_type=OutputPolicyExecuteOnce, input_kwargs=["data", "weights"])
        return SubmitUserCode(**(base | changes))

    assert syft_guard.submission_problem(code()) is None
    assert "MixedInputPolicy" in syft_guard.submission_problem(
        code(input_policy_type=sy.ExactMatch))
    assert "OutputPolicyExecuteOnce" in syft_guard.submission_problem(
        code(output_policy_type=OutputPolicyExecuteCount))
    assert "worker pool" in syft_guard.submission_problem(code(worker_pool_name="gpu"))
    assert "nested jobs" in syft_guard.submission_problem(
        code(input_kwargs=["data", "datasite"]))
    big = "def f(data, weights):\n    return '" + "x" * syft_guard.MAX_SUBMITTED_CODE + "'\n"
    assert "larger" in syft_guard.submission_problem(code(code=big))


def _nested_list(depth: int):
    import typing

    alias = int
    for _ in range(depth):
        alias = typing.List[alias]  # noqa: UP006 (typing's alias, as syft serialises it)
    return alias


def test_a_nested_typing_alias_is_read_in_one_pass_and_only_so_deep(monkeypatch):
    from syft.serde import deserialize as serde_deserialize
    from syft.serde.serialize import _serialize

    syft_guard.guard_deserialization()
    calls = {"n": 0}
    real = serde_deserialize._deserialize

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(serde_deserialize, "_deserialize", counting)
    work = {}
    for depth in (6, 12):
        calls["n"] = 0
        alias = _nested_list(depth)
        assert real(_serialize(alias, to_bytes=True), from_bytes=True) == alias
        work[depth] = calls["n"]
    assert work[12] <= 3 * work[6]  # linear in the depth (read twice per level: 64 times)
    with pytest.raises(Exception, match="nested too deep"):
        real(_serialize(_nested_list(syft_guard.MAX_ALIAS_DEPTH + 4), to_bytes=True),
             from_bytes=True)


def test_arrays_are_capped_at_the_weights_size_and_plain_dtypes():
    import numpy as np
    import pyarrow as pa
    from syft.serde import arrow
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    syft_guard.guard_deserialization()
    assert getattr(arrow.arrow_deserialize, "medsyft_guard", False)
    weights = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(_deserialize(_serialize(weights, to_bytes=True),
                                               from_bytes=True), weights)
    frame = pa.compress(b"\0" * 16, codec="zstd", asbytes=True)
    with pytest.raises(Exception, match="larger than any weights"):
        arrow.arrow_deserialize(frame, syft_guard.MAX_DECOMPRESSED_BYTES + 1, "int8")
    with pytest.raises(Exception, match="unusual dtype"):
        arrow.arrow_deserialize(frame, 16, "object")


_DESERIALISE_NESTED = """
import sys
from sites.common import syft_guard
from tests.support.guard_probe import nested_body
if sys.argv[1] == "guarded":
    syft_guard.guard_deserialization()
from syft.serde import deserialize
for depth in map(int, sys.argv[2:]):
    try:
        deserialize._deserialize(nested_body(depth), from_bytes=True)
    except Exception as exc:
        print(depth, "refused:", str(exc)[:80], flush=True)
print("still running", flush=True)
"""


def test_an_error_deep_inside_a_body_does_not_crash_the_process():
    """An unknown type at the bottom of nested lists: unguarded syft 0.9.5 with pycapnp
    dies of a segmentation fault freeing the error (red-team finding); guarded, the error
    is an ordinary refusal, and nothing nests deeper than MAX_SERDE_DEPTH."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    depths = [12, 40, syft_guard.MAX_SERDE_DEPTH + 1, 3000]

    def run(mode: str, *depths: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _DESERIALISE_NESTED, mode,
                               *map(str, depths)],
                              cwd=root, capture_output=True, text=True, timeout=300)

    guarded = run("guarded", *depths)
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    lines = guarded.stdout.splitlines()
    assert lines[-1] == "still running"
    for depth, line in zip(depths, lines, strict=False):
        expected = "nested too deep" if depth > syft_guard.MAX_SERDE_DEPTH else "no_such_type"
        assert line.startswith(f"{depth} refused:") and expected in line, line
    assert len(lines) == len(depths) + 1
    assert run("unguarded", 12).returncode != 0  # the crash the guard prevents is real


def test_capnp_reads_are_bounded_by_the_message_size_and_ordinary_data_reads():
    """Pointers aliasing one chunk (syft read with no traversal limit: red-team finding)
    fail at Cap'n Proto's limit; data of any ordinary shape still round-trips."""
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    from tests.support.guard_probe import aliased_bytes, aliased_list

    syft_guard.guard_deserialization()
    for body in (aliased_list(2000, 2000), aliased_bytes(3000, 1000)):
        with pytest.raises(Exception, match="traversal limit"):
            _deserialize(body, from_bytes=True)
    ordinary = {"weights": b"w" * 3_000_000, "names": [f"layer{i}" for i in range(5000)],
                "nested": [[i, {"k": (i, str(i))}] for i in range(200)], "ids": set(range(300))}
    assert _deserialize(_serialize(ordinary, to_bytes=True), from_bytes=True) == ordinary


def test_a_signed_call_may_carry_only_what_its_signature_covers():
    from syft.client.api import SyftAPICall
    from syft.serde.deserialize import _deserialize
    from syft.server.credentials import SyftSigningKey
    from syft.types.uid import UID

    from tests.support.guard_probe import forged_signed_call

    syft_guard.guard_deserialization()
    signed = SyftAPICall(server_uid=UID(), path="metadata.get_metadata", args=[],
                         kwargs={}).sign(SyftSigningKey.generate())
    forged = SyftAPICall(server_uid=UID(), path="user.get_all", args=[], kwargs={})
    with pytest.raises(Exception, match="SignedSyftAPICall has no such field"):
        _deserialize(forged_signed_call(signed, forged), from_bytes=True)


def test_an_array_is_its_declared_dtype_and_untrusted_arrays_are_bounded_in_all(monkeypatch):
    """One 16.7 kB signed call held arrays that syft cast from int8 to complex128 and that
    together made the server take 6.4 GB before the gate refused the method (red-team
    finding): a tensor must be its declared dtype, and while untrusted input is read the
    arrays of one message share one cap."""
    import numpy as np
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    from tests.support.guard_probe import blob_list, dtype_bomb_array

    syft_guard.guard_deserialization()
    with pytest.raises(Exception, match="not of its declared dtype"):
        _deserialize(dtype_bomb_array(4096, "complex128"), from_bytes=True)
    monkeypatch.setattr(syft_guard, "MAX_DECOMPRESSED_BYTES", 100_000)
    one = _serialize(np.ones(15_000, np.float32), to_bytes=True)  # 60 kB each
    assert len(_deserialize(blob_list([one, one]), from_bytes=True)) == 2  # trusted: no cap
    with syft_guard.reading_untrusted():
        assert _deserialize(one, from_bytes=True).sum() == 15_000
        with pytest.raises(Exception, match="larger in all than any weights"):
            _deserialize(blob_list([one, one]), from_bytes=True)
    with syft_guard.reading_untrusted():  # each message starts with the whole cap
        assert _deserialize(one, from_bytes=True).dtype == np.float32


_CLIENT_READS = """
import sys
import numpy as np
from sites.common.syft_client import syft
syft()
from sites.common import syft_guard
syft_guard.guard_deserialization(answers_untrusted=sys.argv[1] == "untrusted")
from syft.serde.deserialize import _deserialize
from syft.serde.serialize import _serialize
from tests.support.guard_probe import blob_list, colliding_set
syft_guard.MAX_DECOMPRESSED_BYTES = 100_000
one = _serialize(np.ones(15_000, np.float32), to_bytes=True)
results = []
for body in (colliding_set(5000), blob_list([one, one])):
    try:
        _deserialize(body, from_bytes=True)
        results.append("read")
    except Exception as exc:
        results.append("refused" if "refused by the medsyft site" in str(exc) else repr(exc))
ordinary = {"weights": {"conv": np.ones((4, 2), np.float32)}, "names": ["a", "b"]}
back = _deserialize(_serialize(ordinary, to_bytes=True), from_bytes=True)
results.append("ordinary" if back["names"] == ["a", "b"] else "broken")
print(",".join(results))
"""


def test_the_client_reads_every_sites_answer_as_untrusted_input():
    """A malicious site froze the client with a set of colliding ints and filled its memory
    with arrays (red-team finding): the client reads every message under the same caps."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _CLIENT_READS, mode], cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    assert run("untrusted") == "refused,refused,ordinary"
    assert run("trusted") == "read,read,ordinary"  # the caps are what refuses them


def test_string_arrays_and_data_frames_are_refused_in_untrusted_input():
    """syft decodes a string array into count × longest string (704 bytes became 2 GB) and
    a parquet frame into the rows it declares (6.6 kB became 2 GB); medsyft sends neither,
    so untrusted input may hold neither (red-team finding)."""
    import numpy as np
    import pandas as pd
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    from tests.support.guard_probe import string_bomb_array

    syft_guard.guard_deserialization()
    strings = _serialize(np.array(["a", "bb"]), to_bytes=True)
    frame = _serialize(pd.DataFrame({"x": [1, 2]}), to_bytes=True)
    assert list(_deserialize(strings, from_bytes=True)) == ["a", "bb"]  # trusted: as syft
    assert _deserialize(frame, from_bytes=True)["x"].tolist() == [1, 2]
    for body in (strings, frame, string_bomb_array(50_000, 10_000)):
        with syft_guard.reading_untrusted(), pytest.raises(Exception,
                                                           match="in untrusted input"):
            _deserialize(body, from_bytes=True)
