"""Fixtures for the decision-service tests: a policy dir, in-process services, certificates.

Everything is real: real gRPC and HTTP servers on ephemeral loopback ports, real Rego
policies, real certificates made with `cryptography`. Nothing here waits on wall-clock
timing except bounded polling for conditions (reload picked up, process ready).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.service.server import Service, ServiceConfig

ALLOW_DENY_REGO = """package ordinance.test
import rego.v1

deny contains "x" if input.command.raw == "bad"

review contains {"message": "needs a second pair of eyes", "approvers": ["dba"]} if {
    input.command.raw == "risky"
}

greeting := sprintf("hello %s", [input.subject.id])
"""

BROKEN_REGO = """package ordinance.test
import rego.v1

deny contains "x" if {
    input.command.raw ==
}
"""


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    """Poll `condition` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "test.rego").write_text(ALLOW_DENY_REGO)
    return directory


def make_config(policy_dir: Path, tmp_path: Path, **overrides: Any) -> ServiceConfig:
    values: dict[str, Any] = dict(
        policies=policy_dir, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
        decision_log_path=tmp_path / "var" / "decisions.jsonl", reload_interval=0.1)
    values.update(overrides)
    return ServiceConfig(**values)


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(policy_dir: Path, **overrides: Any) -> Service:
        service = Service(make_config(policy_dir, tmp_path, **overrides)).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(grace=0.5)


@pytest.fixture
def service(policy_dir: Path, service_factory: Callable[..., Service]) -> Service:
    return service_factory(policy_dir)


def read_log(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The first `count` records of a JSON-lines decision log, once written."""
    def lines() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
        return records if len(records) >= count else None

    return wait_for(lines, timeout, f"{count} decision log records in {path}")


# -- `ordinance serve` as a subprocess ---------------------------------------------------------

@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    @property
    def grpc_target(self) -> str:
        return str(self.ready["grpc"])

    @property
    def http_url(self) -> str:
        return f"http://{self.ready['http']}"

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "serve", *args]


def start_serve(args: list[str], cwd: Path, timeout: float = 60.0) -> ServeProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(serve_command(*args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip().startswith("{"):
            return ServeProcess(proc, json.loads(line))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate(timeout=5)
    pytest.fail(f"ordinance serve did not become ready: {line!r}\n{err[-3000:]}")


# -- certificates -------------------------------------------------------------------------------

@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(name: str, issuer_key: Any, issuer_name: Any, *, ca: bool = False,
           server: bool = False, key: Any = None) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_name or subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization

    out = tmp_path_factory.mktemp("certs")
    ca_cert, ca_key = _issue("ordinance test CA", None, None, ca=True)
    other_ca_cert, other_ca_key = _issue("some other CA", None, None, ca=True)
    server_cert, server_key = _issue("localhost", ca_key, ca_cert.subject, server=True)
    client_cert, client_key = _issue("adapter", ca_key, ca_cert.subject)
    other_cert, other_key = _issue("intruder", other_ca_key, other_ca_cert.subject)

    def pem(cert: Any) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    paths = Certs(ca=out / "ca.pem", server_cert=out / "server.pem",
                  server_key=out / "server.key", client_cert=out / "client.pem",
                  client_key=out / "client.key", other_client_cert=out / "other.pem",
                  other_client_key=out / "other.key")
    paths.ca.write_bytes(pem(ca_cert))
    paths.server_cert.write_bytes(pem(server_cert))
    paths.client_cert.write_bytes(pem(client_cert))
    paths.other_client_cert.write_bytes(pem(other_cert))
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    _write_key(paths.other_client_key, other_key)
    return paths
