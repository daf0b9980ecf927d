"""The LitAPI's batch path in-process (no HTTP): per-request errors and hot swap of the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from twotower.serving.recommender import RecommenderSettings
from twotower.serving.reload import Coordinator
from twotower.serving.schemas import EncodeBuyerRequest, RetrieveRequest
from twotower.serving.workers import EncodeBuyerAPI, RetrieveAPI


def request(pid: str, event: str = "view", k: int = 3) -> RetrieveRequest:
    return RetrieveRequest.model_validate(
        {"recent_interactions": [{"product_id": pid, "event_type": event}], "k": k}
    )


@pytest.fixture()
def api(tiny_bundle: Path) -> RetrieveAPI:
    coordinator = Coordinator({}, str(tiny_bundle))  # a plain dict stands in for the manager's dict
    api = RetrieveAPI(
        str(tiny_bundle),
        RecommenderSettings(),
        coordinator,
        max_batch_size=8,
        batch_timeout=0.01,
        poll_interval=3600,
    )
    api.pre_setup()
    api.setup("cpu")
    return api


def run_batch(api: RetrieveAPI, requests: list) -> list:
    outputs = api.unbatch(api.predict(api.batch([api.decode_request(r) for r in requests])))
    return [api.encode_response(o) for o in outputs]


def test_one_bad_request_in_a_batch(api: RetrieveAPI) -> None:
    # "bogus" passes the front end only if the front end's schema is wider than the bundle's: model it directly.
    bad = request("p1").model_copy(
        update={
            "recent_interactions": [
                request("p1").recent_interactions[0].model_copy(update={"event_type": "bogus"})
            ]
        }
    )
    responses = run_batch(api, [request("p1"), bad, request("unknown-id")])
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert "bogus" in json.loads(responses[1].body)["detail"]
    assert json.loads(responses[2].body)["fallback"] == "popular"


def test_unexpected_error_fails_only_its_request(api: RetrieveAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    original = api.recommender.retrieve

    def fragile(queries):
        if any("p13" in q.product_ids for q in queries):
            raise RuntimeError("secret internal detail")
        return original(queries)

    monkeypatch.setattr(api.recommender, "retrieve", fragile)
    responses = run_batch(api, [request("p1"), request("p13"), request("p2")])
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert json.loads(responses[1].body) == {"detail": "Internal server error"}


def test_unbatched_mode(tiny_bundle: Path) -> None:
    api = EncodeBuyerAPI(
        str(tiny_bundle), RecommenderSettings(), Coordinator({}, str(tiny_bundle)), poll_interval=3600
    )
    api.pre_setup()
    api.setup("cpu")
    x = api.decode_request(
        EncodeBuyerRequest.model_validate(
            {"recent_interactions": [{"product_id": "p1", "event_type": "view"}]}
        )
    )
    response = api.encode_response(api.predict(x))
    assert response.status_code == 200 and len(json.loads(response.body)["embedding"]) == api.recommender.dim


def test_reload_swaps_and_bad_bundle_keeps_the_old_one(api: RetrieveAPI, make_bundle, tmp_path: Path) -> None:
    old = api.recommender
    second = make_bundle("second", seed=1)
    api._apply({"generation": 1, "path": str(second), "rollback": False})
    assert api.recommender is not old and api.recommender.version != old.version and api._error is None
    current = api.recommender
    broken = tmp_path / "broken"
    shutil.copytree(second, broken)
    (broken / "embeddings.npy").write_bytes(b"corrupted")
    api._apply({"generation": 2, "path": str(broken), "rollback": False})
    assert api.recommender is current and "checksum" in api._error
    assert run_batch(api, [request("p1")])[0].status_code == 200


def test_idle_blocking_loop_never_drops_the_request_it_waited_for() -> None:
    # LitAPI's batch_timeout may pass before LitServe's collate_requests looks at the queue (a busy machine
    # deschedules it): the request the loop already took must still be returned (it once was dropped).
    import queue
    import time as time_module

    import litserve as ls

    from twotower.serving.workers import IdleBlockingBatchedLoop

    api = ls.LitAPI(max_batch_size=8, batch_timeout=1e-9)
    api.request_timeout = 30.0  # LitServer sets it from server.timeout
    loop = IdleBlockingBatchedLoop()
    loop._restart_workers = False
    requests_queue: queue.Queue = queue.Queue()
    for uid in range(3):
        requests_queue.put((0, f"uid{uid}", time_module.monotonic(), {"x": uid}))
    taken = []
    while len(taken) < 3:
        payloads, timed_out = loop.get_batch_requests(api, requests_queue, transport=None)
        assert payloads and not timed_out
        taken += [uid for _, uid, _ in payloads]
    assert taken == ["uid0", "uid1", "uid2"]
    assert loop.get_batch_requests(api, requests_queue, transport=None) == ([], [])  # idle: waits, empty
