"""unit/researcher tests."""
