"""Choosing settings on val and ranking a split under the served scoring function, on a hand-made event log;
evaluate's start-up checks of the baselines and of the served settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from twotower.config import ConfigError
from twotower.data.datamodule import HistoryDataset
from twotower.data.sequences import EventLog
from twotower.evaluate import check_baselines, check_history_similarity, served_settings
from twotower.evaluation.learned_repeat import fit_learned_score
from twotower.evaluation.queries import split_queries
from twotower.evaluation.rankers import Interactions, ModelRanker, PopularityRanker
from twotower.evaluation.tuning import (
    MethodSpec,
    candidates_of,
    choose_served_settings,
    rank_split,
    tune_and_rank,
)
from twotower.scoring import ITEM_FEATURES, REPEAT_COEFFICIENTS, History, ScoringSettings, rank_candidates

DAY_US = 86_400 * 1_000_000
WEIGHTS = np.array([1.0, 5.0, 10.0], dtype=np.float32)  # view, add_to_cart, purchase
# (buyer, item, day): both buyers bought item 3 before; the val targets (day 10) and test targets (day 20)
# are item 3 again. Training period (before day 10): item 0 x2, item 3 x2, item 1 x1.
EVENTS = [
    (0, 0, 1),
    (0, 3, 2),
    (0, 1, 3),
    (0, 3, 10),
    (0, 3, 20),
    (1, 0, 1),
    (1, 3, 2),
    (1, 3, 10),
    (1, 3, 20),
]
VAL, TEST = np.array([3, 7]), np.array([4, 8])


def event_log() -> EventLog:
    buyer, item, day = (np.array(column) for column in zip(*EVENTS, strict=True))
    return EventLog(
        buyer=buyer.astype(np.int32),
        item=item.astype(np.int32),
        event=np.full(len(buyer), 2, dtype=np.int8),
        timestamp=day.astype(np.int64) * DAY_US,
        buyer_ids=["a", "b"],
    )


def queries(events: EventLog, positions: np.ndarray):
    dataset = HistoryDataset(events, positions, 100, WEIGHTS)
    return split_queries(events, positions, dataset, np.arange(4), 100, WEIGHTS)


def test_split_queries_hold_the_served_history_input() -> None:
    test = queries(event_log(), TEST)
    np.testing.assert_array_equal(test.targets, [3, 3])
    assert test.repeat.all()
    np.testing.assert_array_equal(test.history_length, [4, 3])
    np.testing.assert_allclose(test.history.now, [20 * 86_400.0] * 2)
    row = test.history.take(np.array([1]))
    np.testing.assert_array_equal(row.items[row.mask], [0, 3, 3])  # buyer b: days 1, 2, 10
    np.testing.assert_allclose(row.weights[row.mask], [10.0] * 3)


def test_the_models_best_val_setting_is_served_and_every_method_is_ranked_under_it() -> None:
    events = event_log()
    train = events.timestamp < 10 * DAY_US
    interactions = Interactions(
        events.buyer[train],
        events.item[train],
        WEIGHTS[events.event[train]],
        4,
        events.timestamp[train] / 1e6,
    )
    repeat_grid = {"repeat_weight": [0.0, 0.5, 5.0], "half_life_days": [30.0]}
    specs = [
        MethodSpec("model", lambda params: PopularityRanker(), repeat_grid=repeat_grid),
        MethodSpec("popularity", lambda params: PopularityRanker()),
    ]
    outcome = tune_and_rank(
        specs,
        lambda ranker: ranker.fit(interactions),
        queries(events, VAL),
        queries(events, TEST),
        fixed=None,
        tune_k=1,
        max_k=3,
        batch_size=1,
    )
    # popularity alone puts item 0 first; the repeat score lifts item 3 (the target) above it on val
    assert outcome.served is False
    model = outcome.chosen["model"]
    assert model[False].settings.repeat_weight == 0.5 and model[False].val_score == 1.0  # first best
    assert model[True].val_score == 0.0  # excluding seen items removes every target here
    np.testing.assert_array_equal(outcome.rankings[False]["model"], [[3, 0, 1], [3, 0, 1]])
    np.testing.assert_array_equal(outcome.rankings[False]["popularity"], [[0, 3, 1], [0, 3, 1]])
    np.testing.assert_array_equal(
        outcome.rankings[True]["popularity"], [[2, -1, -1], [1, 2, -1]]
    )  # seen excluded
    assert len(outcome.tuning["model"]["grid"]) == 1 + 3  # excluded + three repeat weights


def test_recorded_settings_are_served_without_tuning() -> None:
    events = event_log()
    interactions = Interactions(events.buyer[:3], events.item[:3], np.ones(3), 4, np.zeros(3))
    fixed = ScoringSettings(exclude_seen=True)
    outcome = tune_and_rank(
        [
            MethodSpec(
                "model", lambda params: PopularityRanker(), repeat_grid={"repeat_weight": [5.0]}, fixed=fixed
            )
        ],
        lambda ranker: ranker.fit(interactions),
        queries(events, VAL),
        queries(events, TEST),
        fixed=fixed,
        tune_k=1,
        max_k=2,
        batch_size=8,
        report_other=False,
    )
    assert outcome.served is True and list(outcome.rankings) == [True]
    assert outcome.chosen["model"][True].settings == fixed


def test_recorded_other_exclusion_settings_rank_the_other_column_as_the_service_would() -> None:
    # a bundle serving seen items allowed (repeat weight 5: item 3 first) and recording its excluded settings:
    # evaluate's other column uses those (what /retrieve serves a request that sets exclusion), not a retuning
    events = event_log()
    interactions = Interactions(events.buyer[:3], events.item[:3], np.ones(3), 4, np.zeros(3))
    fixed = ScoringSettings(exclude_seen=False, repeat_weight=5.0)
    other = ScoringSettings(exclude_seen=True, max_repeat_items=2)  # an unusual value: no grid would make it
    spec = MethodSpec(
        "model",
        lambda params: PopularityRanker(),
        repeat_grid={"repeat_weight": [0.0]},
        fixed=fixed,
        fixed_other=other,
    )
    args = (queries(events, VAL), queries(events, TEST), fixed, 1, 2, 8)
    outcome = tune_and_rank([spec], lambda ranker: ranker.fit(interactions), *args)
    assert outcome.served is False
    assert (
        outcome.chosen["model"][False].settings == fixed and outcome.chosen["model"][True].settings == other
    )
    assert [g["scoring"] for g in outcome.tuning["model"]["grid"]] == [fixed.to_dict(), other.to_dict()]
    np.testing.assert_array_equal(outcome.rankings[True]["model"], [[2, -1], [1, 2]])  # seen excluded
    # without a recorded one, the other exclusion is tuned on val as before
    spec.fixed_other = None
    outcome = tune_and_rank([spec], lambda ranker: ranker.fit(interactions), *args)
    assert outcome.chosen["model"][True].settings == ScoringSettings(exclude_seen=True, repeat_weight=0.0)


def _evaluate_cfg(**baselines) -> OmegaConf:
    return OmegaConf.create(
        {
            "scoring": {"source": "auto", "settings": ScoringSettings().to_dict(), "grid": {}},
            "baselines": baselines,
        }
    )


def test_baseline_grids_are_checked_before_the_data_loads() -> None:
    knn = {"_target_": "twotower.evaluation.knn.ItemKNNRanker"}
    check_baselines(_evaluate_cfg(item_knn={"ranker": knn, "grid": [{"window": None}]}, text_only=None))
    with pytest.raises(ConfigError, match="windw"):
        check_baselines(_evaluate_cfg(item_knn={"ranker": knn, "grid": [{"windw": 5}]}))
    with pytest.raises(ConfigError, match="needs a 'ranker'"):
        check_baselines(_evaluate_cfg(item_knn=knn))
    with pytest.raises(ConfigError, match="scoring fields"):
        check_baselines(_evaluate_cfg(item_knn={"ranker": knn, "repeat": {"weight": [1.0]}}))
    with pytest.raises(ConfigError, match="taken by the model"):
        check_baselines(_evaluate_cfg(model={"ranker": knn}))


def test_history_similarity_weights_are_checked_before_the_data_loads() -> None:
    check_history_similarity(None)
    check_history_similarity(OmegaConf.create({"w": [0.0, 0.5]}).w)
    for bad in ([-1.0], [float("nan")], "0.5", [True]):
        with pytest.raises(ConfigError, match="history_similarity"):
            check_history_similarity(bad)


def test_served_settings_come_from_the_bundle_the_config_or_val() -> None:
    recorded = {"scoring": {"exclude_seen": False, "repeat_weight": 0.3, "half_life_days": 30.0}}
    cfg = _evaluate_cfg()
    assert served_settings(cfg, recorded) == ScoringSettings(False, 0.3, 30.0)
    assert served_settings(cfg, {}) is None  # auto without recorded settings: choose on val
    cfg.scoring.source = "tune"
    assert served_settings(cfg, recorded) is None
    cfg.scoring.source = "config"
    assert served_settings(cfg, recorded) == ScoringSettings()
    cfg.scoring.source = "bundle"
    with pytest.raises(ConfigError, match="records no 'scoring'"):
        served_settings(cfg, {})


def test_choose_served_settings_for_export() -> None:
    events = event_log()
    train = events.timestamp < 10 * DAY_US
    ranker = PopularityRanker().fit(Interactions(events.buyer[train], events.item[train], np.ones(5), 4))
    grid = {"repeat_weight": [0.0, 2.0], "half_life_days": [30.0]}
    settings, trace = choose_served_settings(ranker, queries(events, VAL), grid, k=1)
    assert settings == ScoringSettings(exclude_seen=False, repeat_weight=2.0, half_life_days=30.0)
    assert trace["chosen"] == 1.0 and len(trace["grid"]) == 3
    assert ScoringSettings.from_dict(settings.to_dict()) == settings  # what the manifest records


class MeanTower(torch.nn.Module):
    """A buyer tower stand-in: the mean of the history's item vectors."""

    def pool(self, vectors, items, weights, mask):  # noqa: ANN001, ANN201
        picked = vectors[items] * mask[..., None]
        return picked.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


class ExactIndex:
    """An exact inner-product index with the VectorIndex search signature (scores, ids), best first."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, 1), ids


def test_ranking_through_an_exact_index_equals_exact_ranking() -> None:
    events = event_log()
    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    ranker = ModelRanker(MeanTower(), vectors, index=ExactIndex(vectors))
    test = queries(events, TEST)
    exact = candidates_of(ranker, test, k=2, batch_size=1)
    through_index = candidates_of(ranker, test, k=2, batch_size=1, use_index=True)
    for settings in (ScoringSettings(), ScoringSettings(exclude_seen=False, repeat_weight=1.0)):
        np.testing.assert_array_equal(
            rank_split(through_index, test, settings, 2, 1), rank_split(exact, test, settings, 2, 1)
        )


def old_once_bought_log(buyers: int = 60) -> tuple[EventLog, np.ndarray, int]:
    """Each buyer bought item B once long ago (day 1) and item A three times lately (days 40-42); the target
    (day 50) is B again. No configured repeat score can prefer the older, rarer item; a learned one can."""
    rows = []
    for b in range(buyers):
        a, once = 1 + b % 5, 6 + b % 5
        rows += [(b, once, 1), (b, a, 40), (b, a, 41), (b, a, 42), (b, once, 50)]
    buyer, item, day = (np.array(column) for column in zip(*rows, strict=True))
    events = EventLog(
        buyer=buyer.astype(np.int32),
        item=item.astype(np.int32),
        event=np.full(len(buyer), 2, dtype=np.int8),
        timestamp=day.astype(np.int64) * DAY_US,
        buyer_ids=[f"b{i}" for i in range(buyers)],
    )
    return events, np.arange(buyers) * 5 + 4, 11


def test_a_learned_repeat_score_is_chosen_when_it_beats_the_grid_on_held_out_buyers() -> None:
    events, targets, num_items = old_once_bought_log()
    dataset = HistoryDataset(events, targets, 100, WEIGHTS)
    val = split_queries(events, targets, dataset, np.arange(num_items), 100, WEIGHTS)
    ranker = PopularityRanker().fit(
        Interactions(np.zeros(3), np.zeros(3, dtype=np.int64), np.ones(3), num_items)  # item 0 is popular
    )
    grid = {"repeat_weight": [0.0, 2.0], "half_life_days": [30.0, 365.0]}
    plain, _ = choose_served_settings(ranker, val, grid, k=1)
    assert not plain.learned  # no configured setting finds B (val recall@1 0 everywhere)
    settings, trace = choose_served_settings(ranker, val, {**grid, "repeat_coefficients": [None, "fit"]}, k=1)
    assert settings.learned and trace["chosen"] == 1.0
    learned = [t for t in trace["grid"] if "kept" in t]
    assert len(learned) == 1 and learned[0]["kept"] and learned[0]["held_out_recall@1"] == 1.0
    assert learned[0]["grid_best_held_out_recall@1"] == 0.0
    weights = dict(zip(REPEAT_COEFFICIENTS, settings.repeat_coefficients, strict=True))
    assert weights["count"] < 0 or weights["days_since_last"] > 0  # it learned "older and rarer"
    ranked = rank_split(candidates_of(ranker, val, 1, 8), val, settings, 1, 8)
    np.testing.assert_array_equal(ranked[:, 0], 6 + np.arange(60) % 5)


def test_the_fit_learns_to_boost_new_items_the_catalog_says_sell_now() -> None:
    # the method ranks new items 0 > 1 > 2 > 3, but buyers take item 2, which the catalog says sells lately;
    # a third of them take their own history item 5 back (so there is a repeat score to learn at all)
    queries = 90
    ids = np.tile(np.arange(4), (queries, 1))
    scores = np.tile(np.array([1.0, 0.9, 0.8, 0.7], dtype=np.float32), (queries, 1))
    history = History(np.full((queries, 1), 5), np.ones((queries, 1), bool))
    history_scores = np.full((queries, 1), 0.5, dtype=np.float32)
    targets = np.where(np.arange(queries) % 3 == 0, 5, 2)
    catalog = np.zeros((6, len(ITEM_FEATURES)), np.float32)
    recent = ITEM_FEATURES.index("item_log_recent_count")
    catalog[2, recent] = 3.0
    catalog[4, recent] = 1.0  # not among the candidates: the fit must cope with features it never sees
    learned = fit_learned_score(
        ids, scores, history, history_scores, targets, catalog_features=catalog, boost_pool=3
    )
    assert learned is not None and learned.history_similarity == 0  # no item vectors: no similarity weight
    coefficients = learned.coefficients
    weights = dict(zip(REPEAT_COEFFICIENTS, coefficients, strict=True))
    assert weights["new_item_log_recent_count"] > 0
    settings = ScoringSettings(exclude_seen=False, repeat_coefficients=coefficients)
    top, _ = rank_candidates(ids[:1], scores[:1], history.take(slice(0, 1)), history_scores[:1], settings, 3,
                             catalog_features=catalog)  # fmt: skip
    assert top[0, 0] == 2  # the trending item first; without the catalog it would be item 0
    plain, _ = rank_candidates(
        ids[:1], scores[:1], history.take(slice(0, 1)), history_scores[:1], settings, 3
    )
    assert plain[0, 0] != 2


def test_with_seen_items_excluded_the_fit_learns_the_new_item_boost_alone() -> None:
    # a shop without repeats: buyers take item 2, which the catalog says sells lately, never their own item 5
    queries = 90
    ids = np.tile(np.arange(4), (queries, 1))
    scores = np.tile(np.array([1.0, 0.9, 0.8, 0.7], dtype=np.float32), (queries, 1))
    history = History(np.full((queries, 1), 5), np.ones((queries, 1), bool))
    history_scores = np.full((queries, 1), 2.0, dtype=np.float32)  # the method likes item 5 best
    targets = np.full(queries, 2)
    catalog = np.zeros((6, len(ITEM_FEATURES)), np.float32)
    catalog[2, ITEM_FEATURES.index("item_log_recent_count")] = 3.0
    args = (ids, scores, history, history_scores, targets)
    # without exclusion nothing is learned here (no target is a history item); with it, the boost is
    assert fit_learned_score(*args, catalog_features=catalog, boost_pool=3) is None
    assert fit_learned_score(*args, boost_pool=3, exclude_seen=True) is None  # no catalog: nothing to learn
    learned = fit_learned_score(*args, catalog_features=catalog, boost_pool=3, exclude_seen=True)
    assert learned is not None
    coefficients = learned.coefficients
    weights = dict(zip(REPEAT_COEFFICIENTS, coefficients, strict=True))
    assert weights["new_item_log_recent_count"] > 0
    assert all(weights[name] == 0 for name in REPEAT_COEFFICIENTS[: REPEAT_COEFFICIENTS.index("bias") + 1])
    settings = ScoringSettings(exclude_seen=True, repeat_coefficients=coefficients)
    top, _ = rank_candidates(ids[:1], scores[:1], history.take(slice(0, 1)), history_scores[:1], settings, 3,
                             catalog_features=catalog)  # fmt: skip
    assert top[0, 0] == 2 and 5 not in top


def test_the_learned_boost_is_tried_with_seen_items_excluded() -> None:
    events, targets, _ = old_once_bought_log()
    new_item = events.item.copy()
    new_item[targets] = 11  # every target is item 11: never bought before, the catalog says it sells lately
    events = EventLog(events.buyer, new_item, events.event, events.timestamp, events.buyer_ids)
    num_items = 12
    catalog = np.zeros((num_items, len(ITEM_FEATURES)), np.float32)
    catalog[11, ITEM_FEATURES.index("item_log_recent_count")] = 5.0
    dataset = HistoryDataset(events, targets, 100, WEIGHTS)
    val = split_queries(events, targets, dataset, np.arange(num_items), 100, WEIGHTS, catalog)
    items = np.arange(11)  # popularity: item 0 first, item 11 never sold
    ranker = PopularityRanker().fit(Interactions(np.zeros(11), items, 11.0 - items, num_items))
    plain, _ = choose_served_settings(ranker, val, {}, k=1)
    assert not plain.boosted
    settings, trace = choose_served_settings(ranker, val, {"repeat_coefficients": [None, "fit"]}, k=1)
    assert settings.exclude_seen and settings.boosted  # nothing to learn with seen items allowed
    assert trace["chosen"] == 1.0
    assert any(t["scoring"]["exclude_seen"] and t.get("kept") for t in trace["grid"])


def test_nothing_is_learned_without_repeat_targets_and_bad_grid_values_are_refused() -> None:
    events, targets, num_items = old_once_bought_log()
    new_item = events.item.copy()
    new_item[targets] = 0  # every target is an item never seen before by its buyer
    events = EventLog(events.buyer, new_item, events.event, events.timestamp, events.buyer_ids)
    dataset = HistoryDataset(events, targets, 100, WEIGHTS)
    val = split_queries(events, targets, dataset, np.arange(num_items), 100, WEIGHTS)
    ranker = PopularityRanker().fit(
        Interactions(np.zeros(1), np.zeros(1, dtype=np.int64), np.ones(1), num_items)
    )
    candidates = candidates_of(ranker, val, 1, 8)
    assert (
        fit_learned_score(
            candidates.ids, candidates.scores, val.history, candidates.history_scores, val.targets
        )
        is None
    )
    with pytest.raises(ValueError, match="repeat_coefficients"):
        choose_served_settings(ranker, val, {"repeat_coefficients": [None, "learn"]}, k=1)


def test_history_similarity_is_chosen_on_val_when_one_vector_misses_a_second_interest() -> None:
    # the buyer had items 0 and 1 (two interests); their mean points at item 2, between them, while the val
    # target is item 3, next to item 0: only a large enough history-similarity weight ranks it first
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [0.995, 0.0998]], dtype=np.float32)
    events = EventLog(
        buyer=np.zeros(3, dtype=np.int32),
        item=np.array([0, 1, 3], dtype=np.int32),
        event=np.full(3, 2, dtype=np.int8),
        timestamp=np.array([1, 2, 10], dtype=np.int64) * DAY_US,
        buyer_ids=["a"],
    )
    ranker = ModelRanker(MeanTower(), vectors)
    grid = {"history_similarity": [0.25, 0.5, 1.0]}
    settings, trace = choose_served_settings(ranker, queries(events, np.array([2])), grid, k=1)
    assert settings == ScoringSettings(exclude_seen=True, history_similarity=1.0)
    tried = [
        (g["scoring"]["exclude_seen"], g["scoring"]["history_similarity"], g["val_recall@1"])
        for g in trace["grid"]
    ]
    assert (True, 0.5, 0.0) in tried and (True, 1.0, 1.0) in tried  # 0.5 is not enough (hand-checked)
    assert ScoringSettings.from_dict(settings.to_dict()) == settings
    # a bundle recording it: evaluate serves it as recorded (not retuned) and ranks with the item vectors
    split = queries(events, np.array([2]))
    for recorded, first in ((settings, 3), (ScoringSettings(exclude_seen=True), 2)):
        spec = MethodSpec("model", lambda params: ranker, repeat_grid=grid, fixed=recorded)
        outcome = tune_and_rank([spec], lambda r: r, split, split, recorded, 1, 1, 1)
        assert outcome.chosen["model"][True].settings == recorded
        assert outcome.rankings[True]["model"].tolist() == [[first]]
        # the other exclusion setting is tuned from scratch (not from the recorded weight), the similarity
        # tried on top of its best
        trace = outcome.tuning["model"]["grid"]
        other = [g["scoring"]["history_similarity"] for g in trace if not g["scoring"]["exclude_seen"]]
        assert other == [0.0, 0.25, 0.5, 1.0]


def test_the_history_similarity_weight_is_fitted_with_the_learned_score() -> None:
    # the method ranks new items 0 > 1 = 2 > 3; a buyer who had item 4 takes item 1 (next to it), one who had
    # item 5 takes item 2; every third buyer takes their own item back (a repeat score to learn)
    unit = lambda *v: np.array(v) / np.linalg.norm(v)  # noqa: E731
    vectors = np.stack(
        [unit(0, 0, 1), unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 1), unit(1, 0.15, 0), unit(0.15, 1, 0)]
    ).astype(np.float32)
    n = 90
    ids = np.tile(np.arange(4), (n, 1))
    scores = np.tile(np.array([1.0, 0.9, 0.9, 0.8], dtype=np.float32), (n, 1))
    had = np.where(np.arange(n) % 2 == 0, 4, 5)
    history = History(had[:, None], np.ones((n, 1), bool))
    history_scores = np.full((n, 1), 0.5, dtype=np.float32)
    targets = np.where(np.arange(n) % 3 == 0, had, had - 3)
    catalog = np.zeros((6, len(ITEM_FEATURES)), np.float32)
    args = (ids, scores, history, history_scores, targets)
    for exclude in (False, True):
        learned = fit_learned_score(
            *args, catalog_features=catalog, boost_pool=4, exclude_seen=exclude, item_vectors=vectors
        )
        assert learned is not None and learned.history_similarity > 0
        settings = ScoringSettings(
            exclude_seen=exclude,
            repeat_coefficients=learned.coefficients,
            history_similarity=learned.history_similarity,
        )
        top, _ = rank_candidates(*args[:4], settings, 2, catalog_features=catalog, item_vectors=vectors)
        new = targets != had
        assert (top[new, 0] == targets[new]).all()  # the item next to the buyer's, not the method's item 0
        if not exclude:
            assert (top[~new, :2] == had[~new, None]).any(axis=1).all()  # the repeats still make the list
    # buyers who take the method's best item, whatever they had: an item close to theirs is no likelier, and
    # a negative weight is served as 0
    learned = fit_learned_score(
        ids, scores, history, history_scores, np.zeros(n, dtype=np.int64), catalog_features=catalog,
        boost_pool=4, exclude_seen=True, item_vectors=vectors,
    )  # fmt: skip
    assert learned is not None and learned.history_similarity == 0


def test_the_fitted_similarity_weight_follows_the_grid_and_is_off_with_it() -> None:
    # 50 buyers of two interests (items 0 and 1) who all take item 3, next to item 0: the one buyer vector
    # points at item 2; the fitted weight lifts item 3; a grid of [0.0] turns the fitted weight off too
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [0.995, 0.0998]], dtype=np.float32)
    buyers = 50  # half of them fit first: at least learned_repeat.MIN_QUERIES
    events = EventLog(
        buyer=np.repeat(np.arange(buyers), 3).astype(np.int32),
        item=np.tile([0, 1, 3], buyers).astype(np.int32),
        event=np.full(3 * buyers, 2, dtype=np.int8),
        timestamp=np.tile(np.array([1, 2, 10]) * DAY_US, buyers).astype(np.int64),
        buyer_ids=[f"b{i}" for i in range(buyers)],
    )
    positions = np.arange(2, 3 * buyers, 3)
    dataset = HistoryDataset(events, positions, 100, WEIGHTS)
    catalog = np.zeros((4, len(ITEM_FEATURES)), np.float32)
    val = split_queries(events, positions, dataset, np.arange(4), 100, WEIGHTS, catalog)
    ranker = ModelRanker(MeanTower(), vectors)
    for weights, fitted in (([0.25], True), ([0.0], False)):
        grid = {"repeat_coefficients": [None, "fit"], "history_similarity": weights}
        settings, trace = choose_served_settings(ranker, val, grid, k=1)
        learned = [g["scoring"]["history_similarity"] for g in trace["grid"] if "kept" in g]
        assert learned and all((w not in (0.0, 0.25)) is fitted for w in learned)
        assert (settings.history_similarity > 0) is fitted and trace["chosen"] == float(fitted)


def test_when_the_refit_on_all_of_val_fails_the_first_halfs_fit_is_kept(monkeypatch) -> None:
    from twotower.evaluation import tuning

    calls: list[bool] = []

    def first_half_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(True)
        return fit_learned_score(*args, **kwargs) if len(calls) == 1 else None

    monkeypatch.setattr(tuning, "fit_learned_score", first_half_only)
    test_the_learned_boost_is_tried_with_seen_items_excluded()  # its choice needs the half's fit kept
    assert len(calls) >= 2


def test_history_similarity_for_a_method_without_item_vectors_is_refused() -> None:
    events = event_log()
    spec = MethodSpec(
        "popularity", lambda params: PopularityRanker(), repeat_grid={"history_similarity": [0.5]}
    )
    train = events.timestamp < 10 * DAY_US
    interactions = Interactions(events.buyer[train], events.item[train], np.ones(5), 4)
    with pytest.raises(ValueError, match="item vectors"):
        tune_and_rank(
            [spec], lambda r: r.fit(interactions), queries(events, VAL), queries(events, TEST), None, 1, 3, 1
        )
