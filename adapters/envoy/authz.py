"""The ext_authz Check servicer: CheckRequest in, CheckResponse out, through the engine.

Thin by design: it identifies the caller (an optional OIDC bearer token), translates the
request with `adapters.envoy.translate`, asks the engine, and translates the answer. When the
policy set defines the OPA-style decision path (`envoy/authz/allow` by default), that query
answers, so opa-envoy-plugin policies work unchanged (an undefined answer is an error, as in
the plugin); when the set has nothing on that path, Ordinance's own `decide()` answers.

Every failure is a deny, answered as a normal CheckResponse (the gRPC call itself is OK):
an unparseable request is 400, a missing or invalid token where a subject is required is 401,
an evaluation failure (policy runtime error, malformed result, engine-made error deny, no
policy set loaded) is 500 unless `failure_mode_allow` lets it through, and a decision the
decision log refuses is 500 whatever that setting says (a decision we cannot record is a
decision we do not make). A `review` decision is 403 with an approval request id, or an allow
when an approved request covers exactly this request (`consume_approval`).

The engine is read on every call (`engine` may be a zero-argument callable returning the
current engine, or None before the first policy set loads), so a live reload is picked up at
once. It does not serve gRPC itself: mount `generic_handler()` or use
`external_auth_pb2_grpc.add_AuthorizationServicer_to_server`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # type: ignore[import-untyped]

from adapters.envoy.translate import (
    DEFAULT_MAX_BODY,
    CheckRequest,
    CheckResponse,
    RequestParseError,
    ResultError,
    approval_used_response,
    bad_request_response,
    bearer_token,
    check_request_to_input,
    decision_to_check_response,
    error_response,
    failure_allowed_response,
    is_allowed_response,
    redact_for_log,
    request_headers,
    response_http_status,
    result_to_check_response,
    unauthenticated_response,
)
from engine.decision import Decision
from engine.engine import ENGINE_POLICY
from engine.errors import EvaluationError
from engine.identity import IdentityError, Subject
from engine.service.decision_log import new_decision_id

log = logging.getLogger(__name__)

DEFAULT_QUERY = "envoy/authz/allow"
SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class DecisionEngine(Protocol):
    """What the servicer needs from the engine."""

    def query(self, path: str, input_doc: dict[str, Any]) -> tuple[bool, Any]: ...

    def defines(self, path: str) -> bool: ...

    def decide(self, input_doc: dict[str, Any]) -> Decision: ...


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Subject: ...


EngineSource = Callable[[], DecisionEngine | None]
"""Returns the engine to use now (None while no policy set is loaded)."""

RequestApproval = Callable[[Decision, dict[str, Any], str], str | None]
"""Called for a `review` decision with (decision, input document, decision id); returns the
approval request's id (or None when none could be created)."""

ConsumeApproval = Callable[[Decision, dict[str, Any]], bool]
"""Called for a `review` decision first: True when an approved request covers this request
(and has now been used), which turns the answer into an allow."""

RecordDecision = Callable[[dict[str, Any]], bool]
"""Takes one decision-log record (`DecisionLog.submit`); False means it will not be written."""


class _Failure(Exception):
    """An evaluation failure: answered 500, or allowed under failure_mode_allow."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def is_engine_failure(decision: Decision) -> bool:
    """True for the deny the Engine makes when it could not evaluate (not a policy's deny)."""
    return (decision.effect == "deny" and bool(decision.reasons)
            and all(r.policy == ENGINE_POLICY for r in decision.reasons))


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """envoy.service.auth.v3.Authorization backed by an Ordinance engine."""

    def __init__(self, engine: DecisionEngine | EngineSource, *,
                 query: str | None = DEFAULT_QUERY,
                 verifier: TokenVerifier | None = None, require_subject: bool = False,
                 request_approval: RequestApproval | None = None,
                 consume_approval: ConsumeApproval | None = None,
                 max_body: int | None = None, failure_mode_allow: bool = False,
                 record: RecordDecision | None = None,
                 observe: Callable[[str, float], None] | None = None,
                 transport: str = "envoy") -> None:
        """`record` receives one decision-log record per Check (credentials redacted);
        `observe(outcome, seconds)` is called after each Check (metrics)."""
        if hasattr(engine, "query") and hasattr(engine, "decide"):
            fixed = engine
            self._engine: EngineSource = lambda: fixed  # type: ignore[assignment,return-value]
        else:
            self._engine = engine  # type: ignore[assignment]
        self.query = query
        self.verifier = verifier
        self.require_subject = require_subject
        self.request_approval = request_approval
        self.consume_approval = consume_approval
        self.max_body = max_body
        self.failure_mode_allow = failure_mode_allow
        self.record = record
        self.observe = observe
        self.transport = transport
        self._pid = os.getpid()

    @property
    def engine(self) -> DecisionEngine | None:
        return self._engine()

    def _subject(self, request: CheckRequest, headers: dict[str, str]) -> Subject | None:
        """The verified subject; `IdentityError` when a token is bad or a required one absent."""
        token = bearer_token(request, headers)
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
        started = time.perf_counter()
        decision_id = decision_id or new_decision_id()
        record: dict[str, Any] = {"decision_id": decision_id, "timestamp": time.time(),
                                  "transport": self.transport, "pid": self._pid,
                                  "max_body": DEFAULT_MAX_BODY if self.max_body is None
                                  else self.max_body}
        response = self._answer(request, decision_id, record)
        outcome = record.get("outcome", "allow" if is_allowed_response(response) else "deny")
        if self.record is not None:
            record["response"] = {"allowed": is_allowed_response(response),
                                  "http_status": response_http_status(response)}
            if not self.record(record):
                message = "decision log unavailable; denying (fail closed)"
                log.error("decision %s: %s", decision_id, message)
                response = error_response(message, decision_id)
                outcome = "unrecorded"
        if self.observe is not None:
            self.observe(outcome, time.perf_counter() - started)
        return response

    def _answer(self, request: CheckRequest, decision_id: str,
                record: dict[str, Any]) -> CheckResponse:
        record["kind"] = "rejected"
        headers = request_headers(request.attributes.request.http)
        try:
            subject = self._subject(request, headers)
        except IdentityError as exc:
            record.update(outcome="unauthenticated", error=str(exc))
            return unauthenticated_response(str(exc), decision_id)
        try:
            kwargs = {} if self.max_body is None else {"max_body": self.max_body}
            input_doc = check_request_to_input(request, subject=subject, headers=headers,
                                               **kwargs)
        except RequestParseError as exc:
            record.update(outcome="bad_request", error=str(exc))
            return bad_request_response(str(exc), decision_id)
        if self.record is not None:
            record["input"] = redact_for_log(input_doc)
        try:
            return self._evaluate(input_doc, decision_id, record)
        except _Failure as exc:
            log.warning("decision %s: %s", decision_id, exc)
            record.update(error=str(exc))
            if self.failure_mode_allow:
                record.update(outcome="failure_mode_allowed")
                return failure_allowed_response(str(exc), decision_id)
            record.update(outcome="error")
            return error_response(str(exc), decision_id, status=exc.status)

    def _evaluate(self, input_doc: dict[str, Any], decision_id: str,
                  record: dict[str, Any]) -> CheckResponse:
        engine = self._engine()
        if engine is None:
            record["kind"] = "query" if self.query else "decide"
            raise _Failure("no policy set loaded", status=503)
        if self.query and engine.defines(self.query):
            record.update(kind="query", path=self.query)
            started = time.perf_counter_ns()
            try:
                defined, value = engine.query(self.query, input_doc)
            except EvaluationError as exc:
                raise _Failure(str(exc)) from None
            record["eval_ns"] = time.perf_counter_ns() - started
            if not defined:  # as the plugin: the set answers this path, but not for this input
                raise _Failure("undefined decision")
            record["result"] = value
            try:
                return result_to_check_response(value, decision_id)
            except ResultError as exc:
                raise _Failure(str(exc)) from None
        record["kind"] = "decide"
        decision = engine.decide(input_doc)
        record["decision"] = decision
        if is_engine_failure(decision):
            raise _Failure("; ".join(r.message for r in decision.reasons))
        approval_id = None
        if decision.effect == "review":
            if self.consume_approval is not None and self._consume(decision, input_doc,
                                                                   decision_id):
                record["approval"] = "used"
                return approval_used_response(decision, decision_id)
            if self.request_approval is not None:
                try:
                    approval_id = self.request_approval(decision, input_doc, decision_id)
                except Exception:
                    log.exception("decision %s: could not create the approval request",
                                  decision_id)
                if approval_id:
                    record["approval_id"] = approval_id
        return decision_to_check_response(decision, decision_id, approval_id)

    def _consume(self, decision: Decision, input_doc: dict[str, Any], decision_id: str) -> bool:
        assert self.consume_approval is not None
        try:
            return self.consume_approval(decision, input_doc)
        except Exception:  # the store failing must not turn into an allow
            log.exception("decision %s: could not check for an approval", decision_id)
            return False

    # -- gRPC ----------------------------------------------------------------------------------

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> CheckResponse:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # Envoy has given up on this one
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "check request timed out before query execution")
        return self.check(request)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """`envoy.service.auth.v3.Authorization/Check` for `server.add_generic_rpc_handlers`."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check,
                request_deserializer=external_auth_pb2.CheckRequest.FromString,
                response_serializer=external_auth_pb2.CheckResponse.SerializeToString),
        })

