"""Reload coordination between the HTTP front ends and the inference workers.

The shared state lives in a multiprocessing manager (one dict and one lock, picklable into spawned workers):
`target` (generation, variant, path, rollback, paths) is what every worker should serve: `paths` maps each
A/B variant to its bundle, and a reload moves one `variant` to `path`, leaving the others as they are; `worker:<api>:<pid>` records are
each worker's heartbeat (generation reached, version, error). POST /admin/reload bumps the generation under
the manager's lock (atomic across `server.api_servers` front ends), waits until every live worker reports
it, and if any failed, timed out or ended on another version, rolls every worker back to the bundle it
served before. Only one reload runs at a time across all front ends (a lease in the shared state).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTROL = "control"

# An absolute path in an error message; `redact` keeps only its last component.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"/:,;()]+/)*([^\s'\"/:,;()]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact(text: str) -> str:
    """`text` with every absolute path shortened to its last component (errors must not map the disk)."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "/", text)


class ReloadError(Exception):
    """A reload refused or failed; `status` is the HTTP status, the message is safe to show."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Coordinator:
    """Reload target, reload lease and worker reports in a shared dict guarded by one lock."""

    def __init__(self, state: Any, bundles: str | Mapping[str, str], lock: Any = None) -> None:
        """`bundles`: {variant: start-up bundle}, or one path (a single control variant)."""
        self.state = state
        self.lock = lock if lock is not None else threading.Lock()
        paths = {CONTROL: str(bundles)} if isinstance(bundles, str | Path) else dict(bundles)
        first = next(iter(paths))
        self.state["target"] = {
            "generation": 0,
            "variant": first,
            "path": paths[first],
            "rollback": False,
            "paths": paths,
        }
        self.state["default_bundles"] = dict(paths)
        self.state["default_bundle"] = paths[first]
        self.state["reload_lease"] = None

    def target(self) -> dict:
        return dict(self.state["target"])

    @property
    def variants(self) -> list[str]:
        return list(self.state["default_bundles"])

    def report(self, key: str, record: dict) -> None:
        self.state[key] = record

    def workers(self, max_age: float) -> dict[str, dict]:
        """Records of the workers that heartbeat within `max_age` seconds."""
        now = time.time()
        return {
            key: record
            for key, record in self.state.items()
            if key.startswith("worker:") and now - record.get("heartbeat", 0) <= max_age
        }

    def publish(self, path: str, rollback: bool, variant: str | None = None) -> int:
        """Point every worker's `variant` (default: the first) at `path`; returns the new generation (one
        increment, whoever calls)."""
        with self.lock:
            target = self.state["target"]
            variant = variant or next(iter(target["paths"]))
            generation = int(target["generation"]) + 1
            paths = {**target["paths"], variant: str(path)}
            self.state["target"] = {
                "generation": generation,
                "variant": variant,
                "path": str(path),
                "rollback": rollback,
                "paths": paths,
            }
        return generation

    def acquire(self, seconds: float) -> str | None:
        """A reload lease for `seconds` (None when another reload holds one); release it with `release`."""
        with self.lock:
            lease = self.state.get("reload_lease")
            if lease and lease["until"] > time.time():
                return None
            token = uuid.uuid4().hex
            self.state["reload_lease"] = {"token": token, "until": time.time() + seconds}
            return token

    def release(self, token: str) -> None:
        with self.lock:
            lease = self.state.get("reload_lease")
            if lease and lease["token"] == token:
                self.state["reload_lease"] = None


def resolve_bundle(requested: str | None, root: str | None, default: str) -> tuple[str, str]:
    """(path the workers load, name shown in answers) for a reload request.

    No `requested`: the start-up bundle (the operator's choice, wherever it is). Otherwise the path, relative
    to `root` or absolute, must resolve (symlinks included) to a directory inside `root`. The answers say the
    same thing for every path outside the root, so they reveal nothing about the rest of the disk.
    """
    if requested is None:
        return default, Path(default).name
    if _CONTROL.search(requested):
        raise ReloadError(422, "bundle: control characters (NUL, newline, ...) are not allowed in a path")
    if root is None:
        raise ReloadError(
            422, "bundle: only the start-up bundle can be reloaded (server.bundle_root is unset)"
        )
    try:
        base = Path(root).resolve()
        resolved = (base / requested).resolve()  # an absolute `requested` replaces base
    except (OSError, ValueError, RuntimeError):
        raise ReloadError(422, "bundle: the path cannot be resolved") from None
    outside = f"bundle {requested!r} is not a directory inside the server's bundle root (server.bundle_root)"
    if not resolved.is_relative_to(base):
        raise ReloadError(422, outside)
    shown = str(resolved.relative_to(base)) or "."
    if not resolved.is_dir():
        raise ReloadError(422, f"bundle {shown!r} does not exist under the server's bundle root")
    return str(resolved), shown


async def _wait_for(
    coordinator: Coordinator, keys: list[str], generation: int, timeout: float
) -> dict | None:
    """Worker records once every worker in `keys` reports `generation`; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        current = {k: dict(coordinator.state.get(k) or {}) for k in keys}
        if all(r.get("generation", -1) >= generation for r in current.values()):
            return current
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)


def served(record: dict, variant: str) -> dict:
    """{"path", "version"} a worker record says `variant` is served from (plain records: the first variant)."""
    per_variant = record.get("variants")
    if per_variant and variant in per_variant:
        return per_variant[variant]
    return {"path": record.get("path"), "version": record.get("version")}


async def reload(
    coordinator: Coordinator,
    path: str,
    shown: str,
    stale_after: float,
    timeout: float,
    variant: str | None = None,
) -> dict[str, Any]:
    """Move `variant` (default: the first) of every live worker to `path`, or roll them all back; the other
    variants keep serving what they served. Returns the success body, raises ReloadError."""
    variant = variant or coordinator.variants[0]
    token = coordinator.acquire(2 * timeout + 30)
    if token is None:
        raise ReloadError(409, "a reload is already running")
    try:
        before = coordinator.workers(stale_after)
        if not before:
            raise ReloadError(503, "no live inference worker: the server is starting or unhealthy")
        previous = sorted({served(w, variant)["path"] for w in before.values()})
        generation = coordinator.publish(path, False, variant)
        results = await _wait_for(coordinator, list(before), generation, timeout)
        if results is not None:
            errors = [r["error"] for r in results.values() if not r.get("ok")]
            versions = sorted({served(r, variant)["version"] for r in results.values()}, key=str)
            if not errors and len(versions) == 1:
                return {
                    "status": "reloaded",
                    "variant": variant,
                    "bundle": shown,
                    "model_version": versions[0],
                    "workers": len(results),
                }
            problem = errors[0] if errors else f"workers ended on different versions {versions}"
            status = 422
        else:
            problem, status = f"workers did not finish loading within {timeout:g} s", 504
        # Roll everyone back to what they served (all served the same bundle after the last good reload).
        await _wait_for(coordinator, list(before), coordinator.publish(previous[0], True, variant), timeout)
        serving = sorted(
            {served(w, variant)["version"] for w in coordinator.workers(stale_after).values()}, key=str
        )
        raise ReloadError(
            status,
            redact(
                f"could not load bundle {shown}: {problem}; rolled back, serving {', '.join(map(str, serving))}"
            ),
        )
    finally:
        coordinator.release(token)
