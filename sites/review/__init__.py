"""The data owner's side of a request: what a syft request is, the verdict against the
policy, decisions (console and steward), the ledger report, the API gate for
researchers and the public policy endpoint.

Must never run researcher code in this process (model facts come from the sandbox)
and never show private data.
"""
