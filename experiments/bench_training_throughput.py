"""Training throughput: sequence windows (every next-item target of a window in one causal pass) vs one
history per target, and cached text features vs re-encoding product text every step (the seeds).

    python experiments/bench_training_throughput.py [--steps 20] [--products 2000] [--buyers 1000]
        [--aggregation transformer] [--events PATH --products-path PATH] [--device cuda] [--precision bf16]

Same data, same model, same process; each variant runs `--steps` optimizer steps after one warm-up step and
reports examples (next-item targets)/s. The re-encoding variant runs the frozen text encoder over the text of
every item the batch touches, as the seeds' training step did.
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
from lightning.fabric.utilities.apply_func import move_data_to_device

from twotower.config import MATMUL_PRECISIONS
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sample import ensure_sample
from twotower.model.buyer_tower import BuyerTowerConfig
from twotower.model.item_tower import ItemTowerConfig
from twotower.model.module import TwoTowerModule
from twotower.text.encoders import UniversalSentenceEncoder


class ReencodingModule(TwoTowerModule):
    """The seeds' way: product text through the encoder inside every training step."""

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        texts = [self._texts[i] for i in items.tolist()]
        text = torch.from_numpy(self.encoder.encode(texts)).to(items.device)
        return self.item_tower(
            text, self.brand_index[items], self.category_index[items], self.id_index[items]
        )


def throughput(
    module_class: type,
    datamodule: TwoTowerDataModule,
    encoder,
    steps: int,
    cache_dir: str,
    sequence: bool,
    aggregation: str,
    device: torch.device,
    precision: str,
) -> float:
    torch.manual_seed(0)
    catalog = datamodule.catalog
    datamodule.sequence_training = sequence
    module = module_class(
        encoder.dim,
        catalog.brand_vocab.tokens,
        catalog.category_vocab.tokens,
        text_encoder=encoder,
        feature_cache_dir=cache_dir,
        item_tower=ItemTowerConfig(),
        buyer_tower=BuyerTowerConfig(aggregation, {}),
    )
    module.attach_catalog(catalog, datamodule.train_item_counts)
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    module.to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> int:
        batch = move_data_to_device(next(batches), device)  # as Lightning moves a batch
        with autocast:
            loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch.target)

    def synchronize() -> None:  # CUDA runs asynchronously: time finished work only
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    synchronize()
    start, examples = time.perf_counter(), 0
    for _ in range(steps):
        examples += step()
    synchronize()
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--buyers", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sequence-batch-size", type=int, default=32)
    parser.add_argument("--aggregation", default="transformer")
    parser.add_argument("--events", default=None, help="an events file instead of the generated sample")
    parser.add_argument("--products-path", default=None)
    parser.add_argument("--skip-reencode", action="store_true")
    parser.add_argument("--cache-dir", default=None, help="text feature cache kept between runs")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when torch sees a GPU)")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16"],
        help="bf16: autocast, as trainer=gpu's mixed precision",
    )
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=list(MATMUL_PRECISIONS),
        help="torch.set_float32_matmul_precision, as the float32_matmul_precision config (high: TF32 on CUDA)",
    )
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.events:
            paths = {"events": args.events, "products": args.products_path}
        else:
            paths = ensure_sample(Path(tmp) / "data", products=args.products, buyers=args.buyers, seed=0)
        datamodule = TwoTowerDataModule(
            str(paths["events"]),
            str(paths["products"]),
            batch_size=args.batch_size,
            sequence_batch_size=args.sequence_batch_size,
        )
        datamodule.setup()
        encoder = UniversalSentenceEncoder()
        cache = args.cache_dir or str(Path(tmp) / "cache")
        fill_start = time.perf_counter()
        TwoTowerModule(
            encoder.dim, ["<UNK>"], ["<UNK>"], text_encoder=encoder, feature_cache_dir=cache
        )._encode_texts_once(datamodule.catalog.texts)
        fill_seconds = time.perf_counter() - fill_start
        common = (encoder, args.steps, cache)
        settings = (args.aggregation, device, args.precision)
        sequence = throughput(TwoTowerModule, datamodule, *common, True, *settings)
        cached = throughput(TwoTowerModule, datamodule, *common, False, *settings)
        reencoded = (
            None
            if args.skip_reencode
            else throughput(ReencodingModule, datamodule, *common, False, *settings)
        )
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {subprocess.getoutput('nproc')} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "matmul_precision": args.matmul_precision,
        "products": len(datamodule.catalog),
        "aggregation": args.aggregation,
        "batch_size": args.batch_size,
        "sequence_batch_size (windows)": args.sequence_batch_size,
        "steps": args.steps,
        "cache_fill_seconds_once": round(fill_seconds, 1),
        "sequence_examples_per_s": round(sequence, 1),
        "per_target_examples_per_s": round(cached, 1),
        "sequence_speedup": round(sequence / cached, 2),
        "reencode_per_target_examples_per_s": None if reencoded is None else round(reencoded, 1),
        "cache_speedup": None if reencoded is None else round(cached / reencoded, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
