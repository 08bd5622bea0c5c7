"""Thousands of generated malformed requests against the real endpoint: every one refused with a 4xx whose JSON names
what is wrong, never a 5xx, and a healthy server that still generates afterwards.

    python benchmarks/serve_fuzz.py [--examples 2000] [--policy NAME=PATH ...] [--config configs/coverworld.yaml]

The requests come from the test suite's generator (tests/serve/malformed.py: bad bytes, JSON that is not a request,
each field given a value that is always wrong — type, range, the server's limits, unknown policies and experiments —,
unknown fields, wrong content types, bodies cut short), here at the goal's size; the suite runs a few hundred. The
application is serve_load.py's (two policies over one base, the experiment `cover_ab`) with the limits the generator
assumes (tests/serve/malformed.py's LIMITS). Exit code 1 on any 5xx or any request not refused with a reason.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import serve_load  # noqa: E402  (benchmarks/ is not a package)

from tests.serve.malformed import EXPERIMENT, LIMITS, POLICIES, VALID, malformed  # noqa: E402


def fuzz(url: str, examples: int) -> tuple[Counter, list[str]]:
    """-> (status code counts, descriptions of the requests that were not refused properly)."""
    from hypothesis import HealthCheck, given, settings

    codes: Counter = Counter()
    wrong: list[str] = []
    session = requests.Session()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(request=malformed())
    def one(request) -> None:
        body, headers = request
        try:
            response = session.post(url, data=body, headers=headers, timeout=60)
        except requests.RequestException as error:
            codes["no answer"] += 1
            wrong.append(f"{body[:80]!r}: {error!r}")
            return
        codes[response.status_code] += 1
        try:
            error = response.json().get("error")
        except ValueError:
            error = None
        if not (400 <= response.status_code < 500 and error):
            wrong.append(f"{body[:80]!r}: {response.status_code} {response.text[:120]}")

    one()
    return codes, wrong


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--policy", action="append", default=None, metavar="NAME=PATH",
                        help=f"policy checkpoints named {POLICIES} (default: two fresh ones on --config's world)")
    parser.add_argument("--config", default="configs/coverworld.yaml")
    args = parser.parse_args(argv)
    assert serve_load.POLICY_NAMES == POLICIES and serve_load.EXPERIMENT == EXPERIMENT, "names drifted"

    from ray import serve

    policies = (dict(p.split("=", 1) for p in args.policy) if args.policy
                else serve_load.make_policies(args.config, Path(tempfile.mkdtemp(prefix="serve_fuzz_"))))
    base = serve_load.start_serve()
    settings = serve_load.app_settings(policies, steps=2, threads=2) | {"limits": LIMITS}  # what the generator assumes
    serve_load.deploy("fuzz", settings, max_batch_size=8, batch_wait=0.02)
    url = f"{base}/fuzz"
    started = time.monotonic()
    codes, wrong = fuzz(f"{url}/v1/covers", args.examples)
    elapsed = time.monotonic() - started
    healthy = requests.get(f"{url}/healthz", timeout=30).status_code
    valid = requests.post(f"{url}/v1/covers", json=VALID | {"experiment": EXPERIMENT}, timeout=60)
    serve.shutdown()

    sent = sum(codes.values())
    server_errors = sum(n for code, n in codes.items() if isinstance(code, int) and code >= 500)
    print(f"\n{sent} malformed requests in {elapsed:.0f} s ({sent / elapsed:.0f}/s)\n")
    print("| status | requests |\n|---|---|")
    for code, n in sorted(codes.items(), key=lambda kv: str(kv[0])):
        print(f"| {code} | {n} |")
    print(f"\n5xx: {server_errors}; not a 4xx with an error: {len(wrong)}; /healthz after: {healthy}; a valid request "
          f"after: {valid.status_code} ({valid.json().get('policy') if valid.ok else valid.text[:100]})")
    for line in wrong[:10]:
        print("  ", line)
    return 0 if not wrong and server_errors == 0 and healthy == 200 and valid.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
