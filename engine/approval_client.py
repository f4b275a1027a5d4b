"""A client of `ordinance.v1.ApprovalService`, and the conversions of an approval to and from
its protobuf form.

`ApprovalClient(target, bearer=…, tls_ca=…, tls_cert=…, tls_key=…)` offers what a local
`engine.approvals.ApprovalStore` offers for reading and deciding (`list`, `get`, `approve`,
`deny`) and `wait(id, timeout)`, which an adapter uses to block until a verdict without
polling in a loop of its own; answers are `engine.approvals.ApprovalRequest`s, so callers treat
a local store and a remote service alike. The service's refusals come back as the store's own
exception classes (the server names the class in the `ordinance-error` trailer), so
`SelfApprovalError` stays a `SelfApprovalError` across the wire; a caller without a usable
identity gets `ApprovalUnauthenticated`, an unreachable or failing service
`ApprovalServiceUnavailable` (both `ApprovalStoreError`s: the service cannot be used).

Pure translation and transport; it must not apply approval rules itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from engine.api import approval_pb2
from engine.approvals import (
    ApprovalError,
    ApprovalExpiredError,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStoreError,
    ApprovalWithdrawnError,
    InvalidApprovalRequest,
    NotAnApproverError,
    SelfApprovalError,
    Status,
    VerdictFinalError,
)
from engine.service.convert import dict_to_struct, struct_to_dict

SERVICE_NAME = approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name
ERROR_TRAILER = "ordinance-error"
"""Trailing metadata naming the `engine.approvals` exception class of a refusal."""

MAX_WAIT_SECONDS = 60.0
"""The longest one `Wait` call blocks on the server; `ApprovalClient.wait` calls again."""

STATUS_TO_PROTO: dict[str, approval_pb2.ApprovalStatus] = {
    "pending": approval_pb2.APPROVAL_STATUS_PENDING,
    "approved": approval_pb2.APPROVAL_STATUS_APPROVED,
    "denied": approval_pb2.APPROVAL_STATUS_DENIED,
    "expired": approval_pb2.APPROVAL_STATUS_EXPIRED,
    "consumed": approval_pb2.APPROVAL_STATUS_CONSUMED,
    "withdrawn": approval_pb2.APPROVAL_STATUS_WITHDRAWN,
}
PROTO_TO_STATUS: dict[int, Status] = {
    approval_pb2.APPROVAL_STATUS_PENDING: "pending",
    approval_pb2.APPROVAL_STATUS_APPROVED: "approved",
    approval_pb2.APPROVAL_STATUS_DENIED: "denied",
    approval_pb2.APPROVAL_STATUS_EXPIRED: "expired",
    approval_pb2.APPROVAL_STATUS_CONSUMED: "consumed",
    approval_pb2.APPROVAL_STATUS_WITHDRAWN: "withdrawn",
}


class ApprovalUnauthenticated(ApprovalStoreError):
    """The service found no usable caller identity (UNAUTHENTICATED)."""


class ApprovalServiceUnavailable(ApprovalStoreError):
    """The service cannot be reached or cannot use its store or audit trail."""


_REFUSALS: dict[str, type[ApprovalError]] = {cls.__name__: cls for cls in (
    ApprovalNotFound, InvalidApprovalRequest, SelfApprovalError, NotAnApproverError,
    ApprovalExpiredError, VerdictFinalError, ApprovalWithdrawnError)}


# -- conversions ------------------------------------------------------------------------------

def _timestamp(ts: datetime | None, into: timestamp_pb2.Timestamp) -> None:
    if ts is not None:
        into.FromDatetime(ts.astimezone(UTC))


def _datetime(msg: Any, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    return getattr(msg, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def approval_to_proto(req: ApprovalRequest, now: datetime) -> approval_pb2.Approval:
    """The protobuf form of `req`, its status as of `now`."""
    msg = approval_pb2.Approval(
        id=req.id, requester=req.requester_id, requester_groups=list(req.requester_groups),
        command_sha256=req.command_sha256, command=req.command_preview,
        reasons=list(req.reasons), approver_groups=list(req.approver_groups),
        status=STATUS_TO_PROTO[req.status_at(now)], decided_by=req.decided_by or "",
        comment=req.comment or "", uses=req.uses, session_id=req.session_id or "")
    dict_to_struct(req.resource, msg.resource)
    _timestamp(req.created_at, msg.created_at)
    _timestamp(req.expires_at, msg.expires_at)
    _timestamp(req.decided_at, msg.decided_at)
    _timestamp(req.last_used_at, msg.last_used_at)
    if req.window is not None:
        msg.window.FromTimedelta(req.window)
    return msg


def approval_from_proto(msg: approval_pb2.Approval) -> ApprovalRequest:
    """An `ApprovalRequest` whose `stored_status` is the status the service reported."""
    created = _datetime(msg, "created_at")
    expires = _datetime(msg, "expires_at")
    if created is None or expires is None:
        raise ApprovalServiceUnavailable(f"approval {msg.id!r} from the service lacks its "
                                         "creation or expiry time")
    return ApprovalRequest(
        id=msg.id, requester_id=msg.requester, requester_groups=tuple(msg.requester_groups),
        resource=struct_to_dict(msg.resource), command_sha256=msg.command_sha256,
        command_preview=msg.command, reasons=tuple(msg.reasons),
        approver_groups=tuple(msg.approver_groups),
        stored_status=PROTO_TO_STATUS.get(msg.status, "pending"), created_at=created,
        expires_at=expires,
        window=msg.window.ToTimedelta() if msg.HasField("window") else None,
        session_id=msg.session_id or None, decided_by=msg.decided_by or None,
        decided_at=_datetime(msg, "decided_at"), comment=msg.comment or None, uses=msg.uses,
        last_used_at=_datetime(msg, "last_used_at"))


# -- the client -------------------------------------------------------------------------------

def _read_secret(path: str | Path, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApprovalServiceUnavailable(f"cannot read {what} {path}: {exc}") from exc
    if not text:
        raise ApprovalServiceUnavailable(f"{what} {path} is empty")
    return text


class ApprovalClient:
    """Calls the ApprovalService at `target` (`host:port`).

    `bearer` goes out as `authorization: Bearer …` (an OIDC ID token, or the service token,
    which may read and wait but not decide). TLS is on when any of `tls_ca` (the server's CA;
    default: the system's roots), `tls_cert`/`tls_key` (a client certificate for mutual TLS)
    is given. `timeout` bounds each call except `wait`.
    """

    def __init__(self, target: str, *, bearer: str | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, timeout: float = 10.0) -> None:
        import grpc

        from engine.api import approval_pb2_grpc

        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a client certificate needs both its certificate and its key")
        self.target = target
        self.timeout = timeout
        self._metadata: Sequence[tuple[str, str]] = (
            (("authorization", f"Bearer {bearer}"),) if bearer else ())
        if tls_ca or tls_cert:
            def read(path: str | Path | None) -> bytes | None:
                return Path(path).read_bytes() if path else None

            try:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=read(tls_ca), private_key=read(tls_key),
                    certificate_chain=read(tls_cert))
            except OSError as exc:
                raise ApprovalServiceUnavailable(f"cannot read TLS material: {exc}") from exc
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = approval_pb2_grpc.ApprovalServiceStub(self._channel)

    @classmethod
    def from_files(cls, target: str, *, id_token_file: str | Path | None = None,
                   token_file: str | Path | None = None, **kwargs: Any) -> ApprovalClient:
        """A client whose bearer comes from an ID token file or a service token file."""
        if id_token_file and token_file:
            raise ValueError("give an ID token or the service token, not both")
        bearer = None
        if id_token_file:
            bearer = _read_secret(id_token_file, "ID token file")
        elif token_file:
            bearer = _read_secret(token_file, "token file")
        return cls(target, bearer=bearer, **kwargs)

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        import grpc

        rpc = getattr(self._stub, method)
        try:
            return rpc(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error_from_rpc(exc, self.target) from None

    def list(self, status: Status | None = None) -> list[ApprovalRequest]:
        request = approval_pb2.ListApprovalsRequest(
            status=STATUS_TO_PROTO[status] if status else approval_pb2.APPROVAL_STATUS_UNSPECIFIED)
        answer = self._call("List", request)
        return [approval_from_proto(a) for a in answer.approvals]

    def get(self, request_id: str) -> ApprovalRequest:
        return approval_from_proto(self._call("Get", approval_pb2.GetApprovalRequest(
            id=request_id)))

    def approve(self, request_id: str, comment: str = "", *,
                expected_identity: str = "") -> ApprovalRequest:
        return approval_from_proto(self._call("Approve", approval_pb2.VerdictRequest(
            id=request_id, comment=comment, expected_identity=expected_identity)))

    def deny(self, request_id: str, comment: str = "", *,
             expected_identity: str = "") -> ApprovalRequest:
        return approval_from_proto(self._call("Deny", approval_pb2.VerdictRequest(
            id=request_id, comment=comment, expected_identity=expected_identity)))

    def wait(self, request_id: str, timeout: float) -> ApprovalRequest:
        """The request once it is no longer pending, or still pending after `timeout` s.
        Each call blocks on the server (at most `MAX_WAIT_SECONDS`); nothing spins here."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = min(deadline - time.monotonic(), MAX_WAIT_SECONDS)
            request = approval_pb2.WaitRequest(id=request_id)
            request.timeout.FromTimedelta(timedelta(seconds=max(remaining, 0.001)))
            found = approval_from_proto(self._call("Wait", request,
                                                   timeout=max(remaining, 0.0) + self.timeout))
            if found.stored_status != "pending" or deadline - time.monotonic() <= 0:
                return found

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ApprovalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_from_rpc(exc: Any, target: str) -> ApprovalError:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    message = exc.details() if hasattr(exc, "details") else str(exc)
    trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    refusal = _REFUSALS.get(str(trailers.get(ERROR_TRAILER, "")))
    if refusal is not None:
        return refusal(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApprovalUnauthenticated(f"approval service {target}: not authenticated: "
                                       f"{message}")
    if code == grpc.StatusCode.NOT_FOUND:
        return ApprovalNotFound(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidApprovalRequest(message)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION):
        return ApprovalError(message)
    name = code.name if code is not None else "error"
    return ApprovalServiceUnavailable(f"approval service {target}: {name}: {message}")
