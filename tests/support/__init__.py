"""Helpers the test suites share: plans, real sites on loopback, reference maths, attack
probes. Tests import these, never each other."""
