"""Per-request costs around the model on the /retrieve path, measured in one process (issue 12's untried items).

    python experiments/bench_request_path.py [--interactions 20] [--k 10] [--repeat 2000]

Three places where the service spends time that a no-op LitServe endpoint does not, each beside its leaner
alternative:
- front end: parsing + validating the body as FastAPI does (json.loads, then RetrieveRequest.model_validate)
  vs orjson.loads alone (what a hand-checked plain decode would start from);
- the queue hop to the worker: a pickle round trip of the validated request vs of plain tuples;
- worker: building the answer (10 item dicts with catalog fields) and orjson-encoding it vs splicing
  pre-encoded per-product fragments (orjson.Fragment).
Each figure is the median over `--repeat` calls, in microseconds; the sum of the savings is what these
alternatives could take off a request's latency.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import orjson

from twotower.serving.schemas import RetrieveRequest


def median_us(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def request_body(interactions: int, k: int) -> bytes:
    events = ["view", "add_to_cart", "purchase"]
    return orjson.dumps(
        {
            "buyer_id": "buyer-000123",
            "recent_interactions": [
                {
                    "product_id": f"P{1000 + i:06d}",
                    "event_type": events[i % 3],
                    "timestamp": f"2026-11-{1 + i % 27:02d}T10:{i % 60:02d}:00Z",
                }
                for i in range(interactions)
            ],
            "k": k,
        }
    )


def catalog(n: int, seed: int = 0) -> dict[str, list[str]]:
    """Catalog fields of realistic length (Arabic title ~40 chars, description ~200)."""
    rng = np.random.default_rng(seed)
    letters = [chr(c) for c in range(0x0621, 0x064B)]

    def text(length: int) -> str:
        return "".join(rng.choice(letters, length)).replace(letters[0], " ")

    return {
        "product_id": [f"P{i:06d}" for i in range(n)],
        "title": [text(40) for _ in range(n)],
        "description": [text(200) for _ in range(n)],
        "brand": [text(10) for _ in range(n)],
        "category": [text(12) for _ in range(n)],
        "photo_url": [f"https://cdn.example.com/p/{i}.jpg" for i in range(n)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()

    body = request_body(args.interactions, args.k)
    validated = RetrieveRequest.model_validate(json.loads(body))
    plain = orjson.loads(body)
    as_tuples = (
        plain["buyer_id"],
        tuple((i["product_id"], i["event_type"], i["timestamp"]) for i in plain["recent_interactions"]),
        plain["k"],
    )
    fields = catalog(args.products)
    names = list(fields)
    rows = list(range(0, args.products, max(1, args.products // args.k)))[: args.k]
    scores = [0.9 - 0.01 * i for i in range(len(rows))]
    # pre-encoded: everything of an item but its score, once per product at start-up
    prefixes = [
        orjson.dumps({name: fields[name][r] for name in names})[:-1] + b',"score":'
        for r in range(args.products)
    ]

    def items_as_dicts() -> bytes:
        items = [
            {**{name: fields[name][r] for name in names}, "score": s}
            for r, s in zip(rows, scores, strict=True)
        ]
        return orjson.dumps(
            {"items": items, "unknown_product_ids": [], "fallback": None, "model_version": "v"}
        )

    def items_as_fragments() -> bytes:
        items = [
            orjson.Fragment(prefixes[r] + orjson.dumps(s) + b"}") for r, s in zip(rows, scores, strict=True)
        ]
        return orjson.dumps(
            {"items": items, "unknown_product_ids": [], "fallback": None, "model_version": "v"}
        )

    assert orjson.loads(items_as_dicts()) == orjson.loads(items_as_fragments())
    n = args.repeat
    figures = {
        "front end: json.loads + RetrieveRequest.model_validate": median_us(
            lambda: RetrieveRequest.model_validate(json.loads(body)), n
        ),
        "front end: orjson.loads only": median_us(lambda: orjson.loads(body), n),
        "queue hop: pickle round trip, validated request": median_us(
            lambda: pickle.loads(pickle.dumps(validated, protocol=pickle.HIGHEST_PROTOCOL)), n
        ),
        "queue hop: pickle round trip, plain tuples": median_us(
            lambda: pickle.loads(pickle.dumps(as_tuples, protocol=pickle.HIGHEST_PROTOCOL)), n
        ),
        "worker: item dicts + orjson.dumps": median_us(items_as_dicts, n),
        "worker: pre-encoded fragments + orjson.dumps": median_us(items_as_fragments, n),
    }
    print(
        f"machine: {platform.machine()}, python {platform.python_version()}; {args.interactions} interactions, "
        f"k={args.k}, median of {n} calls"
    )
    print("| step | µs |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} |")
    values = list(figures.values())
    saving = (values[0] - values[1]) + (values[2] - values[3]) + (values[4] - values[5])
    print(f"\nat most {saving:.0f} µs per request saved by all three alternatives together")


if __name__ == "__main__":
    main()
