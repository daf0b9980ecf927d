"""Start `python -m twotower.serve` as a child process on a free loopback port, wait for it, stop it.

Used by the serving tests, the benchmarks and the schemathesis check (one copy of this logic).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

KEY_ENVS = ("LIT_SERVER_API_KEY", "TWOTOWER_ADMIN_API_KEY")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when a new server could listen on `port` (SO_REUSEADDR, as uvicorn binds: TIME_WAIT is fine)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def _get(url: str, headers: dict | None, timeout: float) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class LiveServer:
    """A running `python -m twotower.serve` (own process group, log in `workdir/serve-PORT.log`).

    `env` replaces the two API-key variables (unset unless given); `overrides` are Hydra overrides;
    `command` replaces the whole command line (another server, e.g. the benchmark's no-op LitServe).
    """

    def __init__(
        self,
        bundle: str | Path | None,
        workdir: str | Path,
        env: dict[str, str] | None = None,
        *overrides: str,
        command: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        self.command = command or [
            sys.executable,
            "-m",
            "twotower.serve",
            f"bundle={bundle}",
            f"port={self.port}",
            f"hydra.run.dir={workdir / 'hydra'}",
            *overrides,
        ]
        full_env = {k: v for k, v in os.environ.items() if k not in KEY_ENVS}
        full_env.update(env or {})
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=workdir,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 240.0, headers: dict | None = None) -> LiveServer:
        """Block until GET /health answers 200 (raises with the log's tail if the server exits or hangs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError):
                if _get(f"{self.url}/health", headers, 2) == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the main process (as an operator would); kill the whole group if anything is left after."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a safety net for tests; serve.py cleans up itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
