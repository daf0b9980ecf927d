"""Property-based fuzzing of the running service from its OpenAPI schema (schemathesis): no 5xx allowed.

Starts `python -m twotower.serve` on a small generated bundle (or --bundle) with a client key and an admin
key (TWOTOWER_ADMIN_API_KEY, sent as X-API-Key so that every route, /admin/reload included, is exercised
past its auth check; the admin key is accepted wherever the client key is), then runs `st run` against
/openapi.json (fetched with the key: it is protected when a client key is set) with the `not_a_server_error`
check (add `--checks not_a_server_error,response_schema_conformance` for body conformance too).
Exit status 0 means no failures.

    python experiments/schemathesis_check.py --max-examples 100
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import build_bundles  # noqa: E402

from twotower.serving.launcher import LiveServer  # noqa: E402

KEY = "schemathesis-key"
ADMIN_KEY = "schemathesis-admin-key"


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
    env = {"LIT_SERVER_API_KEY": KEY, "TWOTOWER_ADMIN_API_KEY": ADMIN_KEY}
    # bundle_root: the bundle's folder, so that reloads of it (and fuzzed names inside it) are in scope
    overrides = [f"server.bundle_root={Path(bundle).resolve().parent}"]
    with LiveServer(bundle, args.workdir, env, *overrides).wait_ready(600, {"X-API-Key": KEY}) as server:
        # the `st` script of the interpreter running this file (a venv need not be on PATH)
        st = [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            args.checks,
            "--max-examples",
            str(args.max_examples),
            "--header",
            f"X-API-Key: {ADMIN_KEY}",
            "--generation-deterministic",
            "--phases",
            "examples,coverage,fuzzing",
        ]
        print(" ".join(st), flush=True)
        return subprocess.run(st, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
