"""export_bundle chooses the served scoring settings on the val split and records them in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.retrieval.test_bundle import make_catalog
from tests.retrieval.test_export import FIXTURE, RUN_CONFIG, tiny_module
from twotower.data.datamodule import HistoryDataset
from twotower.data.sequences import EventLog
from twotower.retrieval.bundle import BundleError, load_bundle
from twotower.retrieval.export import ExportSettings, export_bundle
from twotower.retrieval.index import IndexBuilder
from twotower.scoring import ScoringSettings

DAY_US = 86_400 * 10**6


def repeat_buyers(num_buyers: int = 12, num_items: int = 30) -> tuple[EventLog, np.ndarray]:
    """Each buyer buys one item 4 times, a day apart; the val targets are the last purchases (all repeats)."""
    buyer = np.repeat(np.arange(num_buyers), 4).astype(np.int32)
    item = ((buyer * 7) % num_items).astype(np.int32)
    event = np.full(len(buyer), 2, dtype=np.int8)
    timestamp = (np.tile(np.arange(4), num_buyers) * DAY_US).astype(np.int64)
    events = EventLog(buyer, item, event, timestamp, [f"b{i}" for i in range(num_buyers)])
    return events, np.arange(3, len(buyer), 4)


def export(tmp_path: Path, val: HistoryDataset | None, **settings) -> Path:
    return export_bundle(
        tiny_module(30),
        make_catalog(30),
        FIXTURE / "model.ckpt",
        index=IndexBuilder("flat"),
        settings=ExportSettings(str(tmp_path / "b"), **settings),
        run_config=RUN_CONFIG,
        val_dataset=val,
    )


def test_export_chooses_the_scoring_on_val_and_the_bundle_reads_it_back(tmp_path):
    events, positions = repeat_buyers()
    val = HistoryDataset(events, positions, 7, np.array([1.0, 5.0, 10.0], dtype=np.float32))
    grid = {"repeat_weight": [0.0, 1000.0], "max_repeat_items": [None, 3]}
    bundle = load_bundle(export(tmp_path, val, scoring_grid=grid))
    # every target is a repeat: exclusion can never find it, allowing seen items always does (the buyer
    # vector is the item's own vector; the first best setting of the grid wins)
    assert bundle.scoring == ScoringSettings(exclude_seen=False, repeat_weight=0.0)
    choice = bundle.manifest["scoring_choice"]
    assert choice["source"] == "val" and choice["queries"] == choice["val_queries"] == 12
    assert choice["chosen"] == 1.0 and choice["metric"] == "val recall@10"
    # exclusion once, allowed: (0, None), (0, 3), (1000, None), (1000, 3)
    assert len(choice["grid"]) == 5
    # a request that sets exclusion gets the best excluded setting on val; one that agrees, the served ones
    excluded = ScoringSettings.from_dict(bundle.manifest["scoring_other_exclusion"])
    assert excluded == ScoringSettings(exclude_seen=True) == bundle.scoring_for(True)
    assert "other_exclusion" not in choice and choice["other_exclusion_val"] == 0.0  # recorded once
    assert bundle.scoring_for(False) == bundle.scoring


def test_export_samples_val_queries_with_a_seed(tmp_path):
    events, positions = repeat_buyers()
    val = HistoryDataset(events, positions, 7, np.ones(3, dtype=np.float32))
    choice = load_bundle(export(tmp_path, val, scoring_queries=5)).manifest["scoring_choice"]
    assert (choice["queries"], choice["val_queries"], choice["seed"]) == (5, 12, 0)


def test_without_val_examples_the_configured_default_is_recorded_and_said(tmp_path):
    events, _ = repeat_buyers()
    default = {"exclude_seen": False, "repeat_weight": 0.3}
    for val in (None, HistoryDataset(events, np.zeros(0, np.int64), 7, np.ones(3, np.float32))):
        bundle = load_bundle(export(tmp_path, val, scoring_default=default))
        assert bundle.scoring == ScoringSettings(exclude_seen=False, repeat_weight=0.3)
        assert bundle.manifest["scoring_choice"] == {"source": "default", "reason": "no validation examples"}


def test_bundles_without_recorded_scoring_read_as_the_defaults():
    bundle = load_bundle(FIXTURE)
    assert "scoring" not in bundle.manifest and bundle.scoring == ScoringSettings()


def test_a_bundle_without_other_exclusion_settings_switches_the_served_ones_less_what_was_fitted(tmp_path):
    bundle = load_bundle(FIXTURE)
    learned = ScoringSettings(
        exclude_seen=False, repeat_coefficients=(0.1,) * 15, history_similarity=0.5, max_repeat_items=3
    )
    bundle.manifest["scoring"] = learned.to_dict()  # recorded before the other exclusion's settings were
    assert bundle.scoring_for(False) == learned
    assert bundle.scoring_for(True) == ScoringSettings(exclude_seen=True, max_repeat_items=3)
    for bad in (
        {"exclude_seen": True, "repeat_weight": -1},
        {"exclude_seen": False},
    ):  # invalid; same exclusion
        bundle.manifest["scoring_other_exclusion"] = bad
        with pytest.raises(BundleError, match="scoring_other_exclusion"):
            bundle.scoring_for(True)
    assert bundle.scoring_for(False) == learned  # the served setting does not read the other entry


def test_the_exporter_config_instantiates_with_a_capped_grid(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    for config_name in ("train", "export"):
        settings = instantiate(compose_config(tmp_path, [], config_name=config_name).exporter)
        assert settings.default_scoring() == ScoringSettings()
        assert None in settings.grid()["max_repeat_items"] and settings.scoring_queries == 20_000


def test_bad_scoring_config_fails_at_start_up():
    import pytest

    with pytest.raises(ValueError, match="scoring_grid must map scoring fields"):
        ExportSettings("b", scoring_grid={"repeat_wieght": [1.0]})
    with pytest.raises(ValueError, match="scoring_default"):
        ExportSettings("b", scoring_default={"exclude": True})
    with pytest.raises(ValueError, match="scoring_queries"):
        ExportSettings("b", scoring_queries=-1)
