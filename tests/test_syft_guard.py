"""The request guard against syft 0.9.5 as it is: each attack works on an unguarded
in-process datasite and fails once `sites.syft_guard` is installed (tests/guard_probe.py,
one process each way). The same attacks against a live medsyft site, with the real
client, are in tests/test_request_surface.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from sites import syft_guard

ATTACKS = ("deserialising_runs_a_shell", "custom_policy_submitted", "custom_policy_code_ran",
           "other_researchers_email_read", "own_institution_edited")


def _probe(mode: str, marks) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.guard_probe", mode, str(marks)],
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
    from sites.syft_client import syft

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
