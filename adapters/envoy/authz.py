"""The ext_authz Check servicer: CheckRequest in, CheckResponse out, through the engine.

Thin by design: it identifies the caller (an optional OIDC bearer token), translates the
request with `adapters.envoy.translate`, asks the engine, and translates the answer. First the
OPA-style decision query (`envoy/authz/allow` by default), so opa-envoy-plugin policies work
unchanged; when that query is undefined, Ordinance's own `decide()`. Every failure is a deny:
an unparseable request is 400, a missing or invalid token where a subject is required is 401,
a policy error or a malformed result is 403. It does not serve gRPC itself; mount it with
`external_auth_pb2_grpc.add_AuthorizationServicer_to_server`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]

from adapters.envoy.translate import (
    CheckRequest,
    CheckResponse,
    RequestParseError,
    ResultError,
    bad_request_response,
    bearer_token,
    check_request_to_input,
    decision_to_check_response,
    error_response,
    result_to_check_response,
    unauthenticated_response,
)
from engine.decision import Decision
from engine.errors import EvaluationError
from engine.identity import IdentityError, Subject
from envoy.service.auth.v3 import external_auth_pb2_grpc  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

DEFAULT_QUERY = "envoy/authz/allow"


class DecisionEngine(Protocol):
    """What the servicer needs from the engine."""

    def query(self, path: str, input_doc: dict[str, Any]) -> tuple[bool, Any]: ...

    def decide(self, input_doc: dict[str, Any]) -> Decision: ...


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Subject: ...


RequestApproval = Callable[[Decision, dict[str, Any], str], str | None]
"""Called for a `review` decision with (decision, input document, decision id); returns the
approval request's id (or None when none could be created)."""


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """envoy.service.auth.v3.Authorization backed by an Ordinance engine."""

    def __init__(self, engine: DecisionEngine, *, query: str | None = DEFAULT_QUERY,
                 verifier: TokenVerifier | None = None, require_subject: bool = False,
                 request_approval: RequestApproval | None = None,
                 max_body: int | None = None) -> None:
        self.engine = engine
        self.query = query
        self.verifier = verifier
        self.require_subject = require_subject
        self.request_approval = request_approval
        self.max_body = max_body

    def _subject(self, request: CheckRequest) -> Subject | None:
        """The verified subject; `IdentityError` when a token is bad or a required one absent."""
        token = bearer_token(request)
        if token is None:
            if self.require_subject:
                raise IdentityError("a bearer token is required")
            return None
        if self.verifier is None:
            if self.require_subject:
                raise IdentityError("no token verifier is configured")
            return None
        return self.verifier.verify(token)

    def check(self, request: CheckRequest, decision_id: str | None = None) -> CheckResponse:
        """The answer to one CheckRequest; never raises for a request or policy problem."""
        decision_id = decision_id or str(uuid.uuid4())
        try:
            subject = self._subject(request)
        except IdentityError as exc:
            return unauthenticated_response(str(exc), decision_id)
        try:
            kwargs = {} if self.max_body is None else {"max_body": self.max_body}
            input_doc = check_request_to_input(request, subject=subject, **kwargs)
        except RequestParseError as exc:
            return bad_request_response(str(exc), decision_id)
        try:
            if self.query:
                defined, value = self.engine.query(self.query, input_doc)
                if defined:
                    return result_to_check_response(value, decision_id)
            decision = self.engine.decide(input_doc)
        except (EvaluationError, ResultError) as exc:
            log.warning("decision %s: %s", decision_id, exc)
            return error_response(str(exc), decision_id)
        approval_id = None
        if decision.effect == "review" and self.request_approval is not None:
            try:
                approval_id = self.request_approval(decision, input_doc, decision_id)
            except Exception:
                log.exception("decision %s: could not create the approval request",
                              decision_id)
        return decision_to_check_response(decision, decision_id, approval_id)

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> CheckResponse:
        return self.check(request)
