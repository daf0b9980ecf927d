"""Start `python -m twotower.serve` as a real server on a free loopback port (own process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(
        self, bundle: Path, workdir: Path, env: dict[str, str] | None = None, *overrides: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        command = [
            sys.executable,
            "-m",
            "twotower.serve",
            f"bundle={bundle}",
            f"port={self.port}",
            f"hydra.run.dir={workdir / 'hydra'}",
            *overrides,
        ]
        full_env = {
            k: v for k, v in os.environ.items() if k not in ("LIT_SERVER_API_KEY", "TWOTOWER_ADMIN_API_KEY")
        }
        full_env.update(env or {})
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 240.0, headers: dict | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if requests.get(f"{self.url}/health", headers=headers, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # LitServe's workers and manager live in the server's own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
