"""Closed-loop load and single-request latency against the real HTTP endpoint serving several policies, in one run.

    python benchmarks/serve_load.py [--policy NAME=PATH ...] [--modes batched unbatched] [--concurrency 1 4 16 32]
                                    [--seconds 15] [--steps 10] [--max-batch-size 16] [--latency 50]

Starts a local Ray cluster and, per mode, a Serve application over the policies — `@serve.batch` with
--max-batch-size, or max_batch_size 1 (every request its own pipeline call) — with the A/B experiment `cover_ab`
splitting users evenly between the first two policies, so every request goes through a policy swap decision. Without
--policy, two fresh policies on --config's world (seeds 0 and 1; adapter gate open, refiner perturbed, as the tests
make them) are written to a temporary folder: serving cost does not depend on the weights' values.

For each concurrency, N client threads send requests back to back (a closed loop: a client waits for its answer
before the next request) for --seconds after a warm-up. --latency N first times N bare pipeline calls in this
process (same steps, size, guidance and torch threads as the replica) interleaved with N sequential requests over
HTTP, and splits the difference with the responses' Server-Timing headers. Clients run on the same
machine as the server: on a 2-core box they take CPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/fresh_policy.py (benchmarks/ is not a package)

POLICY_NAMES = ("default", "seed1")
EXPERIMENT = "cover_ab"
GUIDANCE = 3.0  # ServeSettings' default_guidance_scale: what the requests get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_policies(config: str, folder: Path, seeds=(0, 1)) -> dict[str, str]:
    """Fresh policies on the world's base, one per seed (named POLICY_NAMES): tests/fresh_policy.py's recipe, so
    users and titles change the covers."""
    from icg_rl.config import load_config
    from icg_rl.data import load_from_config
    from icg_rl.models.item_features import policy_context
    from tests.fresh_policy import save_fresh_policy

    cfg = load_config(config)
    context = policy_context(cfg, load_from_config(cfg))  # the catalogue's CLIP embeddings, once for every policy
    return {name: str(save_fresh_policy(cfg, folder / name, seed, context)[0])
            for name, seed in zip(POLICY_NAMES, seeds)}


def app_settings(policies: dict[str, str], steps: int, threads: int) -> dict:
    arms = {name: 1.0 for name in list(policies)[:2]}
    return {"policies": policies, "experiments": {EXPERIMENT: arms}, "default_steps": steps,
            "torch_threads": threads, "limits": {"max_steps": max(100, steps)}}


def start_serve() -> str:
    """A local Ray cluster (2 CPUs) and Serve on a free port: -> the base URL."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy(name: str, settings: dict, max_batch_size: int, batch_wait: float) -> None:
    from ray import serve

    from icg_rl.serve.app import application

    options = {"CoverAPI": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256},
               "CoverGenerator": {"ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 64,
                                  "user_config": {"max_batch_size": max_batch_size,
                                                  "batch_wait_timeout_s": batch_wait if max_batch_size > 1 else 0.0}}}
    serve.run(application(settings, options), name=name, route_prefix=f"/{name}")


def closed_loop(url: str, clients: int, seconds: float, steps: int, users: list[str], route: dict) -> dict:
    latencies: list[float] = []
    errors = 0
    arms: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds

    def client(index: int) -> None:
        nonlocal errors
        session, n = requests.Session(), 0
        while time.monotonic() < stop_at:
            body = {"title": f"The Lantern Keeper, part {n}", "seed": index * 100_000 + n, **route,
                    "num_inference_steps": steps, "user_id": users[(index + n) % len(users)] if users else None}
            sent = time.monotonic()
            try:
                response = session.post(url, json=body, timeout=300)
                ok = response.status_code == 200
                arm = response.json()["policy"] if ok else None
            except (requests.RequestException, ValueError):
                ok, arm = False, None
            with lock:
                if ok:
                    latencies.append(time.monotonic() - sent)
                    arms[arm] = arms.get(arm, 0) + 1
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
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / elapsed, "arms": arms,
            **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else float("nan") for q in (50, 95, 99)}}


def single_latencies(checkpoint: str, url: str, count: int, steps: int, threads: int, user: str | None
                     ) -> tuple[list[float], list[float], list[dict], int]:
    """`count` bare ICGPipeline calls in this process (as the replica makes them for one request, same torch threads)
    interleaved with `count` sequential HTTP requests for the same policy, so both see the same machine: -> (bare
    seconds, HTTP seconds, HTTP Server-Timing, image size)."""
    import torch

    from icg_rl.models.pipeline import load_checkpoint
    from icg_rl.models.user import ICGUser
    from icg_rl.serve.generator import image_generators

    torch.set_num_threads(threads)
    pipe = load_checkpoint(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.denoiser.config.sample_size * pipe.vae_scale_factor
    session, bare, http, timings = requests.Session(), [], [], []
    for i in range(count + 3):  # the first 3 of each warm up
        title = f"The Lantern Keeper, part {i}"
        started = time.perf_counter()
        with torch.inference_mode():
            pipe([title], users=[ICGUser(user_id=user)], generator=image_generators(i, 1), num_inference_steps=steps,
                 guidance_scale=GUIDANCE, height=size, width=size, output_type="np")
        called = time.perf_counter()
        response = session.post(url, json={"title": title, "seed": i, "num_inference_steps": steps, "user_id": user},
                                timeout=300)
        answered = time.perf_counter()
        response.raise_for_status()
        if i >= 3:
            bare.append(called - started)
            http.append(answered - called)
            timings.append(server_timing(response.headers["server-timing"]))
    return bare, http, timings, size


def server_timing(header: str) -> dict[str, float]:
    """'ingress;dur=1.2, generator;dur=30.1, …' -> {"ingress": 1.2, …} (ms)."""
    parts = {}
    for item in header.split(","):
        name, _, rest = item.strip().partition(";dur=")
        if rest:
            parts[name] = float(rest)
    return parts


def latency_table(bare: list[float], http: list[float], timings: list[dict]) -> list[str]:
    """Medians, ms: the bare call, the HTTP request, and where the difference goes."""
    med = {key: float(np.median([t[key] for t in timings])) for key in timings[0]}
    bare_ms, http_ms = float(np.median(bare)) * 1000, float(np.median(http)) * 1000
    inside = med["ingress"] + med["generator"] + med["encode"]
    rows = [("bare pipeline call (this process)", bare_ms),
            ("HTTP request, end to end", http_ms),
            ("  pipeline inside the replica", med["pipeline"]),
            ("  weight swap", med["swap"]),
            ("  generator round trip − swap − pipeline (Ray handle, routing, batch wait)",
             med["generator"] - med["swap"] - med["pipeline"]),
            ("  ingress (validation)", med["ingress"]),
            ("  PNG + base64", med["encode"]),
            ("  HTTP proxy, JSON, client (end to end − the above)", http_ms - inside)]
    lines = ["| | p50 ms |", "|---|---|"] + [f"| {name} | {ms:.1f} |" for name, ms in rows]
    lines.append(f"\n**p50 ratio, HTTP / bare pipeline: {http_ms / bare_ms:.2f}×** (goal ≤ 1.2×)")
    return lines


def exported_requests() -> dict[tuple[str, str, str], float]:
    """ray_icg_serve_cover_requests_total on this node's Prometheus endpoint, summed over replicas and apps:
    {(policy, experiment, outcome): requests}."""
    import re

    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    totals: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("ray_icg_serve_cover_requests_total{"):
            tags = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (tags["policy"], tags["experiment"], tags["outcome"])
            totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", default=None, metavar="NAME=PATH",
                        help="a policy checkpoint (repeat; the first two form the experiment); default: two fresh ones")
    parser.add_argument("--config", default="configs/coverworld.yaml", help="world of the fresh policies")
    parser.add_argument("--modes", nargs="+", choices=["batched", "unbatched"], default=["batched", "unbatched"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the generator replica (and of the "
                        "bare calls); 1 on CPU: see RESULTS.md, issue 22")
    parser.add_argument("--route", default=EXPERIMENT, help=f"the load's requests name this policy, or the "
                        f"experiment {EXPERIMENT!r} (default: both policies, split by user)")
    parser.add_argument("--latency", type=int, default=0, metavar="N", help="N single requests vs N bare calls")
    parser.add_argument("--json", default=None, help="also write the rows here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    policies = (dict(p.split("=", 1) for p in args.policy) if args.policy
                else make_policies(args.config, workdir))
    first = next(iter(policies.values()))
    users = json.loads((Path(first) / "icg_config.json").read_text())["user_ids"]
    report: dict = {"policies": policies}

    from ray import serve

    base = start_serve()
    settings = app_settings(policies, args.steps, args.threads)
    route = {"experiment": EXPERIMENT} if args.route == EXPERIMENT else {"policy": args.route}
    rows = []
    for mode in args.modes:  # one application at a time: the other is not even loaded
        batch = args.max_batch_size if mode == "batched" else 1
        deploy(mode, settings, batch, args.batch_wait)
        url = f"{base}/{mode}/v1/covers"
        if args.latency and mode == args.modes[0]:
            bare, http, timings, size = single_latencies(first, url, args.latency, args.steps, args.threads,
                                                         users[0] if users else None)
            report |= {"bare_s": bare, "http_s": http, "server_timing": timings}
        closed_loop(url, max(args.concurrency), args.warmup, args.steps, users, route)  # warm-up: threads, caches
        for clients in args.concurrency:
            row = {"mode": mode, "max_batch_size": batch, "clients": clients,
                   **closed_loop(url, clients, args.seconds, args.steps, users, route)}
            rows.append(row)
            print(f"{mode:>9} c={clients:<3} {row['req_per_s']:7.2f} req/s  p50 {row['p50_ms']:7.0f} ms  "
                  f"p99 {row['p99_ms']:7.0f} ms  errors {row['errors']}  arms {row['arms']}", flush=True)
        stats = requests.get(f"{base}/{mode}/v1/stats", timeout=30).json()
        print(f"{mode} generator replica: {stats}", flush=True)
        if mode != args.modes[-1]:
            serve.delete(mode)
    time.sleep(12)  # replicas report metrics every 10 s
    metrics = exported_requests()
    serve.shutdown()

    print(f"\n{args.steps} DDIM steps per image, 1 image per request, generator: 1 replica, {args.threads} torch "
          f"threads; {args.seconds:g} s per cell; requests split over {list(policies)[:2]} by `{EXPERIMENT}`\n")
    print("| mode | max batch | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['max_batch_size']} | {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    by = {(r["mode"], r["clients"]): r for r in rows}
    if {"batched", "unbatched"} <= set(args.modes):
        print("\n| clients | batched / unbatched throughput |\n|---|---|")
        for clients in args.concurrency:
            ratio = by[("batched", clients)]["req_per_s"] / max(by[("unbatched", clients)]["req_per_s"], 1e-9)
            print(f"| {clients} | {ratio:.2f}× |")
    if args.latency:
        print(f"\nOne request at a time, {args.latency} each, {size} px, {args.steps} steps, CFG {GUIDANCE}:\n")
        print("\n".join(latency_table(report["bare_s"], report["http_s"], report["server_timing"])))
    print("\nray_icg_serve_cover_requests_total on Ray's Prometheus endpoint (Serve metrics, per policy):\n")
    print("| policy | experiment | outcome | requests |\n|---|---|---|---|")
    for (policy, experiment, outcome), n in sorted(metrics.items()):
        print(f"| {policy} | {experiment or '-'} | {outcome} | {n:.0f} |")
    report["metrics"] = [list(key) + [n] for key, n in metrics.items()]
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **report}, indent=1))


if __name__ == "__main__":
    main()
