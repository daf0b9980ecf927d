"""On an exact (flat) bundle, ``twotower.evaluate``'s ranking path (ModelRanker + the served scoring function
through the evaluation code) and ``Recommender.retrieve`` return the same top-k for the same histories."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from twotower.data.datamodule import HistoryDataset
from twotower.data.schema import EVENT_TYPES
from twotower.data.sequences import EventLog
from twotower.evaluation.queries import split_queries
from twotower.evaluation.rankers import ModelRanker
from twotower.evaluation.tuning import candidates_of, rank_split
from twotower.model.buyer_tower import load_buyer_tower
from twotower.retrieval.bundle import load_bundle
from twotower.scoring import MANIFEST_KEY, ScoringSettings, item_features
from twotower.serving.recommender import Query, Recommender

MAX_HISTORY = 6  # shorter than most histories below: both sides must keep the same latest items
K = 10
LONG = 25  # evaluate ranks lists as long as its largest k: the service's top K must be their prefix
LEARNED = (0.3, -0.2, 0.5, 0.1, 0.8, -0.05, -0.4, 0.2, -0.3, 0.4, 0.5, -0.3, 0.05, 0.1, 0.1)


def event_log(num_items: int, num_buyers: int = 40, seed: int = 0) -> tuple[EventLog, np.ndarray]:
    """Buyers with 2-14 events over a small catalog (many repeats), distinct times; targets = last events."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 16, size=num_buyers)
    buyer = np.repeat(np.arange(num_buyers), lengths).astype(np.int32)
    favourites = rng.integers(0, num_items, size=(num_buyers, 4))
    item = np.where(
        rng.random(len(buyer)) < 0.6,
        favourites[buyer, rng.integers(0, 4, size=len(buyer))],
        rng.integers(0, num_items, size=len(buyer)),
    ).astype(np.int32)
    event = rng.integers(0, len(EVENT_TYPES), size=len(buyer)).astype(np.int8)
    days = np.concatenate([np.sort(rng.choice(200, size=n, replace=False)) for n in lengths])
    timestamp = (days * 86_400 + rng.integers(0, 3600, size=len(buyer))).astype(np.int64) * 10**6
    ends = np.cumsum(lengths) - 1
    return EventLog(buyer, item, event, timestamp, [f"b{i}" for i in range(num_buyers)]), ends


@pytest.mark.parametrize(
    "settings",
    [
        ScoringSettings(exclude_seen=True),
        ScoringSettings(exclude_seen=False, repeat_weight=0.5, half_life_days=30.0),
        ScoringSettings(exclude_seen=False, repeat_weight=1000.0, half_life_days=7.0, max_repeat_items=2),
        # a learned repeat score: every feature matters (recency, counts, days since last, the catalog's item
        # statistics, also as new items' boost) and the bias puts history items among the new ones: lists mix both
        # the boost's pool (12) lies between K and LONG: lists of K and of LONG reorder the same new items
        ScoringSettings(exclude_seen=False, repeat_coefficients=LEARNED, boost_pool=12),
        ScoringSettings(exclude_seen=True, repeat_coefficients=LEARNED, boost_pool=12),
        # the history similarity reorders the same pool with the bundle's item vectors
        ScoringSettings(exclude_seen=True, history_similarity=1.0, boost_pool=12),
        ScoringSettings(
            exclude_seen=False, repeat_coefficients=LEARNED, boost_pool=12, history_similarity=0.5
        ),
    ],
    ids=[
        "exclusion",
        "repeat",
        "repeat-capped",
        "learned",
        "exclusion-boosted",
        "similar",
        "learned-similar",
    ],
)
@pytest.mark.parametrize(
    "tower",
    [{}, {"aggregation": "transformer", "time_gaps": True}],
    ids=["weighted_avg", "transformer-time-gaps"],
)
def test_evaluate_and_retrieve_rank_identically(make_bundle, settings: ScoringSettings, tower: dict) -> None:
    # the transformer with time gaps: evaluate buckets the event log's times, the service the request's
    path: Path = make_bundle(
        f"parity-{tower.get('aggregation', 'default')}", n=60, index_kind="flat", **tower
    )
    bundle = load_bundle(path)
    bundle.manifest[MANIFEST_KEY] = settings.to_dict()  # as export records it
    bundle.manifest["config"]["data"]["max_history"] = MAX_HISTORY
    # training-period statistics, as a datamodule fills them: the service reads them from the bundle's catalog
    rng = np.random.default_rng(1)
    catalog = bundle.catalog
    catalog.popularity = rng.integers(0, 50, len(catalog)).astype(np.float32)
    catalog.repeats = np.floor(catalog.popularity * rng.random(len(catalog))).astype(np.float32)
    catalog.recent_popularity = np.floor(catalog.popularity * rng.random(len(catalog))).astype(np.float32)
    weights = bundle.event_schema.weight_array
    events, targets = event_log(len(bundle.catalog))

    # evaluate's path: the split's queries, exact model scores, the served scoring function
    dataset = HistoryDataset(events, targets, MAX_HISTORY, weights)
    identity = np.arange(len(bundle.catalog))
    queries = split_queries(
        events, targets, dataset, identity, MAX_HISTORY, weights, item_features(bundle.catalog)
    )
    ranker = ModelRanker(load_buyer_tower(bundle.checkpoint_path), bundle.embeddings)
    candidates = candidates_of(ranker, queries, settings.candidates_needed(LONG), batch_size=16)
    offline = rank_split(candidates, queries, settings, LONG, 16, item_vectors=ranker.item_vectors)[:, :K]
    if settings.boosted:  # the catalog's statistics change these lists (parity below covers them)
        without = rank_split(
            candidates,
            replace(queries, catalog_features=None),
            settings,
            LONG,
            16,
            item_vectors=ranker.item_vectors,
        )[:, :K]
        assert not np.array_equal(without, offline)
    if settings.history_similarity:  # and so does the history similarity
        plain = replace(settings, history_similarity=0.0)
        assert not np.array_equal(rank_split(candidates, queries, plain, LONG, 16)[:, :K], offline)

    # the service: the buyer's whole history before the target, as a client would send it (oldest first)
    recommender = Recommender(bundle, load_buyer_tower(bundle.checkpoint_path))
    assert recommender.scoring == settings
    requests = []
    for target in targets:
        start = events.buyer_start[events.buyer[target]]
        span = range(start, events.history_end[target])
        requests.append(
            Query(
                product_ids=[bundle.catalog.product_ids[events.item[i]] for i in span],
                event_types=[EVENT_TYPES[events.event[i]] for i in span],
                timestamps=[events.timestamp[i] / 1e6 for i in span],
                k=K,
            )
        )
    online = recommender.retrieve(requests)
    ids = {pid: row for row, pid in enumerate(bundle.catalog.product_ids)}
    for q, result in enumerate(online):
        served = [ids[item["product_id"]] for item in result.items]
        assert served == [r for r in offline[q].tolist() if r >= 0], f"query {q}"
    # the lists differ between settings for these histories (the test would not notice a setting ignored)
    seen = [set(queries.history.items[q][queries.history.mask[q]]) for q in range(len(offline))]
    if settings.uses_repeat or settings.learned:
        assert any(set(offline[q]) & seen[q] for q in range(10))
    if (
        settings.learned
    ):  # interleaved: some new item ranks above some history item (not simply "history first")

        def interleaved(q: int) -> bool:
            is_seen = [r in seen[q] for r in offline[q].tolist() if r >= 0]
            return any(not a and b for i, a in enumerate(is_seen) for b in is_seen[i + 1 :])

        assert any(interleaved(q) for q in range(len(offline)))


def test_request_exclusion_overrides_the_bundle_setting(make_bundle) -> None:
    bundle = load_bundle(make_bundle("parity", n=60, index_kind="flat"))
    bundle.manifest[MANIFEST_KEY] = ScoringSettings(exclude_seen=False, repeat_weight=1000.0).to_dict()
    recommender = Recommender(bundle, load_buyer_tower(bundle.checkpoint_path))
    history = ["p3", "p7"]
    default, excluded, allowed = recommender.retrieve(
        [Query(history, ["view"] * 2, k=5, exclude_seen=flag) for flag in (None, True, False)]
    )
    assert {i["product_id"] for i in default.items[:2]} == set(history)  # repeat weight 1000: seen first
    assert not {i["product_id"] for i in excluded.items} & set(history)
    assert [i["product_id"] for i in allowed.items] == [i["product_id"] for i in default.items]
