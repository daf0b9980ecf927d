"""Training throughput: cached text features (twotower) vs re-encoding product text every step (the seeds).

    python experiments/bench_training_throughput.py [--steps 20] [--products 2000] [--buyers 1000]

Same data, same model, same process; each variant runs `--steps` optimizer steps after one warm-up step and
reports examples/s. The re-encoding variant runs the frozen text encoder over the text of every item the batch
touches (histories, targets, negatives), as the seeds' training step did.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sample import ensure_sample
from twotower.model.module import TwoTowerModule
from twotower.text.encoders import UniversalSentenceEncoder


class ReencodingModule(TwoTowerModule):
    """The seeds' way: product text through the encoder inside every training step."""

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        texts = [self._texts[i] for i in items.tolist()]
        text = torch.from_numpy(self.encoder.encode(texts))
        return self.item_tower(text, self.brand_index[items], self.category_index[items])


def throughput(
    module_class: type, datamodule: TwoTowerDataModule, encoder, steps: int, cache_dir: str
) -> float:
    torch.manual_seed(0)
    catalog = datamodule.catalog
    module = module_class(
        encoder.dim,
        catalog.brand_vocab.tokens,
        catalog.category_vocab.tokens,
        text_encoder=encoder,
        feature_cache_dir=cache_dir,
    )
    module.attach_catalog(catalog, datamodule.train_item_counts)
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())

    def step() -> int:
        batch = next(batches)
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch["target"])

    step()  # warm-up
    start, examples = time.perf_counter(), 0
    for _ in range(steps):
        examples += step()
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--buyers", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_sample(Path(tmp) / "data", products=args.products, buyers=args.buyers, seed=0)
        datamodule = TwoTowerDataModule(
            str(paths["events"]), str(paths["products"]), batch_size=args.batch_size
        )
        datamodule.setup()
        encoder = UniversalSentenceEncoder()
        cache = str(Path(tmp) / "cache")
        fill_start = time.perf_counter()
        TwoTowerModule(
            encoder.dim, ["<UNK>"], ["<UNK>"], text_encoder=encoder, feature_cache_dir=cache
        )._encode_texts_once(datamodule.catalog.texts)
        fill_seconds = time.perf_counter() - fill_start
        cached = throughput(TwoTowerModule, datamodule, encoder, args.steps, cache)
        reencoded = throughput(ReencodingModule, datamodule, encoder, args.steps, cache)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {subprocess.getoutput('nproc')} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "products": len(datamodule.catalog),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "cache_fill_seconds_once": round(fill_seconds, 1),
        "cached_examples_per_s": round(cached, 1),
        "reencode_examples_per_s": round(reencoded, 1),
        "speedup": round(cached / reencoded, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
