"""`DecisionClient`: how enforcement points ask for a Decision, in-process or over gRPC.

Both implementations answer `decide(input_doc) -> (decision_id, Decision)` and its asyncio
twin `adecide` (for the asyncio proxies), so an adapter does not care where the engine runs.

- `InProcessDecisionClient(engine)`: calls `Engine.decide` directly; optionally records into
  a `DecisionLog`.
- `GrpcDecisionClient(target, ...)`: calls `ordinance.v1.DecisionService/Decide` with a
  per-call deadline, transparent retries on UNAVAILABLE (gRPC retry policy, bounded by the
  deadline), HTTP/2 keep-alive, optional TLS/mTLS and bearer token.

Fail closed: neither raises for a failed decision. An RPC error (service down, deadline
exceeded, unauthenticated, ...) or an input that cannot be sent becomes a deny whose reason
says why, with a locally made decision id so the adapter can still correlate its audit record.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import grpc

from engine.api import decision_pb2, decision_pb2_grpc
from engine.decision import Decision, Reason
from engine.service.convert import InputError, decision_from_proto, dict_to_struct
from engine.service.decision_log import DecisionLog, new_decision_id

CLIENT_POLICY = "ordinance.client"
SERVICE_NAME = "ordinance.v1.DecisionService"


@runtime_checkable
class DecisionClient(Protocol):
    def decide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        """One Decision for one input document; never raises for a failed decision."""
        ...

    async def adecide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        """`decide` for asyncio callers."""
        ...

    def close(self) -> None: ...


def client_deny(message: str) -> tuple[str, Decision]:
    """A deny made by the client because it could not get a decision."""
    return new_decision_id(), Decision(
        effect="deny", reasons=(Reason(policy=CLIENT_POLICY, message=message),))


class InProcessDecisionClient:
    """The engine in this process. `adecide` runs the (fast, cached) evaluation inline."""

    def __init__(self, engine: Any, *, decision_log: DecisionLog | None = None) -> None:
        self.engine = engine
        self.decision_log = decision_log

    def decide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        decision_id = new_decision_id()
        decision: Decision = self.engine.decide(input_doc)
        if self.decision_log is not None and not self.decision_log.submit({
                "decision_id": decision_id, "timestamp": time.time(), "kind": "decide",
                "transport": "in-process", "input": input_doc, "decision": decision}):
            return decision_id, Decision(
                effect="deny", reasons=(*decision.reasons, Reason(
                    policy=CLIENT_POLICY, message="decision log unavailable; denying")),
                policy_revision=decision.policy_revision, command=decision.command)
        return decision_id, decision

    async def adecide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        return self.decide(input_doc)

    def reuse(self) -> tuple[str, bool] | None:
        """Whether an adapter may reuse this client's decisions instead of asking again:
        `(revision, literal_insensitive)` of the active policy set when its decisions are a
        pure function of the input (no time, random or network builtin), the engine caches
        (so reusing one is what asking would give), and no decision log wants every decision;
        else None. `literal_insensitive`: SQL that differs only by literals gets the same
        decision (`PolicySet.literal_insensitive`)."""
        policy_set = self.engine.policy_set
        if (self.decision_log is not None or not policy_set.cacheable
                or self.engine.cache_size <= 0):
            return None
        return policy_set.revision, policy_set.literal_insensitive

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ClientTLS:
    """Trust `ca` for the server; present `cert`/`key` for mTLS; `server_name` overrides SNI."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


class GrpcDecisionClient:
    """DecisionService over gRPC. Thread-safe; one HTTP/2 connection shared by all calls."""

    def __init__(self, target: str, *, deadline: float = 2.0, retries: int = 3,
                 tls: ClientTLS | None = None, token: str | None = None,
                 keepalive_time_ms: int = 30_000, keepalive_timeout_ms: int = 10_000,
                 max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.target = target
        self.deadline = deadline
        self.tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        retry = {
            "maxAttempts": max(2, min(5, retries + 1)),
            "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        service_config = {"methodConfig": [
            {"name": [{"service": SERVICE_NAME}], "retryPolicy": retry}]}
        self._options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1 if retries > 0 else 0),
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.keepalive_time_ms", keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls is not None and tls.server_name:
            self._options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.channel = self._channel(grpc)
        self._stub = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self._aio: tuple[asyncio.AbstractEventLoop, Any, Any] | None = None

    def _channel(self, module: Any) -> Any:
        if self.tls is not None:
            return module.secure_channel(self.target, self.tls.credentials(), self._options)
        return module.insecure_channel(self.target, self._options)

    @staticmethod
    def _request(input_doc: dict[str, Any]) -> decision_pb2.DecideRequest:
        request = decision_pb2.DecideRequest()
        dict_to_struct(input_doc, into=request.input)
        return request

    @staticmethod
    def _failed(exc: grpc.RpcError) -> tuple[str, Decision]:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return client_deny(f"decision service error ({name}): {details}; denying (fail closed)")

    def decide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        try:
            request = self._request(input_doc)
        except InputError as exc:
            return client_deny(f"input not sendable: {exc}")
        try:
            response = self._stub.Decide(request, timeout=self.deadline,
                                         metadata=self._metadata)
        except grpc.RpcError as exc:
            return self._failed(exc)
        return decision_from_proto(response.decision)

    def _aio_stub(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            channel = self._channel(grpc.aio)
            self._aio = (loop, channel, decision_pb2_grpc.DecisionServiceStub(channel))
        return self._aio[2]

    async def adecide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        try:
            request = self._request(input_doc)
        except InputError as exc:
            return client_deny(f"input not sendable: {exc}")
        try:
            response = await self._aio_stub().Decide(request, timeout=self.deadline,
                                                     metadata=self._metadata)
        except grpc.RpcError as exc:
            return self._failed(exc)
        return decision_from_proto(response.decision)

    async def aclose(self) -> None:
        if self._aio is not None:
            await self._aio[1].close()
            self._aio = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcDecisionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
