"""Reload coordination without processes: path rules, redaction, atomic generations, rollback on failure."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from twotower.serving.reload import Coordinator, ReloadError, redact, reload, resolve_bundle


def test_resolve_bundle_keeps_reloads_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    (root / "b1").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_bundle("b1", str(root), "/start") == (str((root / "b1").resolve()), "b1")
    assert resolve_bundle(str(root / "b1"), str(root), "/start")[1] == "b1"
    assert resolve_bundle(None, str(root), "/start/up") == (
        "/start/up",
        "up",
    )  # the operator's start-up bundle
    messages = set()
    for outside in ("../secret", str(tmp_path / "secret"), "escape", "/etc", "/etc/passwd", "/no/such"):
        with pytest.raises(ReloadError) as error:
            resolve_bundle(outside, str(root), "/start")
        assert error.value.status == 422
        messages.add(error.value.detail.replace(repr(outside), "X"))
    assert len(messages) == 1  # the same answer whatever lies outside
    for bad in ("b1\x00", "b1\n"):
        with pytest.raises(ReloadError, match="control characters"):
            resolve_bundle(bad, str(root), "/start")
    with pytest.raises(ReloadError, match="does not exist under"):
        resolve_bundle("missing", str(root), "/start")


def test_redact_shortens_absolute_paths() -> None:
    text = "bundle /srv/models/b2 is missing model.ckpt; /etc/passwd: no; ratio 1/2 ok"
    assert redact(text) == "bundle b2 is missing model.ckpt; passwd: no; ratio 1/2 ok"


def test_generations_are_unique_under_concurrent_publishers() -> None:
    coordinator = Coordinator({}, "/b")
    generations: list[int] = []

    def publish() -> None:
        for _ in range(200):
            generations.append(coordinator.publish("/b", False))

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(generations) == list(range(1, 801))


def test_one_reload_at_a_time() -> None:
    coordinator = Coordinator({}, "/b")
    token = coordinator.acquire(60)
    assert token and coordinator.acquire(60) is None
    coordinator.release(token)
    assert coordinator.acquire(60)


def _worker(coordinator: Coordinator, key: str, path: str, version_for: dict, stop: threading.Event) -> None:
    """A fake worker: follows the target, reports `version_for[path]` (None -> a load error)."""
    served, generation = path, 0
    while not stop.is_set():
        target = coordinator.target()
        if target["generation"] > generation:
            version = version_for.get(target["path"], "missing")
            ok = version is not None
            served = target["path"] if ok else served
            generation = target["generation"]
            coordinator.report(key, _record(generation, ok, version_for[served], served))
        else:
            record = dict(coordinator.state[key])
            coordinator.report(key, {**record, "heartbeat": time.time()})
        time.sleep(0.01)


def _record(generation: int, ok: bool, version: str, path: str) -> dict:
    error = None if ok else "BundleError: broken"
    return {"generation": generation, "ok": ok, "error": error, "version": version, "path": path,
            "heartbeat": time.time()}  # fmt: skip


def _run_with_workers(versions: list[dict], path: str, timeout: float = 5.0) -> tuple[Coordinator, object]:
    coordinator = Coordinator({}, "/b1")
    stop = threading.Event()
    threads = []
    for i, version_for in enumerate(versions):
        key = f"worker:/retrieve:{i}"
        coordinator.report(key, _record(0, True, version_for["/b1"], "/b1"))
        threads.append(threading.Thread(target=_worker, args=(coordinator, key, "/b1", version_for, stop)))
    for t in threads:
        t.start()
    try:
        outcome: object = asyncio.run(reload(coordinator, path, Path(path).name, 5.0, timeout))
    except ReloadError as error:
        outcome = error
    finally:
        stop.set()
        for t in threads:
            t.join()
    return coordinator, outcome


def test_success_reports_the_one_new_version() -> None:
    versions = {"/b1": "v1", "/b2": "v2"}
    _, outcome = _run_with_workers([versions, versions], "/b2")
    assert outcome == {
        "status": "reloaded",
        "variant": "control",
        "bundle": "b2",
        "model_version": "v2",
        "workers": 2,
    }


def test_a_partial_failure_rolls_every_worker_back() -> None:
    coordinator, outcome = _run_with_workers([{"/b1": "v1", "/b2": "v2"}, {"/b1": "v1", "/b2": None}], "/b2")
    assert isinstance(outcome, ReloadError) and outcome.status == 422
    assert "broken" in outcome.detail and "rolled back, serving v1" in outcome.detail
    assert coordinator.target()["rollback"] and coordinator.target()["path"] == "/b1"
    assert {w["version"] for w in coordinator.workers(5.0).values()} == {"v1"}


def test_workers_on_different_versions_count_as_a_failure() -> None:
    coordinator, outcome = _run_with_workers([{"/b1": "v1", "/b2": "v2"}, {"/b1": "v1", "/b2": "v3"}], "/b2")
    assert isinstance(outcome, ReloadError) and "different versions" in outcome.detail
    assert {w["version"] for w in coordinator.workers(5.0).values()} == {"v1"}


def test_a_timeout_rolls_back_and_answers_504() -> None:
    coordinator = Coordinator({}, "/b1")
    coordinator.report("worker:/retrieve:1", _record(0, True, "v1", "/b1"))  # never moves on
    with pytest.raises(ReloadError) as error:
        asyncio.run(reload(coordinator, "/b2", "b2", 60.0, 0.2))
    assert error.value.status == 504 and "within 0.2 s" in error.value.detail
    target = coordinator.target()
    assert (target["generation"], target["path"], target["rollback"]) == (2, "/b1", True)
    assert coordinator.acquire(1)  # the lease was released


def test_no_live_worker_is_503_not_500() -> None:
    with pytest.raises(ReloadError) as error:
        asyncio.run(reload(Coordinator({}, "/b1"), "/b2", "b2", 5.0, 1.0))
    assert error.value.status == 503
