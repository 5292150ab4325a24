"""The contract between researcher and site: what crosses between them, in one place.

The plan and its hash, the syft function template, the wire result of a round, the
privacy accounting (σ from a plan, ε from a history), how a model is built from its
source, the public part of a policy, and the project's error root. Both sides import
it; it must never import anything else of medsyft, so a change to the client cannot
change how the site reads untrusted input.
"""
