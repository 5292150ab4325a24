"""unit/policies tests."""
