"""The hospital side of medsyft, in rooms by trust zone (what runs where).

* `common/` — syft client, syft patches and guard, keychain: the only part of the
  site that the researcher's client may import; holds no secret of its own.
* `operator/` — what hospital IT runs: site folder and `Site` handle, lifecycle,
  server process, admin tasks (publishing, researchers).
* `governance/` — the governance database (approvals, runs, budgets, registry,
  denials) and the audit chain; SQL only, never syft or torch.
* `review/` — the data owner's side of requests: introspection, verdicts,
  decisions, the steward thread, the researcher API gate, the public endpoint.
* `runtime/` — round orchestration inside the server: approval and budget checks,
  the job handed to the sandbox, the release filter.
* `sandbox/` — everything that handles researcher input: training child, DP-SGD,
  model inspection child, and how they are launched.
* `cli.py`, `entrypoint.py` — the outer ring: CLI and the composition root.

Modules here may hold the site's secrets and private data. None of them may print
private values, and only `runtime` may hand anything back to a researcher. The
import rules between the rooms are checked by import-linter (`make lint`).
"""
