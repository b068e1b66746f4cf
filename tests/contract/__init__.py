"""Contract suites shared by a fake and the real thing (imported by tests/unit and tests/integration)."""
