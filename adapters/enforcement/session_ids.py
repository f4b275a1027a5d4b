"""Session ids for every adapter's records (PostgreSQL and MySQL proxies, SSH gateway)."""

from __future__ import annotations

import secrets

from engine.masking import may_hold_pan


def new_session_id() -> str:
    """24 random hex digits that cannot read as a card number: the audit trail scrubs those,
    and a session id masked in its records could not be looked up by its real value."""
    while True:
        candidate = secrets.token_hex(12)
        if not may_hold_pan(candidate):
            return candidate
