"""Errors the engine raises to its callers. Each carries a message meant for people."""

from __future__ import annotations


class OrdinanceError(Exception):
    """Base class of every error the engine raises on purpose."""


class PolicySetError(OrdinanceError):
    """A policy set that cannot be loaded; `errors` holds one `file:line: message` per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors) if errors else "invalid policy set")


class EvaluationError(OrdinanceError):
    """A policy failed at run time (a builtin error, conflicting values, a CEL error value)."""


class InputError(OrdinanceError):
    """The input document is not what the engine can evaluate (not an object, too deep...)."""
