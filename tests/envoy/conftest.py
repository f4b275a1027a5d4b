"""Fixtures for the ext_authz service tests: policy dirs, OIDC keys, real servers.

Servers are real: `ordinance serve` / `ordinance envoy` subprocesses (their ready line gives
the ports) or an in-process `Service` on ephemeral loopback ports. Nothing waits on
wall-clock timing except bounded polling for a condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from adapters.envoy.service import EnvoyOptions
from engine.service.server import Service, ServiceConfig

REPO = Path(__file__).resolve().parents[2]
ISSUER, AUDIENCE = "https://idp.test", "ordinance"


def write_policies(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Oidc:
    """An issuer: an EC key, its JWKS file, and ID tokens."""

    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = {**ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "k1",
               "use": "sig", "alg": "ES256"}
        self.jwks = directory / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, email: str, groups: list[str], **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": email.split("@")[0],
                   "email": email, "groups": groups, "iat": now, "exp": now + 600, **claims}
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": "k1"})

    def flags(self) -> list[str]:
        return ["--oidc-jwks", str(self.jwks), "--oidc-issuer", ISSUER,
                "--oidc-audience", AUDIENCE]


@pytest.fixture
def oidc(tmp_path: Path) -> Oidc:
    return Oidc(tmp_path)


class Process:
    """A running `ordinance …` subprocess and its ready line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            assert self.proc.stderr is not None
            raise AssertionError(f"ordinance {args[0]} did not start:\n"
                                 f"{self.proc.stderr.read()[-3000:]}")
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def run_ordinance(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str) -> Process:
        process = Process(list(args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def envoy_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """An in-process decision service with the ext_authz extension (gRPC + HTTP)."""
    started: list[Service] = []

    def start(policy_dir: Path, **options: Any) -> Service:
        config = ServiceConfig(
            policies=policy_dir, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
            decision_log_path=tmp_path / "var" / "decisions.jsonl", reload_interval=0.1,
            extensions=(EnvoyOptions(http_prefix="/envoy", **options),))
        service = Service(config).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(grace=0.5)
