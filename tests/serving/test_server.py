"""End to end over HTTP: a real `python -m twotower.serve` on a free loopback port, one per module fixture."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.serving.conftest import make_broken_bundles
from tests.serving.live import LiveServer

pytestmark = pytest.mark.slow
KEY = "test-key-123"
ADMIN = "admin-key-456"


def body(*pids: str, event: str = "purchase", **extra: object) -> dict:
    return {"recent_interactions": [{"product_id": p, "event_type": event} for p in pids], **extra}


@pytest.fixture(scope="module")
def open_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # batch_timeout is long so that concurrent test requests share batches; this server uses LitServe's ZeroMQ
    # transport (server.fast_queue), the keyed one below the default queues, so both carry every kind of request
    server = LiveServer(
        tiny_bundle,
        tmp_path_factory.mktemp("open"),
        None,
        "server.fast_queue=true",
        "server.batch_timeout=0.05",
        "server.max_payload_bytes=8192",
        "server.body_timeout=1",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyed_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        tiny_bundle,
        tmp_path_factory.mktemp("keyed"),
        {"LIT_SERVER_API_KEY": KEY, "TWOTOWER_ADMIN_API_KEY": ADMIN},
        "server.poll_interval=0.05",
        f"server.bundle_root={tiny_bundle.parent}",
    )
    try:
        server.wait_ready(headers={"X-API-Key": KEY})
        yield server
    finally:
        server.stop()


def test_retrieve_happy_path(open_server: LiveServer) -> None:
    response = requests.post(f"{open_server.url}/retrieve", json=body("p1", "p2", k=10), timeout=10)
    assert response.status_code == 200
    data = response.json()
    assert len(data["items"]) == 10 and data["fallback"] is None and data["unknown_product_ids"] == []
    assert all(item["title"].startswith("منتج") for item in data["items"])
    assert not {"p1", "p2"} & {i["product_id"] for i in data["items"]}  # exclude_seen defaults to true


def test_unknown_ids_cold_fallback_and_exclude_seen(open_server: LiveServer) -> None:
    url = f"{open_server.url}/retrieve"
    cold = requests.post(url, json=body("ghost-1", "ghost-2", k=3), timeout=10).json()
    assert cold["fallback"] == "popular" and cold["unknown_product_ids"] == ["ghost-1", "ghost-2"]
    assert [i["product_id"] for i in cold["items"]] == ["p0", "p1", "p2"]
    mixed = requests.post(url, json=body("p4", "ghost-1", k=3), timeout=10).json()
    assert mixed["fallback"] is None and mixed["unknown_product_ids"] == ["ghost-1"]
    top = requests.post(url, json=body("p4", k=1, exclude_seen=False), timeout=10).json()["items"][0][
        "product_id"
    ]
    kept = requests.post(url, json=body("p4", top, k=20, exclude_seen=False), timeout=10).json()
    dropped = requests.post(url, json=body("p4", top, k=20), timeout=10).json()
    assert top in {i["product_id"] for i in kept["items"]}
    assert not {"p4", top} & {i["product_id"] for i in dropped["items"]}


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (body(*["p1"] * 101), 422, "at most 100"),
        (body("p1", k=0), 422, "k:"),
        (body("p1", k=101), 422, "k:"),
        (body("p1", event="teleport"), 422, "unknown event type 'teleport'"),
        (body("x" * 129), 422, "product_id"),
        (body("p1", surprise=1), 422, "surprise: Extra inputs are not permitted"),
        ({"k": 3}, 422, "recent_interactions"),
        ("not json", 422, "JSON"),
        (body(*[f"p{i}-" + "x" * 100 for i in range(100)]), 413, "limit"),
    ],
)
def test_validation_errors(open_server: LiveServer, payload: object, status: int, fragment: str) -> None:
    json_header = {"Content-Type": "application/json"}
    kwargs = {"data": payload, "headers": json_header} if isinstance(payload, str) else {"json": payload}
    response = requests.post(f"{open_server.url}/retrieve", timeout=10, **kwargs)
    assert response.status_code == status
    assert fragment in response.json()["detail"]


def test_encode_buyer(open_server: LiveServer) -> None:
    good = requests.post(f"{open_server.url}/encode_buyer", json=body("p1", "ghost"), timeout=10)
    assert good.status_code == 200 and len(good.json()["embedding"]) == 16
    assert good.json()["unknown_product_ids"] == ["ghost"]
    nothing = requests.post(f"{open_server.url}/encode_buyer", json=body("ghost"), timeout=10)
    assert nothing.status_code == 422 and "nothing to encode" in nothing.json()["detail"]


def test_batch_with_one_bad_request(open_server: LiveServer) -> None:
    # The front end accepts any string id; "bad" requests here are ones only the worker can judge
    # (no known product -> 422 from /encode_buyer), sent concurrently so that they share batches.
    payloads = [body("ghost") if i == 3 else body(f"p{i}") for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        codes = list(
            pool.map(
                lambda p: requests.post(f"{open_server.url}/encode_buyer", json=p, timeout=30).status_code,
                payloads,
            )
        )
    assert codes == [422 if i == 3 else 200 for i in range(12)]
    workers = requests.get(f"{open_server.url}/info", timeout=10).json()["workers"]
    # stats are published every poll interval; the batch of 12 concurrent requests was split in >= 1 batches
    assert any(w["api"] == "/encode_buyer" for w in workers)


def test_health_info_metrics(open_server: LiveServer) -> None:
    assert requests.get(f"{open_server.url}/health", timeout=10).text == "ok"
    info = requests.get(f"{open_server.url}/info", timeout=10).json()
    assert info["num_products"] == 60 and info["index"]["kind"] == "flat" and info["model_version"]
    assert info["server"]["auth"] is False
    metrics = requests.get(f"{open_server.url}/metrics", timeout=10).text
    assert 'twotower_http_requests_total{path="/retrieve",status="200"}' in metrics
    assert "twotower_http_request_duration_seconds_bucket" in metrics
    assert 'twotower_http_errors_total{kind="4xx",path="/retrieve"}' in metrics


def test_auth_off_means_admin_is_disabled(open_server: LiveServer) -> None:
    response = requests.post(f"{open_server.url}/admin/reload", timeout=10)
    assert response.status_code == 403 and "TWOTOWER_ADMIN_API_KEY" in response.json()["detail"]


def test_auth_on(keyed_server: LiveServer) -> None:
    url = f"{keyed_server.url}/retrieve"
    assert requests.post(url, json=body("p1"), timeout=10).status_code == 401
    assert requests.post(url, json=body("p1"), headers={"X-API-Key": "wrong"}, timeout=10).status_code == 401
    assert requests.post(url, json=body("p1"), headers={"X-API-Key": KEY}, timeout=10).status_code == 200
    admin = f"{keyed_server.url}/admin/reload"
    assert requests.post(admin, timeout=10).status_code == 401
    # the client key is not an admin key
    assert requests.post(admin, headers={"X-API-Key": KEY}, timeout=10).status_code == 401
    for path in ("/docs", "/openapi.json", "/info", "/metrics", "/litserve/info"):
        assert requests.get(f"{keyed_server.url}{path}", timeout=10).status_code == 401, path
        assert requests.get(f"{keyed_server.url}{path}", headers={"X-API-Key": KEY}, timeout=10).ok, path
    client_view = requests.get(f"{keyed_server.url}/info", headers={"X-API-Key": KEY}, timeout=10).json()
    assert "/" not in client_view["bundle"] and all("pid" not in w for w in client_view["workers"])
    admin_view = requests.get(f"{keyed_server.url}/info", headers={"X-API-Key": ADMIN}, timeout=10).json()
    assert admin_view["bundle"].startswith("/") and all("pid" in w for w in admin_view["workers"])


def test_reload_under_load_then_bad_bundle(keyed_server: LiveServer, make_bundle, tiny_bundle: Path) -> None:
    headers = {"X-API-Key": KEY}
    admin = {"X-API-Key": ADMIN}
    tmp_path = tiny_bundle.parent  # the server's bundle_root
    url = f"{keyed_server.url}/retrieve"
    first = requests.post(url, json=body("p1"), headers=headers, timeout=10).json()["model_version"]
    second_path = make_bundle("second", seed=1)
    stop, codes, versions = threading.Event(), [], set()

    def hammer() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(url, json=body("p1", "p7", k=5), headers=headers, timeout=30)
                codes.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        reload = requests.post(
            f"{keyed_server.url}/admin/reload",
            json={"bundle": str(second_path)},
            headers=admin,
            timeout=300,
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert reload.status_code == 200, reload.text
    second = reload.json()["model_version"]
    assert second != first and codes and set(codes) == {200}  # zero failed requests during the swap
    assert requests.post(url, json=body("p1"), headers=headers, timeout=10).json()["model_version"] == second

    broken = tmp_path / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(second_path, broken)
    (broken / "model.ckpt").write_bytes(b"not a checkpoint")
    bad = requests.post(
        f"{keyed_server.url}/admin/reload", json={"bundle": "broken"}, headers=admin, timeout=300
    )
    assert bad.status_code == 422 and "checksum" in bad.json()["detail"] and second in bad.json()["detail"]
    assert str(tmp_path) not in bad.json()["detail"]  # no absolute paths in answers
    assert requests.post(url, json=body("p1"), headers=headers, timeout=10).json()["model_version"] == second
    missing = requests.post(
        f"{keyed_server.url}/admin/reload",
        json={"bundle": str(tmp_path / "nope")},
        headers=admin,
        timeout=300,
    )
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]

    back = requests.post(f"{keyed_server.url}/admin/reload", headers=admin, timeout=300)  # default bundle
    assert back.status_code == 200 and back.json()["model_version"] == first


def test_stalled_clients_do_not_delay_others(open_server: LiveServer) -> None:
    # 20 clients send headers and part of a body, then stall; the others are answered meanwhile and the
    # stalled ones get a 408 once server.body_timeout (1 s here) passes without a byte.
    head = (
        b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"recent_'
    )
    stalled = [socket.create_connection(("127.0.0.1", open_server.port)) for _ in range(20)]
    try:
        for sock in stalled:
            sock.sendall(head)
        for _ in range(5):
            response = requests.post(f"{open_server.url}/retrieve", json=body("p1"), timeout=5)
            assert response.status_code == 200
        for sock in stalled:
            sock.settimeout(30)
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        for sock in stalled:
            sock.close()


def test_reload_refusals_reveal_nothing_and_never_wedge(
    keyed_server: LiveServer, tiny_bundle: Path, make_bundle
) -> None:
    admin = {"X-API-Key": ADMIN}
    url = f"{keyed_server.url}/admin/reload"
    root = tiny_bundle.parent
    # Outside the root: one answer whether the path exists, is a file or a directory.
    for path in ("/etc", "/root", "/etc/passwd", "/no/such/dir", "../../../../etc", str(root.parent)):
        response = requests.post(url, json={"bundle": path}, headers=admin, timeout=30)
        assert response.status_code == 422, path
        assert response.json()["detail"] == (
            f"bundle {path!r} is not a directory inside the server's bundle root (server.bundle_root)"
        )
    nul = requests.post(url, json={"bundle": "tiny\u0000/../x"}, headers=admin, timeout=30)
    assert nul.status_code == 422 and "control characters" in nul.json()["detail"]
    marker = root / "pwned"
    for name, (path, fragment) in make_broken_bundles(tiny_bundle, root, marker).items():
        response = requests.post(url, json={"bundle": path.name}, headers=admin, timeout=60)
        assert response.status_code == 422 and fragment in response.json()["detail"], (name, response.text)
        assert str(root) not in response.json()["detail"] and "rolled back" in response.json()["detail"]
    assert not marker.exists()  # the crafted checkpoint ran nothing
    # the server still answers and reloads normally afterwards
    good = requests.post(url, json={"bundle": make_bundle("second", seed=1).name}, headers=admin, timeout=60)
    assert good.status_code == 200, good.text
    info = requests.get(f"{keyed_server.url}/info", headers=admin, timeout=10).json()
    assert {w["version"] for w in info["workers"]} == {good.json()["model_version"]}
    assert all(w["ok"] for w in info["workers"])
    assert requests.post(url, headers=admin, timeout=60).status_code == 200  # back to the start-up bundle
