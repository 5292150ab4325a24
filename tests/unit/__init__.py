"""Unit tests, one folder per package: no datasite is started (the runtime's tests do
start real training child processes)."""
