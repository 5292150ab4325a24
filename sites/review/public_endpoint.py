"""The public part of a site's policy, served to logged-in researchers through syft.

A syft custom API endpoint (`medsyft.policy`) whose code only calls
`public_policy`: limits, allowed model code, each dataset's accounting terms
(relation, accountant, the n that q derives from: N where it is public, its DP count
where it is private), never who is allowed or who reviews. Researchers call it for
`Federation.check(plan)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from policies.contract.public import ENDPOINT_PATH


def public_policy(site_dir: str | Path) -> dict[str, Any]:
    from policies.schema import PolicyError
    from sites.governance.store import Governance
    from sites.operator.config import load_site
    from sites.operator.site import Site
    from sites.runtime.accounting import accounting_for

    site_dir, cfg = load_site(site_dir)
    try:
        policy, digest = Site(site_dir, cfg).policy()
    except PolicyError:
        return {"error": "the site's policy file is invalid"}
    doc = policy.public() | {"site": cfg.name, "policy_sha256": digest}
    gov = Governance(site_dir)
    for name in list(doc["datasets"]):
        record = gov.dataset(name) if name != "*" else None
        rule = policy.for_dataset(name)
        if record and rule:
            # the n that q and the steps derive from: N when public, else its DP count
            # (which every ledger on the dataset is charged for); never the private N
            terms = accounting_for(gov, record, rule)
            doc["datasets"][name]["accounting"] |= {"n": terms.n,
                                                    "count_noise": terms.count_noise}
            if rule.release.sample_count == "exact":
                doc["datasets"][name]["cohort_n"] = terms.n
        if record and record.get("volume_shape"):  # the schema is public (the mock has it)
            doc["datasets"][name]["volume_shape"] = [
                int(v) for v in record["volume_shape"].split(",")]
    return doc


def medsyft_policy(context) -> dict:  # noqa: ANN001 - syft passes its own context
    import os

    from sites.review.public_endpoint import public_policy

    return public_policy(os.environ["MEDSYFT_SITE_DIR"])


#: What the stored endpoint's code must import; an endpoint stored by an older layout
#: (`sites.public_policy`) is replaced, since syft keeps the code it was given.
CURRENT_IMPORT = "from sites.review.public_endpoint import public_policy"


def register(client: Any) -> None:
    """Add the endpoint on a site (admin client), or replace one whose stored code is not
    this release's."""
    from sites.common.syft_client import quiet, syft

    sy = syft()
    with quiet():
        existing = {e.path: e for e in client.custom_api.get_all()}
        if ENDPOINT_PATH in existing:
            view = existing[ENDPOINT_PATH]
            if CURRENT_IMPORT in (view.mock_function or ""):
                return
            client.custom_api.delete(endpoint_path=ENDPOINT_PATH)
        endpoint = sy.api_endpoint(path=ENDPOINT_PATH, description="medsyft public policy")(
            medsyft_policy)
        client.custom_api.add(endpoint=endpoint)


def site_dir_from_env() -> Path:
    return Path(os.environ["MEDSYFT_SITE_DIR"])
