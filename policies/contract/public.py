"""The public part of a site's policy, as researchers read it.

A site serves it at the syft custom endpoint `ENDPOINT_PATH` (see
`sites.review.public_endpoint`): limits, allowed model code and dataset sizes, never
who is allowed or who reviews. The researcher's pre-check reads it. Must never grow a
field that names a person or a private value.
"""

from __future__ import annotations

#: The syft custom API endpoint that serves a site's public policy.
ENDPOINT_PATH = "medsyft.policy"
