"""Closed-loop load against the real HTTP endpoint: throughput and latency, batched vs unbatched, in one run.

    python benchmarks/serve_load.py [--checkpoint runs/coverworld/checkpoint] [--concurrency 1 4 16 32]
                                    [--seconds 15] [--steps 10] [--max-batch-size 16]

Starts a local Ray cluster with two Serve applications on the same checkpoint — `@serve.batch` with
--max-batch-size, and max_batch_size 1 (every request its own pipeline call) — then, for each concurrency, N client
threads send requests back to back (a closed loop: a client waits for its answer before the next request) for
--seconds after a warm-up. Clients run on the same machine as the server: on a 2-core box they take CPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_loop(url: str, clients: int, seconds: float, steps: int, users: list[str]) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds

    def client(index: int) -> None:
        nonlocal errors
        session, n = requests.Session(), 0
        while time.monotonic() < stop_at:
            body = {"title": f"The Lantern Keeper, part {n}", "seed": index * 100_000 + n,
                    "num_inference_steps": steps, "user_id": users[(index + n) % len(users)] if users else None}
            sent = time.monotonic()
            try:
                ok = session.post(url, json=body, timeout=300).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.monotonic() - sent)
                else:
                    errors += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start  # includes the tail of requests started before the deadline
    ms = np.array(latencies) * 1000.0
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/coverworld/checkpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the generator replica")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from icg_rl.serve.app import application

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    settings = {"checkpoint": args.checkpoint, "default_steps": args.steps, "torch_threads": args.threads,
                "limits": {"max_steps": max(100, args.steps)}}
    modes = {"batched": args.max_batch_size, "unbatched": 1}
    users = json.loads((Path(args.checkpoint) / "icg_config.json").read_text())["user_ids"]
    rows = []
    for mode, batch in modes.items():  # one application at a time: the other is not even loaded
        options = {"CoverAPI": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256},
                   "CoverGenerator": {"ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 64,
                                      "user_config": {"max_batch_size": batch,
                                                      "batch_wait_timeout_s": args.batch_wait if batch > 1 else 0.0}}}
        serve.run(application(settings, options), name=mode, route_prefix=f"/{mode}")
        url = f"{base}/{mode}/v1/covers"
        closed_loop(url, max(args.concurrency), args.warmup, args.steps, users)  # warm-up: threads, caches
        for clients in args.concurrency:
            row = {"mode": mode, "max_batch_size": batch, "clients": clients,
                   **closed_loop(url, clients, args.seconds, args.steps, users)}
            rows.append(row)
            print(f"{mode:>9} c={clients:<3} {row['req_per_s']:7.2f} req/s  p50 {row['p50_ms']:7.0f} ms  "
                  f"p99 {row['p99_ms']:7.0f} ms  errors {row['errors']}", flush=True)
        serve.delete(mode)
    serve.shutdown()
    ray.shutdown()

    print(f"\n{args.steps} DDIM steps per image, 1 image per request, generator: 1 replica, {args.threads} torch "
          f"threads; {args.seconds:g} s per cell\n")
    print("| mode | max batch | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['max_batch_size']} | {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    by = {(r["mode"], r["clients"]): r for r in rows}
    print("\n| clients | batched / unbatched throughput |")
    print("|---|---|")
    for clients in args.concurrency:
        ratio = by[("batched", clients)]["req_per_s"] / max(by[("unbatched", clients)]["req_per_s"], 1e-9)
        print(f"| {clients} | {ratio:.2f}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
