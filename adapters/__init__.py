"""Enforcement points. Each adapter is thin: it turns a protocol into an input document,
asks a DecisionClient, and applies the Decision. No policy logic lives here."""
