"""Property-based fuzzing of the running service from its OpenAPI schema (schemathesis): no 5xx allowed.

Starts `python -m twotower.serve` on a small generated bundle (or --bundle), with an API key so that
/admin/reload is exercised too, then runs `st run` against /openapi.json with the `not_a_server_error`
check (add `--checks not_a_server_error,response_schema_conformance` for body conformance too).
Exit status 0 means no failures.

    python experiments/schemathesis_check.py --max-examples 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import build_bundles, free_port, start, stop  # noqa: E402

KEY = "schemathesis-key"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=None, help="default: a generated 2,000-product bundle")
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument(
        "--checks",
        default="not_a_server_error",
        help="schemathesis checks; add response_schema_conformance to also check bodies against the schema",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/twotower_schemathesis"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_bundles(args.workdir, 2000, ["flat"])["flat"]
    port = free_port()
    os.environ["LIT_SERVER_API_KEY"] = KEY
    command = [
        sys.executable,
        "-m",
        "twotower.serve",
        f"bundle={bundle}",
        f"port={port}",
        f"hydra.run.dir={args.workdir}/hydra",
    ]
    server = start(command, args.workdir, port, "serve.log", health_headers={"X-API-Key": KEY})
    try:
        st = [
            "st",
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            args.checks,
            "--max-examples",
            str(args.max_examples),
            "--header",
            f"X-API-Key: {KEY}",
            "--generation-deterministic",
            "--phases",
            "examples,coverage,fuzzing",
        ]
        print(" ".join(st), flush=True)
        return subprocess.run(st, check=False).returncode
    finally:
        stop(server)


if __name__ == "__main__":
    raise SystemExit(main())
