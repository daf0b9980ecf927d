"""The `server` node of conf/serve.yaml, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerSettings:
    """HTTP, batching, reload and shutdown knobs of `python -m twotower.serve`."""

    max_batch_size: int = 16
    batch_timeout: float = 0.001
    accelerator: str = "cpu"
    workers_per_device: int = 1
    api_servers: int = 1
    api_server_worker_type: str = "process"
    # LitServe's ZeroMQ transport between workers and front ends (its "fast_queue"; not on Windows)
    fast_queue: bool = False
    # answers at least this large are gzipped for clients that accept it (LitServe's default: 1000); None = never
    gzip_min_bytes: int | None = 1000
    timeout: float = 30.0
    max_payload_bytes: int = 65_536
    cors_origins: list[str] = field(default_factory=list)
    reload_timeout: float = 600.0
    poll_interval: float = 0.5
    log_level: str = "warning"
    # /admin/reload loads only bundles inside this directory (None: only the start-up bundle can be reloaded)
    bundle_root: str | None = None
    # with a client key set, /docs, /openapi.json, /info and /metrics need it too
    protect_docs: bool = True
    # slow clients: idle keep-alive connections close after this; a body that stalls longer gets 408
    timeout_keep_alive: float = 5.0
    body_timeout: float = 10.0
    # seconds a front end may take to finish open requests on shutdown (SIGTERM/SIGINT must end in 10 s)
    graceful_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.gzip_min_bytes is not None and self.gzip_min_bytes < 0:
            raise ValueError(f"server.gzip_min_bytes must be >= 0 or null, got {self.gzip_min_bytes}")
        if self.max_batch_size < 1:
            raise ValueError(f"server.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout < 0:
            raise ValueError(f"server.batch_timeout must be >= 0 seconds, got {self.batch_timeout}")
        if self.max_batch_size > 1 and self.batch_timeout == 0:
            # LitServe polls the queue without blocking when batch_timeout is 0: a core spins at 100%.
            raise ValueError("server.batch_timeout must be > 0 when max_batch_size > 1 (e.g. 0.001)")
        if self.max_payload_bytes < 1024:
            raise ValueError(f"server.max_payload_bytes must be >= 1024, got {self.max_payload_bytes}")
        if self.api_server_worker_type not in ("process", "thread"):
            raise ValueError(
                f"server.api_server_worker_type must be process or thread, got {self.api_server_worker_type!r}"
            )
        for name in ("poll_interval", "timeout_keep_alive", "body_timeout", "reload_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"server.{name} must be > 0 seconds, got {getattr(self, name)}")
        if not 0 <= self.graceful_timeout <= 5:
            raise ValueError(
                f"server.graceful_timeout must be in [0, 5] seconds, got {self.graceful_timeout}"
            )
        self.cors_origins = list(self.cors_origins or [])
