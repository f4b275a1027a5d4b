"""`ordinance.v1.ApprovalService` on a real `ordinance serve --audit …`, called by real clients.

Everything is real: `ordinance serve` runs as a subprocess on SQLite (and once on PostgreSQL),
ID tokens are signed with a key made here and checked against a local JWKS file, client
certificates are issued by a CA made here. Requests are filed straight on the store, as an
adapter does, and decided over gRPC. No assertion depends on timing.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

from engine.api import approval_pb2, approval_pb2_grpc, decision_pb2, decision_pb2_grpc
from engine.approval_client import ERROR_TRAILER, ApprovalClient
from engine.approvals import (
    ApprovalWithdrawnError,
    NotAnApproverError,
    SelfApprovalError,
    open_approval_store,
)
from engine.audit import open_audit_log
from engine.cli import main
from engine.identity import IdentityError, Subject
from engine.service.approvals import certificate_identity
from tests.service.conftest import ALLOW_DENY_REGO, ServeProcess, start_serve

ISSUER = "https://idp.example.com"
AUDIENCE = "ordinance-approvals"
SERVICE_TOKEN = "service-token-0123456789"
USERS = """\
users:
  - {name: dana@example.com, password: unused-here, groups: [dba-leads]}
  - {name: eve, password: unused-here, groups: [dev]}
"""
PENDING = approval_pb2.APPROVAL_STATUS_PENDING
APPROVED = approval_pb2.APPROVAL_STATUS_APPROVED
DENIED = approval_pb2.APPROVAL_STATUS_DENIED


# -- identities: an OIDC issuer and a client CA made here --------------------------------------

@dataclass
class Issuer:
    key: Any
    jwks: Path
    stranger_key: Any

    def token(self, email: str, groups: list[str], *, key: Any = None,
              lifetime: int = 600) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": email, "email": email,
                  "email_verified": True, "groups": groups, "iat": now,
                  "exp": now + lifetime}
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig",
           "alg": "ES256"}
    path = tmp_path_factory.mktemp("oidc") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Issuer(key, path, ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Pki:
    dir: Path
    ca: Path
    ca_key: Any
    ca_cert: Any

    def issue(self, name: str, *, email: str | None = None, server: bool = False,
              usage: Any = None) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage or (
                       ExtendedKeyUsageOID.SERVER_AUTH if server
                       else ExtendedKeyUsageOID.CLIENT_AUTH)]), False))
        if server:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        elif email:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(email)]), False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "approvals test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    ca = out / "ca.pem"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(out, ca, key, cert)


# -- servers --------------------------------------------------------------------------------------

@dataclass
class Deployment:
    server: ServeProcess
    url: str
    dir: Path

    @property
    def target(self) -> str:
        return self.server.grpc_target

    def file_request(self, command: str = "DROP TABLE cards", requester: str = "alice@example.com"
                     ) -> str:
        """A review request filed on the store, as an adapter does."""
        with open_audit_log(self.url) as audit, \
                open_approval_store(self.url, audit=audit) as store:
            return store.request(Subject(id=requester, groups=("dev",)), {"name": "payments"},
                                 command, ["DDL needs review"], ["dba-leads"],
                                 dt.timedelta(hours=1)).id

    def records(self, kind: str) -> list[Any]:
        with open_audit_log(self.url) as audit:
            return [r for r in audit.iter_records() if r.kind == kind]


def _deploy(directory: Path, url: str, issuer: Issuer, *extra: str) -> Iterator[Deployment]:
    policies = directory / "policies"
    policies.mkdir()
    (policies / "test.rego").write_text(ALLOW_DENY_REGO)
    (directory / "token").write_text(SERVICE_TOKEN + "\n")
    (directory / "users.yaml").write_text(USERS)
    server = start_serve(["--policies", str(policies), "--grpc", "127.0.0.1:0", "--http", "off",
                          "--audit", url, "--oidc-jwks", str(issuer.jwks),
                          "--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE,
                          "--reload-interval", "30", *extra], cwd=directory)
    try:
        yield Deployment(server, url, directory)
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Deployment]:
    """No TLS; the service token is required for everything but the ApprovalService."""
    directory = tmp_path_factory.mktemp("plain")
    yield from _deploy(directory, f"sqlite:///{directory}/audit.db", issuer,
                       "--token-file", str(directory / "token"))


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer, pki: Pki
         ) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("mtls")
    cert, key = pki.issue("server", server=True)
    yield from _deploy(directory, f"sqlite:///{directory}/audit.db", issuer,
                       "--tls-cert", str(cert), "--tls-key", str(key),
                       "--tls-client-ca", str(pki.ca), "--users", str(directory / "users.yaml"))


def stub(target: str) -> tuple[grpc.Channel, approval_pb2_grpc.ApprovalServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, approval_pb2_grpc.ApprovalServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def refused(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kwargs)
    return info.value


# -- the JWT path ---------------------------------------------------------------------------------

def test_oidc_approver_approves_and_every_call_is_audited(plain: Deployment,
                                                          issuer: Issuer) -> None:
    rid = plain.file_request()
    channel, approvals = stub(plain.target)
    with channel:
        dana = bearer(issuer.token("dana@example.com", ["dba-leads"]))
        listed = approvals.List(approval_pb2.ListApprovalsRequest(status=PENDING), timeout=10,
                                metadata=dana)
        assert rid in [a.id for a in listed.approvals]
        answer = approvals.Approve(approval_pb2.VerdictRequest(id=rid, comment="CHG-7"),
                                   timeout=10, metadata=dana)
    assert answer.status == APPROVED and answer.decided_by == "dana@example.com"
    assert answer.comment == "CHG-7" and answer.requester == "alice@example.com"
    assert answer.resource["name"] == "payments" and answer.HasField("decided_at")
    approved = [r for r in plain.records("approval.approved") if r.payload["request_id"] == rid]
    assert [r.subject for r in approved] == ["dana@example.com"]
    accessed = [r.payload for r in plain.records("approval.accessed")
                if r.subject == "dana@example.com"]
    assert {"method": "Approve", "via": "oidc", "outcome": "ok", "request_id": rid} \
        .items() <= accessed[-1].items()
    assert any(p["method"] == "List" and p["status"] == "pending" for p in accessed)
    assert main(["audit", "verify", "--audit", plain.url]) == 0


def test_self_approval_and_wrong_group_are_refused(plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request()
    channel, approvals = stub(plain.target)
    with channel:
        alice = bearer(issuer.token("alice@example.com", ["dba-leads"]))
        err = refused(approvals.Approve, approval_pb2.VerdictRequest(id=rid), metadata=alice)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot decide it (separation of duties)" in err.details()
        assert (ERROR_TRAILER, "SelfApprovalError") in tuple(err.trailing_metadata())
        eve = bearer(issuer.token("eve@example.com", ["dev"]))
        err = refused(approvals.Deny, approval_pb2.VerdictRequest(id=rid), metadata=eve)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "eve@example.com is not in an approver group" in err.details()
        assert "dba-leads" in err.details()
        dana = bearer(issuer.token("dana@example.com", ["dba-leads"]))
        err = refused(approvals.Approve, approval_pb2.VerdictRequest(
            id=rid, expected_identity="someone@example.com"), metadata=dana)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "authenticated as 'dana@example.com', not 'someone@example.com'" in err.details()
        still = approvals.Get(approval_pb2.GetApprovalRequest(id=rid), timeout=10,
                              metadata=dana)
        assert still.status == PENDING
        assert approvals.Deny(approval_pb2.VerdictRequest(id=rid, comment="no"), timeout=10,
                              metadata=dana).status == DENIED
        err = refused(approvals.Approve, approval_pb2.VerdictRequest(id=rid), metadata=dana)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already denied by dana@example.com; a verdict is final" in err.details()
        err = refused(approvals.Get, approval_pb2.GetApprovalRequest(id="01NOSUCH"),
                      metadata=dana)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "no approval request '01NOSUCH'" in err.details()
    refusals = [r.payload for r in plain.records("approval.refused")
                if r.payload["request_id"] == rid]
    assert [p["refusal"] for p in refusals] == ["SelfApprovalError", "NotAnApproverError",
                                                "VerdictFinalError"]


def test_unauthenticated_callers_are_refused(plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request()
    channel, approvals = stub(plain.target)
    cases = {
        "no credentials": ((), "no caller identity"),
        "foreign key": (bearer(issuer.token("dana@example.com", ["dba-leads"],
                                            key=issuer.stranger_key)),
                        "ID token refused: token signature does not verify"),
        "expired": (bearer(issuer.token("dana@example.com", ["dba-leads"], lifetime=-3600)),
                    "ID token refused: token expired"),
        "not bearer": ((("authorization", "Basic ZGFuYTp4"),), "not 'Bearer <token>'"),
    }
    with channel:
        for name, (metadata, message) in cases.items():
            for call, request in ((approvals.Approve, approval_pb2.VerdictRequest(id=rid)),
                                  (approvals.List, approval_pb2.ListApprovalsRequest())):
                err = refused(call, request, metadata=metadata)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, name
                assert message in err.details(), name
        still = approvals.Get(approval_pb2.GetApprovalRequest(id=rid), timeout=10,
                              metadata=bearer(SERVICE_TOKEN))
    assert still.status == PENDING
    refused_records = [r for r in plain.records("approval.accessed")
                       if r.payload["outcome"] == "unauthenticated"]
    assert len(refused_records) >= 2 * len(cases)
    assert all(r.subject is None for r in refused_records)


def test_service_token_reads_but_never_decides(plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request()
    channel, approvals = stub(plain.target)
    with channel:
        found = approvals.Get(approval_pb2.GetApprovalRequest(id=rid), timeout=10,
                              metadata=bearer(SERVICE_TOKEN))
        assert found.id == rid
        err = refused(approvals.Approve, approval_pb2.VerdictRequest(id=rid),
                      metadata=bearer(SERVICE_TOKEN))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "service token names no person" in err.details()
        # The exemption is the ApprovalService's alone: an ID token opens nothing else.
        decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
        err = refused(decide, decision_pb2.DecideRequest(),
                      metadata=bearer(issuer.token("dana@example.com", ["dba-leads"])))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_wait_returns_when_another_client_approves(plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request()
    channel, approvals = stub(plain.target)
    with channel:
        short = approval_pb2.WaitRequest(id=rid)
        short.timeout.FromTimedelta(dt.timedelta(milliseconds=200))
        assert approvals.Wait(short, timeout=10, metadata=bearer(SERVICE_TOKEN)).status == \
            PENDING
        request = approval_pb2.WaitRequest(id=rid)
        request.timeout.FromTimedelta(dt.timedelta(seconds=30))
        waiting = approvals.Wait.future(request, timeout=40, metadata=bearer(SERVICE_TOKEN))
        with ApprovalClient(plain.target, bearer=SERVICE_TOKEN) as adapter:
            result: list[Any] = []
            waiter = threading.Thread(target=lambda: result.append(adapter.wait(rid, 30)))
            waiter.start()
            with ApprovalClient(plain.target,
                                bearer=issuer.token("dana@example.com", ["dba-leads"])) as dana:
                decided = dana.approve(rid, "go ahead")
            waiter.join(40)
        assert decided.stored_status == "approved"
        answer = waiting.result(timeout=40)
    assert answer.status == APPROVED and answer.decided_by == "dana@example.com"
    assert result and result[0].stored_status == "approved" and result[0].comment == "go ahead"
    waits = [r.payload for r in plain.records("approval.accessed")
             if r.payload["method"] == "Wait" and r.payload.get("request_id") == rid]
    assert sorted(p["status"] for p in waits) == ["approved", "approved", "pending"]


def test_client_keeps_the_store_exceptions(plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request(requester="dana@example.com")
    with ApprovalClient(plain.target,
                        bearer=issuer.token("dana@example.com", ["dba-leads"])) as dana, \
            pytest.raises(SelfApprovalError, match="separation of duties"):
        dana.approve(rid)


def test_a_withdrawn_request_is_listed_and_refused_through_the_service(
        plain: Deployment, issuer: Issuer) -> None:
    rid = plain.file_request(command="SELECT * FROM cards")
    with open_audit_log(plain.url) as audit, \
            open_approval_store(plain.url, audit=audit) as store:
        store.withdraw(rid, "alice@example.com", "the client cancelled the statement")
    with ApprovalClient(plain.target,
                        bearer=issuer.token("dana@example.com", ["dba-leads"])) as dana:
        assert rid in [r.id for r in dana.list("withdrawn")]
        assert dana.get(rid).stored_status == "withdrawn"
        with pytest.raises(ApprovalWithdrawnError, match="nobody waits for a verdict"):
            dana.approve(rid)


# -- the mTLS path --------------------------------------------------------------------------------

def test_mtls_identified_approver(mtls: Deployment, pki: Pki) -> None:
    rid = mtls.file_request()
    dana_cert, dana_key = pki.issue("dana-laptop", email="dana@example.com")
    eve_cert, eve_key = pki.issue("eve")
    nobody_cert, nobody_key = pki.issue("nobody")
    with ApprovalClient(mtls.target, tls_ca=pki.ca, tls_cert=eve_cert, tls_key=eve_key) as eve:
        with pytest.raises(NotAnApproverError, match="eve is not in an approver group"):
            eve.approve(rid)
        assert [r.id for r in eve.list("pending")] == [rid]
    with ApprovalClient(mtls.target, tls_ca=pki.ca, tls_cert=nobody_cert,
                        tls_key=nobody_key) as nobody, \
            pytest.raises(NotAnApproverError, match="nobody is not in an approver group"):
        nobody.deny(rid)
    with ApprovalClient(mtls.target, tls_ca=pki.ca, tls_cert=dana_cert,
                        tls_key=dana_key) as dana:
        decided = dana.approve(rid, "mTLS", expected_identity="dana@example.com")
    assert decided.stored_status == "approved" and decided.decided_by == "dana@example.com"
    accessed = mtls.records("approval.accessed")
    assert accessed[-1].subject == "dana@example.com"
    assert accessed[-1].payload["via"] == "mtls"
    assert accessed[-1].payload["caller_groups"] == ["dba-leads"]


def test_certificate_identity_order(pki: Pki) -> None:
    cert, _ = pki.issue("dana-laptop", email="dana@example.com")
    assert certificate_identity(cert.read_bytes()) == "dana@example.com"
    cert, _ = pki.issue("eve")
    assert certificate_identity(cert.read_bytes()) == "eve"
    cert, _ = pki.issue("a-server", server=True)
    with pytest.raises(IdentityError, match="lacks clientAuth"):
        certificate_identity(cert.read_bytes())


# -- the command line against the running service -------------------------------------------------

def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["approvals", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_server_path(plain: Deployment, mtls: Deployment, issuer: Issuer, pki: Pki,
                         tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDINANCE_AUDIT_URL", raising=False)
    rid = plain.file_request(command="ALTER TABLE cards ADD note text")
    token, dana, eve = (tmp_path / n for n in ("token", "dana.jwt", "eve.jwt"))
    token.write_text(SERVICE_TOKEN)
    dana.write_text(issuer.token("dana@example.com", ["dba-leads"]))
    eve.write_text(issuer.token("eve@example.com", ["dev"]))
    server = ("--server", plain.target)

    code, out, _ = cli(capsys, "list", *server, "--token-file", str(token), "--status",
                       "pending")
    assert code == 0 and out.startswith("ID") and rid in out and "ALTER TABLE cards" in out
    code, out, _ = cli(capsys, "show", rid, *server, "--token-file", str(token), "--json")
    assert code == 0 and json.loads(out)["status"] == "pending"
    code, _, err = cli(capsys, "approve", rid, *server, "--id-token", str(eve))
    assert code == 1 and "not in an approver group" in err
    code, _, err = cli(capsys, "approve", rid, *server)
    assert code == 2 and "not authenticated: no caller identity" in err
    code, _, err = cli(capsys, "approve", rid, *server, "--id-token", str(dana), "--users",
                       str(plain.dir / "users.yaml"))
    assert code == 2 and "--users is for local use" in err
    code, out, _ = cli(capsys, "approve", rid, *server, "--id-token", str(dana), "--as",
                       "dana@example.com", "--comment", "CHG-9")
    assert code == 0 and "approved" in out and "CHG-9" in out and "dana@example.com" in out
    code, out, _ = cli(capsys, "show", rid, "--audit", plain.url, "--json")  # local mode
    assert code == 0 and json.loads(out)["decided_by"] == "dana@example.com"

    rid = mtls.file_request()
    dana_cert, dana_key = pki.issue("dana-cli", email="dana@example.com")
    code, out, _ = cli(capsys, "deny", rid, "--server", mtls.target, "--tls-ca", str(pki.ca),
                       "--tls-cert", str(dana_cert), "--tls-key", str(dana_key),
                       "--comment", "not today", "--json")
    assert code == 0 and json.loads(out)["status"] == "denied"


# -- PostgreSQL -----------------------------------------------------------------------------------

@pytest.mark.postgres
def test_on_postgresql(pg_database: str, tmp_path: Path, issuer: Issuer) -> None:
    from tests.audit.conftest import conninfo_to_url

    url = conninfo_to_url(pg_database)
    deployment = _deploy(tmp_path, url, issuer)
    plain_pg = next(deployment)
    try:
        rid = plain_pg.file_request()
        with ApprovalClient(plain_pg.target, bearer=issuer.token("ops@example.com",
                                                                 ["ops"])) as watcher:
            result: list[Any] = []
            waiter = threading.Thread(target=lambda: result.append(watcher.wait(rid, 30)))
            waiter.start()
            with ApprovalClient(plain_pg.target,
                                bearer=issuer.token("dana@example.com", ["dba-leads"])) as dana:
                with ApprovalClient(plain_pg.target, bearer=issuer.token(
                        "alice@example.com", ["dba-leads"])) as alice, \
                        pytest.raises(SelfApprovalError):
                    alice.approve(rid)
                dana.approve(rid, "on PostgreSQL")
            waiter.join(40)
        assert result and result[0].stored_status == "approved"
        assert [r.subject for r in plain_pg.records("approval.approved")] == ["dana@example.com"]
        assert main(["audit", "verify", "--audit", url]) == 0
    finally:
        deployment.close()


def test_waiters_are_bounded_per_process(policy_dir: Path, tmp_path: Path,
                                         service_factory: Any) -> None:
    from engine.service.approvals import ApprovalServiceOptions

    url = f"sqlite:///{tmp_path}/audit.db"
    (tmp_path / "token").write_text(SERVICE_TOKEN)
    service = service_factory(policy_dir, audit_url=url, token_file=tmp_path / "token",
                              extensions=(ApprovalServiceOptions(audit_url=url, max_waiters=1),))
    rid = Deployment(None, url, tmp_path).file_request()  # type: ignore[arg-type]
    servicer = service.extensions[0].servicer
    channel, approvals = stub(f"127.0.0.1:{service.grpc_port}")
    request = approval_pb2.WaitRequest(id=rid)
    request.timeout.FromTimedelta(dt.timedelta(milliseconds=10))
    with channel:
        assert servicer._waiters.acquire(blocking=False)  # the one waiter slot is taken
        try:
            err = refused(approvals.Wait, request, metadata=bearer(SERVICE_TOKEN))
        finally:
            servicer._waiters.release()
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert approvals.Wait(request, timeout=10,
                              metadata=bearer(SERVICE_TOKEN)).status == PENDING
