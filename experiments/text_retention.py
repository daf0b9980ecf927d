"""Text retention of a trained bundle's item tower (see twotower.model.retention), measured after the fact.

    PYTHONPATH=. python experiments/text_retention.py BUNDLE_DIR [--queries 1000]

Uses the sample generator's spelling noise (twotower.data.sample.noise) where it exists; before that module
is merged, this experiment alone falls back to a local case + typo noise for Latin script (stated in the
output), so Online Retail (English titles) can be measured on this branch.
"""

from __future__ import annotations

import argparse
import json
import string

import numpy as np
import torch

from twotower.assembly import build_text_encoder
from twotower.model.module import load_module
from twotower.model.retention import default_noise, retention_queries, text_retention
from twotower.retrieval.bundle import load_bundle


def latin_case_and_typos(text: str, rng: np.random.Generator) -> str:
    """Local stand-in noise: random case per word, then one or two character typos (drop/swap/replace)."""
    words = [w.lower() if rng.random() < 0.5 else w.title() for w in text.split()]
    chars = list(" ".join(words))
    for _ in range(int(rng.integers(1, 3))):
        if len(chars) < 3:
            break
        i = int(rng.integers(0, len(chars) - 1))
        kind = rng.integers(0, 3)
        if kind == 0:
            del chars[i]
        elif kind == 1:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = string.ascii_lowercase[int(rng.integers(0, 26))]
    return "".join(chars)


def measure(bundle_dir: str, queries: int = 1000) -> dict:
    bundle = load_bundle(bundle_dir, load_index=False)
    hparams = torch.load(bundle.checkpoint_path, map_location="cpu", weights_only=False)["hyper_parameters"]
    encoder = build_text_encoder(hparams["text_encoder_config"])
    module = load_module(bundle.checkpoint_path, text_encoder=encoder).eval()
    module.attach_catalog(bundle.catalog)
    try:
        noise, noise_name = default_noise(), "twotower.data.sample.noise.noisy_spelling"
    except ImportError:
        noise, noise_name = latin_case_and_typos, "local latin_case_and_typos (experiment-only fallback)"
    texts, sources = retention_queries(list(bundle.catalog.titles), noise, queries, seed=0)
    raw = torch.from_numpy(encoder.encode(texts))
    result = text_retention(
        raw,
        torch.from_numpy(sources),
        module.text_features,
        module.embed_catalog(),
        module.item_tower.text_path,
    )
    return {"noise": noise_name, **result.__dict__}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(measure(args.bundle, args.queries), indent=2))


if __name__ == "__main__":
    main()
