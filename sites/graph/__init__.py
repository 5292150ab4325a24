"""The training graph: what a plan's model becomes once traced, as data the site can check.

`schema` is the format (JSON, executes nothing when read), `export` turns a
`torch.export` program into it (run only inside the sealed tracer), `ops` is the
allowlist of ATen operators a site can reason about, `check` validates a graph
against it and measures it, and `execute` evaluates a validated graph. Nothing in
this package imports or runs researcher Python.
"""
