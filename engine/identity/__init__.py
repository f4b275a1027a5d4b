"""Identity: who is asking, as the `subject` of the policy input document.

Owns the `Subject` model and `IdentityError`. Sources of identity live in submodules:
`engine.identity.oidc` (OIDC ID tokens verified against the issuer's JWKS) and
`engine.identity.users` (static users from a YAML file, with SCRAM verifiers for the
PostgreSQL proxy). This package authenticates only; it never decides what a subject may do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class IdentityError(Exception):
    """Authentication failed; the message says precisely why (safe to log, never a secret)."""


@dataclass(frozen=True)
class Subject:
    """An authenticated principal: a stable `id`, its `groups` and the verified `claims`."""

    id: str
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)

    def to_input(self) -> dict[str, Any]:
        """The `subject` member of the policy input document."""
        return {"id": self.id, "groups": list(self.groups), "claims": dict(self.claims)}


__all__ = ["IdentityError", "Subject"]
