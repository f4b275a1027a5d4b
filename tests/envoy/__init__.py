"""Envoy ext_authz adapter tests."""
