"""`ordinance.v1.ApprovalService` on the decision service's gRPC port (`ordinance serve --audit`).

`ApprovalServiceOptions` is the picklable configuration (`--workers` hands it to spawned
processes); its `start(runtime, tls=, token=)` opens the approvals store and the audit trail on
the audit URL, loads the OIDC verifier and the users file, and returns the running extension
(`ServiceConfig.extensions`), whose handler the gRPC server mounts.

Who is calling, for every call (`authenticate`):

1. `authorization: Bearer <token>` metadata: the service token of `--token-file` (a machine:
   it may list, read and wait, never decide), else an OIDC ID token verified by
   `engine.identity.oidc.OidcVerifier` (`--oidc-jwks/--oidc-issuer/--oidc-audience`): the
   token's identity and `groups` claim. A bearer that verifies as neither is refused; there is
   no fall-back to the certificate.
2. Without a bearer, the client certificate of a mutual-TLS connection (`--tls-client-ca`):
   the identity is the certificate's first SAN e-mail address, else its first SAN URI, else
   its subject CN; a certificate whose extended key usage excludes client authentication is
   refused. Its groups are those of the `--users FILE` entry of the same name (none when the
   name is not there: such a caller may read and wait but no verdict will pass the store's
   group rule). The client CA is therefore trusted to name people.
3. Otherwise UNAUTHENTICATED.

Because the service authenticates each caller itself, the service-token interceptor lets its
calls through (`grpc_self_authenticated`); a caller with neither token nor identity still gets
nothing. The verdict rules are the store's (`engine.approvals.model`); this module maps their
refusals to status codes (PERMISSION_DENIED: separation of duties, approver group;
FAILED_PRECONDITION: expired or already decided; NOT_FOUND) with the store's message and names
the exception class in the `ordinance-error` trailer. Every call appends an `approval.accessed`
audit record (method, outcome, caller, how it authenticated, peer); a read whose record cannot
be written is refused (UNAVAILABLE), as is any call when the store or trail fails.

`Wait` blocks a handler thread, so at most half of the server's threads may wait at once
(RESOURCE_EXHAUSTED beyond), each call waits at most `MAX_WAIT_SECONDS`, and a cancelled
caller frees its thread within `WAIT_SLICE_SECONDS`. It must not decide policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from engine.api import approval_pb2
from engine.approval_client import (
    ERROR_TRAILER,
    MAX_WAIT_SECONDS,
    PROTO_TO_STATUS,
    SERVICE_NAME,
    approval_to_proto,
)
from engine.approvals import (
    ApprovalError,
    ApprovalExpiredError,
    ApprovalNotFound,
    ApprovalStore,
    ApprovalStoreError,
    InvalidApprovalRequest,
    NotAnApproverError,
    SelfApprovalError,
    VerdictFinalError,
)
from engine.approvals.model import same_identity
from engine.audit import AuditError, AuditLog
from engine.identity import IdentityError, Subject
from engine.service.grpc_server import DEFAULT_THREADS

log = logging.getLogger(__name__)

Body = Callable[[Any, "Caller", dict[str, Any], grpc.ServicerContext], Message]
"""A method's work: (decoded request, caller, audit details to fill in, context) -> answer."""

WAIT_SLICE_SECONDS = 5.0
"""A waiting handler checks this often whether its caller is still there."""

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ApprovalNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidApprovalRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (SelfApprovalError, grpc.StatusCode.PERMISSION_DENIED),
    (NotAnApproverError, grpc.StatusCode.PERMISSION_DENIED),
    (ApprovalExpiredError, grpc.StatusCode.FAILED_PRECONDITION),
    (VerdictFinalError, grpc.StatusCode.FAILED_PRECONDITION),
    (ApprovalStoreError, grpc.StatusCode.UNAVAILABLE),
    (AuditError, grpc.StatusCode.UNAVAILABLE),
)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. `id` is None for the service token (a machine, no person)."""

    id: str | None
    groups: tuple[str, ...]
    via: str
    """`oidc`, `mtls` or `service-token`."""

    def subject(self) -> Subject:
        return Subject(id=self.id or "", groups=self.groups)


class Refusal(Exception):
    """A call answered with `code` and `message` (and the store's exception class, if any)."""

    def __init__(self, code: grpc.StatusCode, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.error_type = error_type


def _refusal(exc: Exception) -> Refusal:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            prefix = ("audit trail unavailable, refusing (fail closed): "
                      if isinstance(exc, AuditError) else "")
            kept = "" if isinstance(exc, ApprovalStoreError | AuditError) else type(exc).__name__
            return Refusal(code, prefix + str(exc), kept)
    return Refusal(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


# -- who is calling ---------------------------------------------------------------------------

def certificate_identity(pem: bytes) -> str:
    """The identity a client certificate names: first SAN e-mail, else SAN URI, else subject
    CN. `IdentityError` when it names none or is not meant for client authentication."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError(f"client certificate unreadable: {exc}") from exc
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise IdentityError("client certificate is not for client authentication "
                            "(extended key usage lacks clientAuth)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier):
            names = [n for n in san.get_values_for_type(kind) if n.strip()]
            if names:
                return str(names[0]).strip()
    common = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common and isinstance(common[0], str) and common[0].strip():
        return common[0].strip()
    raise IdentityError("client certificate names no identity (no SAN e-mail or URI, no CN)")


class Authenticator:
    """Finds the `Caller` of a gRPC call (see the module docstring for the order)."""

    def __init__(self, *, verifier: Any = None, token: Any = None, users: Any = None,
                 mutual_tls: bool = False) -> None:
        self.verifier = verifier
        self.token = token
        self.users = users
        self.mutual_tls = mutual_tls

    def methods(self) -> list[str]:
        out = ["oidc"] if self.verifier is not None else []
        if self.mutual_tls:
            out.append("mtls")
        if self.token is not None:
            out.append("service-token")
        return out

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        bearer = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if bearer:
            return self._bearer(str(bearer[0]))
        if self.mutual_tls:
            pems: Any = context.auth_context().get("x509_pem_cert") or []
            if pems:
                try:
                    name = certificate_identity(pems[0])
                except IdentityError as exc:
                    raise Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
                user = self.users.lookup(name) if self.users is not None else None
                return Caller(name, tuple(user.groups) if user is not None else (), "mtls")
        raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                      "no caller identity: send an OIDC ID token as 'authorization: Bearer "
                      "<token>' or connect with a client certificate (mutual TLS)")

    def _bearer(self, header: str) -> Caller:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                          "authorization metadata is not 'Bearer <token>'")
        if self.token is not None and self.token.check_header(header):
            return Caller(None, (), "service-token")
        if self.verifier is None:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                          "bearer token is not the service token, and ID tokens are not "
                          "accepted (no --oidc-jwks/--oidc-issuer/--oidc-audience)")
        try:
            subject = self.verifier.verify(token.strip())
        except IdentityError as exc:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"ID token refused: {exc}") from exc
        return Caller(subject.id, tuple(subject.groups), "oidc")


# -- the servicer -----------------------------------------------------------------------------

class ApprovalServicer:
    """The ApprovalService methods over one `ApprovalStore` and its audit trail."""

    def __init__(self, store: ApprovalStore, audit: AuditLog, authenticator: Authenticator, *,
                 max_waiters: int = 8, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.audit = audit
        self.authenticator = authenticator
        self._waiters = threading.BoundedSemaphore(max(1, max_waiters))
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- plumbing -----------------------------------------------------------------------------

    def _handle(self, method: str, request_type: type[Message],
                body: Body
                ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        """A raw-bytes handler: decode, authenticate, run `body`, record the access, answer."""
        reads = method in ("List", "Get", "Wait")

        def handler(raw: bytes, context: grpc.ServicerContext) -> bytes:
            details: dict[str, Any] = {"method": method, "peer": context.peer()}
            caller: Caller | None = None
            try:
                try:
                    request = request_type.FromString(raw)
                except DecodeError as exc:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"malformed {request_type.__name__}: {exc}") from exc
                caller = self.authenticator.authenticate(context)
                details["via"] = caller.via
                try:
                    answer = body(request, caller, details, context)
                except Refusal:
                    raise
                except (ApprovalError, AuditError) as exc:
                    raise _refusal(exc) from exc
            except Refusal as refusal:
                self._record(caller, details, refusal.code.name.lower(), str(refusal),
                             must=False)
                self._abort(context, refusal)
            self._record(caller, details, "ok", None, must=reads)
            return answer.SerializeToString()

        return handler

    def _record(self, caller: Caller | None, details: dict[str, Any], outcome: str,
                reason: str | None, *, must: bool) -> None:
        payload = {**details, "outcome": outcome}
        if reason is not None:
            payload["reason"] = reason
        if caller is not None:
            payload["caller_groups"] = sorted(caller.groups)
        try:
            self.audit.append("approval.accessed", payload,
                              subject=(caller.id or "service-token") if caller else None)
        except AuditError as exc:
            if must:
                raise Refusal(grpc.StatusCode.UNAVAILABLE,
                              f"audit trail unavailable, refusing (fail closed): {exc}"
                              ) from exc
            log.error("approval.accessed record not written (%s %s): %s",
                      details.get("method"), outcome, exc)

    @staticmethod
    def _abort(context: grpc.ServicerContext, refusal: Refusal) -> NoReturn:
        if refusal.error_type:
            context.set_trailing_metadata(((ERROR_TRAILER, refusal.error_type),))
        context.abort(refusal.code, str(refusal))

    # -- methods ------------------------------------------------------------------------------

    def _list(self, request: approval_pb2.ListApprovalsRequest, caller: Caller,
              details: dict[str, Any], context: grpc.ServicerContext
              ) -> approval_pb2.ListApprovalsResponse:
        status = None
        if request.status:
            if request.status not in PROTO_TO_STATUS:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown status value {request.status}")
            status = PROTO_TO_STATUS[request.status]
        details["status"] = status
        found = self.store.list(status)
        details["count"] = len(found)
        now = self._clock()
        return approval_pb2.ListApprovalsResponse(
            approvals=[approval_to_proto(r, now) for r in found])

    def _get(self, request: approval_pb2.GetApprovalRequest, caller: Caller,
             details: dict[str, Any], context: grpc.ServicerContext) -> approval_pb2.Approval:
        details["request_id"] = _request_id(request.id)
        return approval_to_proto(self.store.get(request.id), self._clock())

    def _verdict(self, verdict: str) -> Body:
        def run(request: approval_pb2.VerdictRequest, caller: Caller,
                details: dict[str, Any], context: grpc.ServicerContext
                ) -> approval_pb2.Approval:
            details["request_id"] = _request_id(request.id)
            if caller.id is None:
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              "the service token names no person and cannot decide; "
                              "use an OIDC ID token or a client certificate")
            expected = request.expected_identity.strip()
            if expected and not same_identity(expected, caller.id):
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"authenticated as {caller.id!r}, not {expected!r} "
                              f"(via {caller.via}); nothing decided")
            decide = self.store.approve if verdict == "approve" else self.store.deny
            decided = decide(request.id, caller.subject(), request.comment)
            return approval_to_proto(decided, self._clock())

        return run

    def _wait(self, request: approval_pb2.WaitRequest, caller: Caller,
              details: dict[str, Any], context: grpc.ServicerContext) -> approval_pb2.Approval:
        details["request_id"] = _request_id(request.id)
        timeout = (request.timeout.ToTimedelta().total_seconds()
                   if request.HasField("timeout") else 0.0)
        if timeout < 0:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "timeout must not be negative")
        timeout = min(timeout or MAX_WAIT_SECONDS, MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:  # answer before the caller's deadline, not after it
            timeout = max(0.0, min(timeout, remaining - 0.05))
        if not self._waiters.acquire(blocking=False):
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many callers waiting for verdicts on this server; retry "
                          "shortly or ask another replica")
        try:
            self.store.get(request.id)  # NOT_FOUND at once
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                status = self.store.wait(request.id, max(0.0, min(left, WAIT_SLICE_SECONDS)))
                if status != "pending" or left <= 0 or not context.is_active():
                    break
        finally:
            self._waiters.release()
        found = self.store.get(request.id)
        details["status"] = found.status_at(self._clock())
        return approval_to_proto(found, self._clock())

    def generic_handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "List": unary(self._handle("List", approval_pb2.ListApprovalsRequest, self._list)),
            "Get": unary(self._handle("Get", approval_pb2.GetApprovalRequest, self._get)),
            "Approve": unary(self._handle("Approve", approval_pb2.VerdictRequest,
                                          self._verdict("approve"))),
            "Deny": unary(self._handle("Deny", approval_pb2.VerdictRequest,
                                       self._verdict("deny"))),
            "Wait": unary(self._handle("Wait", approval_pb2.WaitRequest, self._wait)),
        })


def _request_id(value: str) -> str:
    if not value.strip():
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "request id is empty")
    return value


# -- the extension (ServiceConfig.extensions) ---------------------------------------------------

def load_verifier(jwks: str, issuer: str, audience: str) -> Any:
    """An `OidcVerifier` with its keys loaded now: an unreadable JWKS file stops the start
    (RuntimeError); an unreachable JWKS URL is retried on the first token."""
    from engine.identity.oidc import OidcVerifier

    remote = jwks.startswith(("https://", "http://"))
    try:
        verifier = OidcVerifier(issuer, audience, jwks_url=jwks if remote else None,
                                jwks_file=None if remote else jwks)
        verifier.refresh(force=True)
    except ValueError as exc:
        raise RuntimeError(f"OIDC verifier: {exc}") from exc
    except IdentityError as exc:
        if not remote:
            raise RuntimeError(str(exc)) from exc
        log.warning("%s; retrying on the first token", exc)
    return verifier


@dataclass(frozen=True)
class ApprovalServiceOptions:
    """Picklable configuration of the ApprovalService of `ordinance serve`."""

    audit_url: str
    """The audit trail and the approvals store (the same database)."""
    oidc_jwks: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    users_file: Path | None = None
    """Groups of identities named by client certificates."""
    max_waiters: int = DEFAULT_THREADS // 2
    """Concurrent `Wait` calls per process (each holds one of the gRPC handler threads)."""

    def check(self) -> None:
        """Raise ValueError for an inconsistent configuration (before anything starts)."""
        oidc = (self.oidc_jwks, self.oidc_issuer, self.oidc_audience)
        if any(oidc) and not all(oidc):
            raise ValueError("--oidc-jwks, --oidc-issuer and --oidc-audience go together")

    def start(self, runtime: Any, *, tls: Any = None, token: Any = None) -> ApprovalExtension:
        return ApprovalExtension(self, tls=tls, token=token)


class ApprovalExtension:
    """The running ApprovalService of one process."""

    def __init__(self, options: ApprovalServiceOptions, *, tls: Any = None,
                 token: Any = None) -> None:
        from engine.approvals import open_approval_store
        from engine.audit import open_audit_log

        options.check()
        self.options = options
        self._closers: list[Any] = []
        try:
            try:
                audit = open_audit_log(options.audit_url)
                self._closers.append(audit)
                store = open_approval_store(options.audit_url, audit=audit)
                self._closers.append(store)
            except (AuditError, ApprovalError) as exc:
                raise RuntimeError(f"approvals store: {exc}") from exc
            users = None
            if options.users_file is not None:
                from engine.identity.users import load_users

                try:
                    users = load_users(options.users_file)
                except ValueError as exc:
                    raise RuntimeError(str(exc)) from exc
            verifier = (load_verifier(options.oidc_jwks, str(options.oidc_issuer),
                                      str(options.oidc_audience))
                        if options.oidc_jwks else None)
        except BaseException:
            self.stop()
            raise
        mutual = bool(tls is not None and tls.mutual)
        self.authenticator = Authenticator(verifier=verifier, token=token, users=users,
                                           mutual_tls=mutual)
        if verifier is None and not mutual:
            log.warning("approval service: no way to identify approvers (no --oidc-jwks, no "
                        "--tls-client-ca); verdicts can only be given with `ordinance "
                        "approvals … --audit URL --users FILE` on the store")
        if users is not None and not mutual:
            log.warning("approval service: --users names groups of certificate identities, "
                        "but there is no mutual TLS (--tls-client-ca)")
        self.servicer = ApprovalServicer(store, audit, self.authenticator,
                                         max_waiters=options.max_waiters)

    @property
    def grpc_handlers(self) -> list[tuple[str, Any]]:
        return [(SERVICE_NAME, self.servicer.generic_handler())]

    @property
    def grpc_self_authenticated(self) -> tuple[str, ...]:
        """Services that authenticate every call themselves (past the service-token check)."""
        return (SERVICE_NAME,)

    @property
    def http_routes(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"approvals": {"service": SERVICE_NAME,
                              "identities": self.authenticator.methods()}}

    def stop(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer.close()
            except Exception:
                log.exception("closing %r", closer)
        self._closers = []
