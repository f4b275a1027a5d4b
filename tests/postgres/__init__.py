"""Tests of the PostgreSQL adapter (codec, session bookkeeping, proxy against a real server)."""
