"""unit/sites tests."""
