"""A real FHIR R4 server for integration tests: sekmet (PyPI ``sekmet-fhir==0.1.1``) on 127.0.0.1.

``async with SekmetServer(workdir) as server:`` starts ``sekmet serve -c settings.yaml`` with a free
loopback port and ``base_url`` ``http://127.0.0.1:PORT/fhir`` (the simulator off, state under
``workdir``), waits until ``GET {base_url}/metadata`` answers (bounded attempts), and stops the process
it started through its handle. :func:`sekmet_command` tells whether sekmet is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import httpx


def sekmet_command() -> list[str] | None:
    """The command that runs sekmet's CLI in this environment, or None if sekmet is not installed."""
    beside = Path(sys.executable).with_name("sekmet")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("sekmet")
    return [found] if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SekmetServer:
    """One sekmet FHIR server process; ``base_url`` is its FHIR base (``http://127.0.0.1:PORT/fhir``)."""

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0) -> None:
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "sekmet.log"

    def log_text(self) -> str:
        """What the server printed so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def start(self) -> SekmetServer:
        """Start the process and wait until the FHIR endpoint answers; RuntimeError if it does not."""
        command = sekmet_command()
        if command is None:
            raise RuntimeError("sekmet is not installed (pip install sekmet-fhir==0.1.1)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = self.workdir / "settings.yaml"
        settings.write_text(
            f"base_url: {self.base_url}\n"
            "host: 127.0.0.1\n"
            f"port: {self.port}\n"
            f"data_dir: {self.workdir / 'data'}\n"
            "log_inbound: false\n"
            "simulator: {enabled: false}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*command, "serve", "-c", str(settings)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            attempt = 0
            while True:
                attempt += 1
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"sekmet exited with code {self.process.returncode} while starting:\n{self.log_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get(f"{self.base_url}/metadata")
                    if answer.status_code == 200:
                        return
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"sekmet did not answer on {self.base_url} after {attempt} attempts "
                        f"({self.start_timeout} s):\n{self.log_text()}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop the process this object started (terminate, then kill after 10 s)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> SekmetServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
