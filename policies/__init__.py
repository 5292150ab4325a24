"""Site policy files and the researcher/site contract.

`contract/` is what crosses between researcher and site; `schema`, `verdict`,
`code_review` and `explain` are the policy itself; `cli_output` is the CLI's shared
output. Nothing here imports syft or any other medsyft package (import-linter checks
it). Only `contract.model_code` and `contract.privacy` import torch (and Opacus), and
only when they are imported: validating a policy stays instant.
"""
