"""Issue 9 item 3: a checkpoint that would run code when unpickled is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.serving.conftest import crafted_checkpoint
from twotower.model.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from twotower.model.module import load_module
from twotower.serving.recommender import Recommender, RecommenderSettings
from twotower.serving.reload import Coordinator
from twotower.serving.workers import RetrieveAPI


@pytest.fixture()
def crafted_bundle(make_bundle, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny bundle whose model.ckpt carries the payload, checksums updated to match."""
    from twotower.retrieval.bundle import load_bundle, write_bundle

    marker = tmp_path / "pwned"
    source = load_bundle(make_bundle("tiny"))
    ckpt = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    bundle = write_bundle(
        tmp_path / "crafted",
        embeddings=source.embeddings,
        catalog=source.catalog,
        index=source.index,
        checkpoint_path=ckpt,
        config=source.manifest["config"],
    )
    return bundle, marker


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    # guards the test itself: weights_only=False would create the marker
    marker = tmp_path / "pwned"
    torch.load(crafted_checkpoint(tmp_path / "c.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_read_checkpoint_refuses_code_and_round_trips_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="refusing to load c.ckpt"):
        read_checkpoint(crafted_checkpoint(tmp_path / "c.ckpt", marker))
    assert not marker.exists()
    path = write_checkpoint(tmp_path / "ok.ckpt", {"w": torch.ones(2)}, {"buyer_tower": {"options": {}}})
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")


def test_recommender_refuses_a_crafted_bundle(crafted_bundle: tuple[Path, Path]) -> None:
    bundle, marker = crafted_bundle
    with pytest.raises(CheckpointError, match="refusing to load model.ckpt"):
        Recommender.from_bundle(bundle, RecommenderSettings())
    assert not marker.exists()


def test_reload_refuses_a_crafted_bundle(tiny_bundle: Path, crafted_bundle: tuple[Path, Path]) -> None:
    bundle, marker = crafted_bundle
    api = RetrieveAPI(str(tiny_bundle), RecommenderSettings(), Coordinator({}, str(tiny_bundle)))
    api.pre_setup()
    api.setup("cpu")
    before = api.recommender
    api._apply({"generation": 1, "path": str(bundle), "rollback": False})
    assert api.recommender is before and "refusing to load model.ckpt" in api._error
    assert not marker.exists()


def test_load_module_refuses_a_crafted_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="refusing"):
        load_module(crafted_checkpoint(tmp_path / "model.ckpt", marker))
    assert not marker.exists()
