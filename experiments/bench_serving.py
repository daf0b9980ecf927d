"""Load benchmark of POST /retrieve over loopback HTTP with a 100K-product bundle, beside a no-op LitServe.

Builds (once, cached under --workdir) a synthetic bundle: the generated Arabic sample catalog with
--products products, random clustered 384-d embeddings, a buyer-tower checkpoint per --towers entry
(weighted_avg; transformer: the default tower, randomly initialised - its cost does not depend on its weights),
and one bundle per (index kind, tower). For each target (the no-op LitServe endpoint first, with the same batching settings,
then `python -m twotower.serve` on each bundle) it sends --requests requests at concurrency 1 and
--concurrent-requests at concurrency 16 (asyncio + aiohttp, keep-alive), and prints p50/p95/p99 latency,
requests/s and the ratio of p50 to the no-op endpoint's p50 measured in the same run.

    python experiments/bench_serving.py --products 100000 --kinds flat hnsw torch_exact
    python experiments/bench_serving.py --kinds hnsw --towers transformer weighted_avg --profile DIR
    python experiments/bench_serving.py --kinds hnsw --server-args server.fast_queue=true server.api_servers=2

--profile DIR: py-spy (the `[bench]` extra) samples the server's processes during each target's c=1 run and
writes DIR/<target>.txt (collapsed stacks) and DIR/<target>.md (where the CPU time goes, per process).
--server-args: extra `python -m twotower.serve` overrides for every twotower target (the batching sweep).
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
from collections.abc import Sequence
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
def tower_checkpoint(workdir: Path, tower: str, dim: int) -> Path:
    """A buyer-tower checkpoint as training writes it (hparams + the tower's weights under buyer_tower.)."""
    import torch

    from twotower.model.buyer_tower import BuyerTower
    from twotower.model.checkpoint import write_checkpoint

    torch.manual_seed(0)
    hparams = {"aggregation_method": tower, "options": {}}
    state = BuyerTower(embedding_dim=dim, **hparams).state_dict()
    return write_checkpoint(
        workdir / f"{tower}.ckpt",
        {f"buyer_tower.{k}": v for k, v in state.items()},
        {"item_tower": {"output_dim": dim}, "buyer_tower": hparams},
    )


def build_bundles(
    workdir: Path,
    products: int,
    kinds: list[str],
    towers: Sequence[str] = ("weighted_avg",),
    dim: int = 384,
    seed: int = 0,
) -> dict[str, Path]:
    from twotower.data.catalog import load_catalog
    from twotower.data.sample import generate_sample
    from twotower.retrieval.bundle import write_bundle
    from twotower.retrieval.index import IndexBuilder

    # target name -> (index kind, tower); weighted_avg targets keep the plain kind as their name
    specs = {k if t == "weighted_avg" else f"{k}+{t}": (k, t) for t in towers for k in kinds}
    out = {name: workdir / f"bundle_{products}_{k}_{t}" for name, (k, t) in specs.items()}
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
    indexes: dict[str, object] = {}
    for name, path in out.items():
        if (path / "manifest.json").is_file():
            continue
        kind, tower = specs[name]
        ckpt = tower_checkpoint(workdir, tower, dim)
        t0 = time.perf_counter()
        if kind not in indexes:
            indexes[kind] = IndexBuilder(kind).build(embeddings)
        index = indexes[kind]
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


def py_spy() -> str:
    """The py-spy executable beside this interpreter (the [bench] extra), else on PATH."""
    import shutil

    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.is_file() else shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    return found


INCLUSIVE_OF = ("twotower/", "litserve/", "uvicorn/", "fastapi/", "starlette/", "faiss", "torch/", "json")


def summarize_profile(collapsed: Path, top: int = 20) -> str:
    """Markdown: per sampled process (the innermost ``process`` frame of a stack), its share of the CPU samples,
    the leaf functions with the most samples (self time) and the project/LitServe/HTTP/search functions with the
    most inclusive samples (each counted once per stack)."""
    own: dict[str, dict[str, int]] = {}
    inclusive: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        starts = [i for i, f in enumerate(frames) if f.startswith("process ")]
        process = frames[starts[-1]].split(" spawn_main")[0][:100] if starts else "?"
        frames = frames[starts[-1] + 1 :] if starts else frames
        totals[process] = totals.get(process, 0) + n
        leaf = own.setdefault(process, {})
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        counted = inclusive.setdefault(process, {})
        for frame in dict.fromkeys(f for f in frames if any(m in f for m in INCLUSIVE_OF)):
            counted[frame] = counted.get(frame, 0) + n
    everything = sum(totals.values()) or 1
    lines = [f"py-spy samples: {everything} (CPU-active only, all processes)\n"]
    for process, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"### {process}: {100 * total / everything:.1f}% of samples\n")
        for title, table in (("self", own[process]), ("inclusive", inclusive[process])):
            lines.append(f"| {title} % of this process | function |\n|---|---|")
            ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
            lines += [f"| {100 * n / total:.1f} | `{frame[:140]}` |" for frame, n in ranked]
            lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, name: str):
    """py-spy record of process `pid` and its children while the block runs (nothing when `out` is None)."""
    if out is None:
        yield
        return
    import signal
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{name}.txt"
    command = [py_spy(), "record", "--pid", str(pid), "--subprocesses", "--rate", "250", "--format", "raw"]
    recorder = subprocess.Popen(
        [*command, "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(2)  # py-spy attaches
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        _, error = recorder.communicate(timeout=60)
        if raw.is_file():
            (out / f"{name}.md").write_text(summarize_profile(raw))
        else:
            print(f"py-spy wrote no profile: {error.decode(errors='replace')[-500:]}", flush=True)


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
    parser.add_argument(
        "--towers", nargs="+", default=["weighted_avg"], choices=["weighted_avg", "attention", "transformer"]
    )
    parser.add_argument("--server-args", nargs="*", default=[], help="extra twotower.serve overrides")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the c=1 runs into this folder")
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
    bundles = build_bundles(args.workdir, args.products, args.kinds, args.towers)
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
                *args.server_args,
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
                profile = args.profile if concurrency == 1 and name != "noop" else None
                with profiled(server.pid, profile, name):
                    row = {"target": name, **measure(f"{server.url}/retrieve", bodies, concurrency)}
                results.append(row)
                print(json.dumps(row), flush=True)
    noop = {r["c"]: r for r in results if r["target"] == "noop"}
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; products={args.products}; "
        f"max_batch_size={args.max_batch_size}, batch_timeout={args.batch_timeout}; "
        f"server args: {' '.join(args.server_args) or 'none'}"
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
