"""Fakes of external services that speak the real wire protocol, for tests and smoke tests."""
