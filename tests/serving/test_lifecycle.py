"""Issue 9 item 7: SIGTERM/SIGINT to the main process stops every child within 10 s and frees the port."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.serving.live import LiveServer, port_is_free

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGINT, signal.SIGINT)],
    ids=["sigterm", "sigint", "sigint-twice"],
)
def test_signal_to_the_main_process_stops_everything(
    tiny_bundle: Path, tmp_path: Path, signals: tuple[int, ...]
) -> None:
    server = LiveServer(tiny_bundle, tmp_path).wait_ready()
    try:
        main = psutil.Process(server.pid)
        children = main.children(recursive=True)
        assert len(children) >= 4  # managers, two inference workers, a front end
        for sig in signals:
            server.process.send_signal(sig)  # the main PID only, not its process group
            time.sleep(0.3)
        everyone = [main, *children]
        _, alive = psutil.wait_procs(everyone, timeout=10)
        assert not alive, f"still running 10 s after {signals}: {[p.pid for p in alive]}"
        assert port_is_free(server.port)
    finally:
        server.stop()
