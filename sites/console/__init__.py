"""The web approval console: named reviewers decide in a browser, served by the site.

Runs in the site process beside syft (`serve.start`), on its own port, loopback
unless site.yaml gives a host with a TLS certificate and key. Imports review,
governance and operator code; never the sandbox (researcher code) and
never a private value.
"""
