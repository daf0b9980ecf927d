"""Load benchmark of POST /retrieve over loopback HTTP with a 100K-product bundle, beside a no-op LitServe.

Builds (once, cached under --workdir) a synthetic bundle: the generated Arabic sample catalog with
--products products, random clustered 384-d embeddings, a buyer-tower checkpoint (weighted_avg), and one
bundle per index kind. For each target (the no-op LitServe endpoint first, with the same batching settings,
then `python -m twotower.serve` on each bundle) it sends --requests requests at concurrency 1 and
--concurrent-requests at concurrency 16 (asyncio + aiohttp, keep-alive), and prints p50/p95/p99 latency,
requests/s and the ratio of p50 to the no-op endpoint's p50 measured in the same run.

    python experiments/bench_serving.py --products 100000 --kinds flat hnsw torch_exact
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import litserve as ls
import numpy as np

from twotower.serving.launcher import LiveServer, free_port

EVENTS = ("view", "add_to_cart", "purchase")


# -- the no-op LitServe endpoint (same process layout and batching as the real server) ----------------------
class Noop(ls.LitAPI):
    """Returns its input: the cost of LitServe itself (HTTP, queues, batching), nothing else."""

    def setup(self, device: str) -> None:
        pass

    def predict(self, x: object) -> object:
        return x  # batched: a list in, one output per input out


def run_noop_server(port: int, max_batch_size: int, batch_timeout: float) -> None:
    api = Noop(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/retrieve")
    ls.LitServer(api, accelerator="cpu").run(
        host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False, log_level="warning"
    )


# -- synthetic bundle ---------------------------------------------------------------------------------------
def build_bundles(
    workdir: Path, products: int, kinds: list[str], dim: int = 384, seed: int = 0
) -> dict[str, Path]:
    from twotower.data.catalog import load_catalog
    from twotower.data.sample import generate_sample
    from twotower.model.checkpoint import write_checkpoint
    from twotower.retrieval.bundle import write_bundle
    from twotower.retrieval.index import IndexBuilder

    out = {k: workdir / f"bundle_{products}_{k}" for k in kinds}
    if all((p / "manifest.json").is_file() for p in out.values()):
        return out
    data = workdir / f"sample_{products}"
    if not (data / "products.csv").is_file():
        generate_sample(data, products=products, buyers=50, seed=seed, events_per_buyer=5)
    catalog = load_catalog(data / "products.csv", data / "photos.csv")
    rng = np.random.default_rng(seed)
    n = len(catalog)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    embeddings = centers[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    catalog.popularity = rng.zipf(1.5, n).astype(np.float32)
    ckpt = write_checkpoint(
        workdir / "weighted_avg.ckpt",
        {},
        {
            "item_tower": {"output_dim": dim},
            "buyer_tower": {"aggregation_method": "weighted_avg", "options": {}},
        },
    )
    for kind, path in out.items():
        if (path / "manifest.json").is_file():
            continue
        t0 = time.perf_counter()
        index = IndexBuilder(kind).build(embeddings)
        print(f"built {kind} index over {n} x {dim} in {time.perf_counter() - t0:.1f} s", flush=True)
        write_bundle(
            path,
            embeddings=embeddings,
            catalog=catalog,
            index=index,
            checkpoint_path=ckpt,
            config={},
            metrics={},
            counts={},
            text_encoder_id="synthetic",
        )
    return out


# -- load ---------------------------------------------------------------------------------------------------
def make_bodies(product_ids: list[str], count: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        picks = rng.choice(len(product_ids), size=int(rng.integers(1, 21)), replace=False)
        interactions = [
            {"product_id": product_ids[i], "event_type": EVENTS[int(rng.integers(0, 3))]} for i in picks
        ]
        bodies.append(json.dumps({"recent_interactions": interactions, "k": 10}).encode())
    return bodies


async def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[np.ndarray, float, int]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    queue = list(reversed(bodies))
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = list(bodies[:50])
        for body in warm:  # warm-up, not measured
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return np.asarray(latencies) * 1000, len(latencies) / elapsed, failures


def measure(url: str, bodies: list[bytes], concurrency: int) -> dict:
    lat, rps, failures = asyncio.run(_load(url, bodies, concurrency))
    return {
        "c": concurrency,
        "n": len(lat),
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "rps": rps,
        "failures": failures,
    }


def idle_cpu(bundle: Path, workdir: Path, seconds: float, pythonpath: str | None = None) -> dict:
    """Cores used by an idle `python -m twotower.serve` (main process + every child), over `seconds`."""
    import psutil

    env = {"PYTHONPATH": pythonpath} if pythonpath else None
    with LiveServer(bundle, workdir, env).wait_ready(600) as server:
        time.sleep(5)  # start-up work (warm-up, first heartbeats) is over
        main = psutil.Process(server.pid)
        processes = [main, *main.children(recursive=True)]

        def used() -> float:
            total = 0.0
            for p in processes:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            return total

        before, t0 = used(), time.monotonic()
        time.sleep(seconds)
        cores = (used() - before) / (time.monotonic() - t0)
    return {
        "code": pythonpath or "this tree",
        "processes": len(processes),
        "seconds": seconds,
        "cores": cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "torch_exact"])
    parser.add_argument("--requests", type=int, default=2000, help="requests at concurrency 1")
    parser.add_argument("--concurrent-requests", type=int, default=4000, help="requests at concurrency 16")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.001)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/twotower_bench"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--noop-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help="instead of the load test: CPU an idle server uses over this many seconds (default batching)",
    )
    parser.add_argument(
        "--compare-pythonpath",
        default=None,
        help="with --idle-seconds: also measure the server importing twotower from this directory (e.g. main)",
    )
    args = parser.parse_args()
    if args.noop_server is not None:
        run_noop_server(args.noop_server, args.max_batch_size, args.batch_timeout)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundles = build_bundles(args.workdir, args.products, args.kinds)
    if args.idle_seconds:
        bundle = next(iter(bundles.values()))
        this_tree = str(Path(__file__).resolve().parents[1])
        for pythonpath in filter(None, [args.compare_pythonpath, this_tree]):
            print(json.dumps(idle_cpu(bundle, args.workdir, args.idle_seconds, pythonpath)), flush=True)
        return
    ids = json.loads((next(iter(bundles.values())) / "product_ids.json").read_text(encoding="utf-8"))
    bodies1, bodies16 = make_bodies(ids, args.requests), make_bodies(ids, args.concurrent_requests, seed=2)
    batching = [f"server.max_batch_size={args.max_batch_size}", f"server.batch_timeout={args.batch_timeout}"]
    targets = [
        (
            "noop",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--max-batch-size",
                str(args.max_batch_size),
                "--batch-timeout",
                str(args.batch_timeout),
                "--noop-server",
            ],
        )
    ]
    targets += [
        (
            kind,
            [
                sys.executable,
                "-m",
                "twotower.serve",
                f"bundle={path}",
                f"hydra.run.dir={args.workdir}/hydra",
                *batching,
            ],
        )
        for kind, path in bundles.items()
    ]
    results = []
    for name, command in targets:
        port = free_port()
        command = [*command, str(port)] if name == "noop" else [*command, f"port={port}"]
        # no API keys: LiveServer clears them, so /retrieve is open as in the no-op endpoint
        with LiveServer(None, args.workdir, None, command=command, port=port).wait_ready(600) as server:
            for concurrency, bodies in ((1, bodies1), (16, bodies16)):
                row = {"target": name, **measure(f"{server.url}/retrieve", bodies, concurrency)}
                results.append(row)
                print(json.dumps(row), flush=True)
    noop = {r["c"]: r for r in results if r["target"] == "noop"}
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; products={args.products}; "
        f"max_batch_size={args.max_batch_size}, batch_timeout={args.batch_timeout}"
    )
    print(
        "| target | c | p50 ms | p95 ms | p99 ms | req/s | failed | p50 / no-op p50 | req/s / no-op req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = noop[r["c"]]
        print(
            f"| {r['target']} | {r['c']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
            f"{r['failures']} | {r['p50'] / base['p50']:.2f} | {r['rps'] / base['rps']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
