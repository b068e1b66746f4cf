"""Honest fakes for tests and single-process labs: stateful, asserting end state, injecting failures."""
