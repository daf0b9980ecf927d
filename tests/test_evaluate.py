"""Offline evaluation: metric definitions, data selection, catalog mapping, and the CLI end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from twotower.config import ConfigError
from twotower.data.catalog import Catalog
from twotower.evaluate import (
    catalog_mapping,
    check_referenced,
    data_overridden,
    method_specs,
    select_data_config,
)
from twotower.evaluation.report import (
    evaluate_rankings,
    format_table,
    history_length_slices,
    intra_list_diversity,
    popularity_percentile,
    ranking_metrics,
)
from twotower.retrieval.bundle import BundleError, load_bundle
from twotower.scoring import ScoringSettings


@pytest.fixture(scope="session")
def tiny_bundle(trained_root: Path) -> Path:
    """The bundle of the session's shared tiny training run (tests/conftest.py); test_sanity uses it too."""
    return trained_root / "outputs" / "latest"


def catalog(ids: list[str], aliases: dict[str, str] | None = None) -> Catalog:
    frame = pd.DataFrame(
        {
            "product_id": ids,
            "title": ids,
            "description": [""] * len(ids),
            "brand": [""] * len(ids),
            "category": [""] * len(ids),
            "photo_url": [""] * len(ids),
            "aliases": [[a for a, c in (aliases or {}).items() if c == i] for i in ids],
        }
    )
    return Catalog.from_frame(frame)


# -- data selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], False),
        (["bundle=x", "split=val", "data_source=config"], False),
        (["data=csv"], True),
        (["data.events_path=/x.csv"], True),
        (["+data.extra=1"], True),
        (["k_values=[1,5]", "data.sample.products=300"], True),
    ],
)
def test_data_overridden_detects_the_data_group_only(overrides: list[str], expected: bool) -> None:
    assert data_overridden(overrides) is expected


def _cfg(source: str = "auto") -> OmegaConf:
    return OmegaConf.create(
        {
            "data_source": source,
            "paths": {"output_dir": "/tmp/eval-out"},
            "data": {
                "_target_": "twotower.data.datamodule.TwoTowerDataModule",
                "events_path": "composed.csv",
            },
        }
    )


RECORDED = {"_target_": "twotower.data.datamodule.TwoTowerDataModule", "events_path": "trained.csv"}


def test_auto_prefers_the_bundles_data_unless_data_was_overridden() -> None:
    chosen = select_data_config(_cfg(), RECORDED, overridden=False)
    assert chosen.events_path == "trained.csv"
    assert chosen.report_path == "/tmp/eval-out/data_report.json"  # not the training run's dir
    assert select_data_config(_cfg(), RECORDED, overridden=True).events_path == "composed.csv"


def test_explicit_data_sources() -> None:
    assert select_data_config(_cfg("config"), RECORDED).events_path == "composed.csv"
    assert select_data_config(_cfg("bundle"), RECORDED, overridden=True).events_path == "trained.csv"
    with pytest.raises(ConfigError, match="records no data config"):
        select_data_config(_cfg("bundle"), {})
    with pytest.raises(ConfigError, match="data_source='nope'"):
        select_data_config(_cfg("nope"), RECORDED)


def test_auto_falls_back_to_the_composed_data_when_the_bundle_has_none() -> None:
    assert select_data_config(_cfg(), {"max_history": 5}).events_path == "composed.csv"


# -- catalog mapping -----------------------------------------------------------------------------------


def test_catalog_mapping_follows_product_ids_not_row_order() -> None:
    data = catalog(["a", "b", "c", "d"])
    bundle = catalog(["c", "a", "x", "b"])
    np.testing.assert_array_equal(catalog_mapping(data, bundle), [1, 3, 0, -1])


def test_catalog_mapping_resolves_duplicates_through_aliases() -> None:
    data = catalog(["a", "b2"], aliases={"b": "b2"})  # canonical b2 here, b in the bundle
    bundle = catalog(["b", "a"])
    np.testing.assert_array_equal(catalog_mapping(data, bundle), [1, 0])


def test_products_missing_from_the_bundle_fail_clearly(tmp_path: Path) -> None:
    data = catalog(["a", "b", "c", "d"])
    mapping = catalog_mapping(data, catalog(["a", "b", "c"]))
    check_referenced(mapping, np.array([0, 1, 2]), data, tmp_path)  # d is never referenced: fine
    with pytest.raises(BundleError, match=r"1 products .*\['d'\].*twotower.export"):
        check_referenced(mapping, np.array([0, 3, 3]), data, tmp_path)


# -- metrics -------------------------------------------------------------------------------------------


def test_popularity_percentile_ranks_with_ties() -> None:
    np.testing.assert_allclose(popularity_percentile(np.array([0, 0, 5, 10])), [0.375, 0.375, 0.75, 1.0])


def test_intra_list_diversity() -> None:
    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert intra_list_diversity(np.array([[0, 1]]), vectors) == pytest.approx(0.0)  # same direction
    assert intra_list_diversity(np.array([[0, 2]]), vectors) == pytest.approx(1.0)  # orthogonal
    # [0, 1, 2]: pairs (0,1)=0, (0,2)=1, (1,2)=1 -> 2/3; averaged with the first list -> 1/3
    assert intra_list_diversity(np.array([[0, 1, 2], [0, 1, 1]]), vectors) == pytest.approx(1 / 3)


def test_history_length_slices_partition_the_queries() -> None:
    lengths = np.array([1, 2, 4, 5, 9, 10, 19, 20, 49, 50, 500])
    slices = history_length_slices(lengths)
    assert list(slices) == [
        "history_1",
        "history_2-4",
        "history_5-9",
        "history_10-19",
        "history_20-49",
        "history_50+",
    ]
    assert sum(mask.astype(int) for mask in slices.values()).tolist() == [1] * len(lengths)
    assert slices["history_50+"].tolist()[-2:] == [True, True]


def test_ranking_metrics_definitions() -> None:
    topk = np.array([[3, 1, 2], [0, 1, 2], [2, 0, 1], [0, 2, 1]])
    targets = np.array([3, 1, 5, 2])  # ranks 0, 1, absent, 1
    counts = np.array([10.0, 5.0, 1.0, 0.0, 0.0, 0.0])
    out = ranking_metrics(
        topk,
        targets,
        [1, 2],
        num_items=6,
        popularity_pct=popularity_percentile(counts),
        diversity_vectors=np.eye(6, dtype=np.float32),
        list_k=2,
    )
    assert out["recall@1"] == pytest.approx(0.25) and out["hit_rate@1"] == out["recall@1"]
    assert out["recall@2"] == pytest.approx(0.75)
    assert out["precision@2"] == pytest.approx(0.375)
    assert out["ndcg@2"] == pytest.approx((1 + 2 / np.log2(3)) / 4)
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert out["coverage@1"] == pytest.approx(3 / 6)  # items 3, 0, 2
    assert out["diversity@2"] == pytest.approx(1.0)  # one-hot vectors: every pair orthogonal
    pct = popularity_percentile(counts)
    assert out["popularity_percentile@2"] == pytest.approx(pct[topk[:, :2]].mean())
    assert out["novelty@2"] == pytest.approx(1 - out["popularity_percentile@2"])


def test_evaluate_rankings_shape_and_slices() -> None:
    rankings = {"model": np.array([[1, 0], [0, 1]]), "popularity": np.array([[0, 1], [0, 1]])}
    targets = np.array([1, 2])
    results = evaluate_rankings(
        rankings,
        targets,
        [1, 2],
        num_items=3,
        item_counts=np.array([3.0, 1.0, 0.0]),
        diversity_vectors=np.eye(3, dtype=np.float32),
        slices={"cold": np.array([False, True])},
    )
    assert set(results) == {"model", "popularity", "slices"}
    assert results["model"]["recall@1"] == pytest.approx(0.5) and results["popularity"]["recall@1"] == 0.0
    assert results["slices"]["cold"]["queries"] == 1
    assert results["slices"]["cold"]["model"]["recall@2"] == 0.0
    assert "coverage@1" not in results["slices"]["cold"]["model"]  # whole-list metrics are overall only
    table = format_table({m: results[m] for m in rankings}, ["recall@1", "mrr"])
    assert table.splitlines()[0].split() == ["method", "recall@1", "mrr"]
    assert table.splitlines()[2].split()[:2] == ["model", "0.5000"]


def test_the_models_other_exclusion_is_the_bundles_recorded_one_unless_the_settings_come_from_config(
    tiny_bundle: Path,
) -> None:
    bundle = load_bundle(tiny_bundle)  # the session's bundle: edited in memory only
    served = ScoringSettings(exclude_seen=False, repeat_weight=0.3)
    other = ScoringSettings(exclude_seen=True, history_similarity=0.5)
    bundle.manifest.update(scoring=served.to_dict(), scoring_other_exclusion=other.to_dict())
    vectors = np.zeros((len(bundle.catalog), 2), np.float32)
    for source, expected in (("auto", other), ("bundle", other), ("config", None)):
        cfg = OmegaConf.create(
            {
                "use_index": False,
                "baselines": {},
                "scoring": {"source": source, "grid": {}, "history_similarity": []},
            }
        )
        (model,) = method_specs(cfg, bundle, vectors, served)
        assert model.fixed == served and model.fixed_other == expected
    (model,) = method_specs(cfg, bundle, vectors, None)  # nothing recorded: both are chosen on val
    assert model.fixed is None and model.fixed_other is None


# -- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_cli_on_a_tiny_bundle(tiny_bundle: Path) -> None:
    root = tiny_bundle.parent.parent
    out = root / "eval-run"
    command = [
        sys.executable,
        "-m",
        "twotower.evaluate",
        f"paths.root_dir={root}",
        f"hydra.run.dir={out}",
        "k_values=[1,5,10,20,50]",
        "use_index=true",
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "served scoring" in done.stdout and "chosen on val" in done.stdout
    assert done.stdout.count("recall@10") >= 3  # the methods table, served vs other, the slice tables

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    methods = ("model", "popularity", "recent_popularity", "item_knn", "text_only", "repeat", "repeat_knn")
    assert set(metrics) == {*methods, "model_index", "slices", "meta", "other_exclusion", "scoring", "tuning"}
    assert metrics["meta"]["methods"] == ["model", "model_index", *methods[1:]]  # the table's rows, in order
    served = ScoringSettings.from_dict(
        metrics["scoring"]
    )  # the model's best on val (the bundle records none)
    assert metrics["other_exclusion"]["exclude_seen"] is not served.exclude_seen
    other = ScoringSettings.from_dict(metrics["other_exclusion"]["scoring"])  # the model's settings there
    assert other.exclude_seen is not served.exclude_seen
    assert set(metrics["other_exclusion"]) >= {*methods, "slices"}
    for method in methods:  # every method's choice per exclusion setting, with the grid it came from
        assert {"exclude_seen=true", "exclude_seen=false", "grid"} <= set(metrics["tuning"][method])
    assert len(metrics["tuning"]["item_knn"]["grid"]) >= 5
    # the model through the bundle's exact (flat) index ranks as the exact model does
    assert metrics["model_index"]["recall@10"] == pytest.approx(metrics["model"]["recall@10"], abs=2e-3)
    for method in methods:
        for k in (1, 5, 10, 20, 50):
            for name in ("recall", "precision", "ndcg", "hit_rate", "coverage"):
                assert 0.0 <= metrics[method][f"{name}@{k}"] <= 1.0
        for name in ("mrr", "diversity@10", "novelty@10", "popularity_percentile@10"):
            assert 0.0 <= metrics[method][name] <= 1.0
    assert {"warm", "cold", "repeat", "new_item", "history_1", "history_50+"} <= set(metrics["slices"])
    assert (
        metrics["slices"]["warm"]["queries"] + metrics["slices"]["cold"]["queries"]
        == metrics["meta"]["queries"]
    )
    assert (
        metrics["slices"]["repeat"]["queries"] + metrics["slices"]["new_item"]["queries"]
        == metrics["meta"]["queries"]
    )
    assert metrics["popularity"]["coverage@10"] == pytest.approx(10 / metrics["meta"]["candidates"])
    assert metrics["model"]["recall@10"] > metrics["popularity"]["recall@10"]
    # with seen items allowed, the repeat baseline ranks the buyer's own items first
    allowed = metrics if not served.exclude_seen else metrics["other_exclusion"]
    assert (
        allowed["slices"]["repeat"]["repeat"]["recall@10"]
        > allowed["slices"]["repeat"]["popularity"]["recall@10"]
    )
