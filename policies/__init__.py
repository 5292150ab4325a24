"""Site policy files: schema, loading with located errors, and plan checks.

Never imports syft or torch; validating a policy must be instant.
"""
