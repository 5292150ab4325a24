"""unit/datasets tests."""
