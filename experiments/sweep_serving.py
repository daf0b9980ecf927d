"""The serving batching sweep: `bench_serving.py` once per configuration, one factor at a time from the default
(max_batch_size, batch_timeout, server.api_servers, server.fast_queue, gzip), each beside its own no-op endpoint.

    python experiments/sweep_serving.py --products 100000 --tower transformer --out experiments/results/sweep

Each configuration's JSON goes to --out (resumable: a finished one is skipped); the table compares p50 at c=1 and
requests/s at c=16 with the no-op endpoint measured in the same bench run (same max_batch_size/batch_timeout).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (max_batch_size, batch_timeout, extra server overrides); "default" = conf/serve.yaml
CONFIGS: dict[str, tuple[int, float, list[str]]] = {
    "default": (16, 0.001, []),
    "mbs1": (1, 0.001, []),
    "mbs4": (4, 0.001, []),
    "mbs32": (32, 0.001, []),
    "timeout0.0005": (16, 0.0005, []),
    "timeout0.005": (16, 0.005, []),
    "api_servers2": (16, 0.001, ["server.api_servers=2"]),
    "fast_queue": (16, 0.001, ["server.fast_queue=true"]),
    "no_gzip": (16, 0.001, ["server.gzip_min_bytes=null"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--kind", default="hnsw")
    parser.add_argument("--tower", default="transformer")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrent-requests", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/twotower_bench"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        size, timeout, extra = CONFIGS[name]
        path = args.out / f"{name}.json"
        if path.exists():
            continue
        command = [
            sys.executable, str(HERE / "bench_serving.py"),
            "--products", str(args.products), "--kinds", args.kind, "--towers", args.tower,
            "--requests", str(args.requests), "--concurrent-requests", str(args.concurrent_requests),
            "--max-batch-size", str(size), "--batch-timeout", str(timeout),
            "--workdir", str(args.workdir), "--out", str(path), "--server-args", *extra,
        ]  # fmt: skip
        print(f"{name}: {' '.join(command[2:])}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print("| config | c=1 p50 ms | no-op p50 ms | ratio | c=1 p99 ms | c=16 req/s | no-op req/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        path = args.out / f"{name}.json"
        if not path.exists():
            continue
        rows = json.loads(path.read_text())
        noop = {r["c"]: r for r in rows if r["target"] == "noop"}
        ours = {r["c"]: r for r in rows if r["target"] != "noop"}
        print(
            f"| {name} | {ours[1]['p50']:.2f} | {noop[1]['p50']:.2f} | {ours[1]['p50'] / noop[1]['p50']:.2f} | "
            f"{ours[1]['p99']:.2f} | {ours[16]['rps']:.0f} | {noop[16]['rps']:.0f} | "
            f"{ours[16]['rps'] / noop[16]['rps']:.2f} |"
        )


if __name__ == "__main__":
    main()
