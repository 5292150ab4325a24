"""Integration tests: real syft datasites on loopback, the real client, whole rounds."""
