"""Chaos: training and serving while processes and a node are killed under them.

    python benchmarks/chaos.py [--part train|serve|both] [--config configs/micro.yaml] [--iterations 300]
                               [--kill-every 30] [--serve-seconds 60] [--serve-kill-every 15] [--clients 16]

**train** — a `ray.cluster_utils.Cluster` of 3 nodes (a head and two workers, 3 logical CPUs each; one CPU per actor,
so the roles spread over the nodes). A micro training run goes undisturbed first, then again while a killer SIGKILLs
a random live actor every --kill-every seconds, cycling through the roles (learner, rollout, reward) in a shuffled
order, and once — after the first kill of each role — removes the worker node that holds the learner and adds a
fresh node in its place --node-down seconds later. Nothing is told about the kills: the run must recover by itself
(rollout/reward actors restart, `ray.max_restarts`; a lost learner rank is rebuilt from the newest checkpoint,
`ray.max_learner_restarts`). Printed: kills survived by role, the node removal, learner rebuilds, iterations redone,
wall-time overhead, and whether the final weights hash (sha256 over every tensor, in key order) equals the
undisturbed run's.

**serve** — two generator replicas behind the HTTP endpoint (default `recovery`: a request whose replica died is
resent, same seed); --clients closed-loop clients for --serve-seconds undisturbed, then again while a replica that
holds requests is SIGKILLed every --serve-kill-every seconds — the second time SIGSTOPped instead (a wedged replica:
it answers nothing, and only Serve's health check, every 2 s with a 5 s timeout here, takes it out and replaces it).
Printed: requests sent, failed, p50/p99.

Both parts start their own Ray; on a 2-core box the three "nodes" share the same two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/fresh_policy.py, through serve_load
sys.path.insert(0, str(ROOT / "benchmarks"))

log = logging.getLogger("chaos")
ROLES = {"learner": "LearnerWorker", "rollout": "RolloutWorker", "reward": "RewardWorker"}
NODE_CPUS = 3
# a micro run whose every actor takes a whole logical CPU: 1 learner + 2 rollout + 2 reward + 1 for Ray Data
TRAIN_OVERRIDES = [
    "algo.num_inference_steps=4", "data.pairs_per_batch=2", "data.samples_per_pair=4", "model.meta_tokens=2",
    "reward.weights={aesthetic: 1.0, clip_t: 0.5}", "train.tracker=none", "train.checkpoint_every=2",
    "train.eval_every=1000000", "train.eval_pairs=4", "train.average_last=0", "ray.rollout_workers=2",
    "ray.cpus_per_worker=1", "ray.threads_per_worker=1", "ray.max_restarts=50", "ray.max_learner_restarts=20",
    "ray.resource_wait_s=300"]


# --------------------------------------------------------------------------------------------------------- train
def weights_sha256(checkpoint: Path) -> str:
    """sha256 over every tensor of the exported policy, files and keys in sorted order (not the files' bytes:
    safetensors writes its JSON header in a per-process order)."""
    import torch
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for path in sorted(checkpoint.glob("*.safetensors")):
        tensors = load_file(path)
        for key in sorted(tensors):
            digest.update(f"{path.name}/{key}".encode())
            digest.update(tensors[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def live_actors(role: str) -> list[dict]:
    """The ALIVE actors of a role, from the GCS actor table (no dashboard needed): [{pid, node_id, ...}]."""
    import ray

    return [{"pid": info["Pid"], "node_id": info["Address"]["NodeID"], "id": actor_id}
            for actor_id, info in ray._private.state.actors().items()
            if info["ActorClassName"] == ROLES[role] and info["State"] == "ALIVE" and info["Pid"]]


class Killer:
    """Every `every` s SIGKILLs a random live actor, roles in shuffled cycles; once each role was hit, removes the
    worker node under the learner (or any worker) and adds a fresh one `node_down` s later. Driven by `tick()` from
    the main thread: a `Cluster` adds nodes only there (it installs signal handlers)."""

    def __init__(self, cluster, every: float, node_down: float, seed: int):
        self.cluster, self.every, self.node_down = cluster, every, node_down
        self.rng, self.cycle = random.Random(seed), []
        self.started = self.next_kill = self.re_add_at = None
        self.kills: list[dict] = []
        self.node_events: list[str] = []

    def tick(self) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started, self.next_kill = now, now + self.every
        if self.re_add_at is not None and now >= self.re_add_at:
            self.cluster.add_node(num_cpus=NODE_CPUS)
            self.node_events.append(f"added a fresh node at {now - self.started:.0f} s")
            self.re_add_at = None
        if now < self.next_kill:
            return
        self.next_kill = now + self.every
        self.cycle = self.cycle or self.rng.sample(list(ROLES), len(ROLES))
        role = self.cycle.pop()
        victims = live_actors(role)
        if not victims:  # every actor of that role is restarting right now: that role again next time
            self.cycle.append(role)
            return
        victim = self.rng.choice(victims)
        try:
            os.kill(victim["pid"], signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills.append({"role": role, "pid": victim["pid"], "at_s": round(now - self.started, 1)})
        log.warning("killed a %s actor (pid %d)", role, victim["pid"])
        if not self.node_events and {k["role"] for k in self.kills} == set(ROLES):
            self.remove_a_node()

    def remove_a_node(self) -> None:
        workers = list(self.cluster.worker_nodes)
        learners = {a["node_id"] for a in live_actors("learner")}
        node = next((n for n in workers if n.node_id in learners), self.rng.choice(workers))
        held = {role: sum(a["node_id"] == node.node_id for a in live_actors(role)) for role in ROLES}
        self.cluster.remove_node(node)
        self.node_events.append(f"removed a node at {time.monotonic() - self.started:.0f} s holding {held}")
        log.warning("removed node %s (actors on it: %s)", node.node_id[:8], held)
        self.re_add_at = time.monotonic() + self.node_down


def run_driver(args, out: Path, address: str, killer: Killer | None = None) -> tuple[float, dict, str]:
    """`python -m icg_rl.train` as its own process on the cluster (as `ray job submit` runs it), the killer ticking
    while it runs -> (seconds, its summary.json, its log)."""
    command = [sys.executable, "-m", "icg_rl.train", "--config", args.config, "--out", str(out), "--address",
               address, *TRAIN_OVERRIDES, f"train.iterations={args.iterations}", f"train.seed={args.seed}",
               *args.overrides]
    started = time.monotonic()
    with open(out.parent / f"{out.name}.log", "w") as log_file:
        driver = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        while driver.poll() is None:
            if killer is not None:
                killer.tick()
            time.sleep(0.5)
    seconds, text = time.monotonic() - started, (out.parent / f"{out.name}.log").read_text()
    if driver.returncode != 0:
        raise SystemExit(f"chaos: the {out.name} run failed (exit {driver.returncode}); its log's end:\n"
                         f"{text[-3000:]}")
    return seconds, json.loads((out / "summary.json").read_text()), text


def train_part(args) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=NODE_CPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)  # the killer reads the actor table
    out = Path(args.out or tempfile.mkdtemp(prefix="chaos_"))
    out.mkdir(parents=True, exist_ok=True)
    calm_s, calm, _ = run_driver(args, out / "undisturbed", cluster.address)
    killer = Killer(cluster, args.kill_every, args.node_down, args.seed)
    chaos_s, chaos, text = run_driver(args, out / "chaos", cluster.address, killer)
    digests = [weights_sha256(Path(summary["checkpoint"])) for summary in (calm, chaos)]
    ray.shutdown()
    cluster.shutdown()
    return {"iterations": args.iterations, "kills": killer.kills,
            "kills_by_role": {role: sum(k["role"] == role for k in killer.kills) for role in ROLES},
            "node_events": killer.node_events, "learner_restarts": chaos.get("learner_restarts"),
            "actor_retries": text.count("a rollout or reward actor failed"),
            "iterations_redone": sum(int(n) for n in re.findall(r"redoing (\d+) iteration", text)),
            "undisturbed_s": calm_s, "chaos_s": chaos_s, "weights_equal": digests[0] == digests[1],
            "sha256": digests[1]}


# --------------------------------------------------------------------------------------------------------- serve
def generator_stats(app: str) -> dict:
    """One replica's counters (pid, in_flight), whichever the router picks; {"in_flight": 0, "pid": None} when the
    call went to a frozen or dying replica."""
    from ray import serve

    try:
        return serve.get_deployment_handle("CoverGenerator", app_name=app).stats.remote().result(timeout_s=5)
    except Exception:  # noqa: BLE001 - any failure of the probe just means: ask again
        return {"in_flight": 0, "pid": None}


def serve_part(args) -> dict:
    import serve_load
    from ray import serve

    from icg_rl.serve.app import application

    workdir = Path(tempfile.mkdtemp(prefix="chaos_serve_"))
    policies = serve_load.make_policies(args.config, workdir)
    users = json.loads((Path(next(iter(policies.values()))) / "icg_config.json").read_text())["user_ids"]
    base = serve_load.start_serve()
    settings = serve_load.app_settings(policies, args.steps, 1)
    options = {"CoverAPI": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256},
               "CoverGenerator": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 64,
                                  "num_replicas": 2, "health_check_period_s": 2, "health_check_timeout_s": 5,
                                  "user_config": {"max_batch_size": 8,
                                                                     "batch_wait_timeout_s": 0.02}}}
    serve.run(application(settings, options), name="chaos", route_prefix="/chaos")
    url, route = f"{base}/chaos/v1/covers", {"experiment": serve_load.EXPERIMENT}
    serve_load.closed_loop(url, args.clients, 5.0, args.steps, users, route)  # warm-up
    rows = {"undisturbed": serve_load.closed_loop(url, args.clients, args.serve_seconds, args.steps, users, route)}

    kills, done = [], threading.Event()

    def kill_every() -> None:
        while not done.wait(args.serve_kill_every):
            deadline, stats = time.monotonic() + 10, generator_stats("chaos")
            while (stats["in_flight"] == 0 or stats["pid"] is None) and time.monotonic() < deadline:
                stats = generator_stats("chaos")  # a replica that holds requests, if any
            if stats["pid"] is None:
                continue
            wedge = len(kills) == 1  # the second event freezes the replica instead: only its health check tells
            os.kill(stats["pid"], signal.SIGSTOP if wedge else signal.SIGKILL)
            kills.append({"pid": stats["pid"], "in_flight": stats["in_flight"], "how": "SIGSTOP" if wedge
                          else "SIGKILL"})

    killer = threading.Thread(target=kill_every, daemon=True)
    killer.start()
    rows["replica kills"] = serve_load.closed_loop(url, args.clients, args.serve_seconds, args.steps, users, route)
    done.set()
    killer.join()
    serve.shutdown()
    return {"clients": args.clients, "seconds": args.serve_seconds, "steps": args.steps, "rows": rows,
            "kills": kills}


# ---------------------------------------------------------------------------------------------------------- main
def print_train(result: dict) -> None:
    overhead = result["chaos_s"] / result["undisturbed_s"] - 1.0
    print(f"\nTraining, {result['iterations']} iterations on 3 nodes × {NODE_CPUS} logical CPUs:\n")
    print("| kills (learner / rollout / reward) | node removed and re-added | learner rebuilds | rollout/reward "
          "retries | iterations redone | undisturbed s | chaos s | overhead | final weights equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    k = result["kills_by_role"]
    print(f"| {sum(k.values())} ({k['learner']} / {k['rollout']} / {k['reward']}) | "
          f"{'yes' if len(result['node_events']) == 2 else '; '.join(result['node_events']) or 'no'} | "
          f"{result['learner_restarts']} | {result['actor_retries']} | {result['iterations_redone']} | "
          f"{result['undisturbed_s']:.0f} | {result['chaos_s']:.0f} | {overhead:+.0%} | "
          f"{'yes' if result['weights_equal'] else 'NO'} (sha256 {result['sha256'][:12]}) |")
    for event in result["node_events"]:
        print(f"- {event}")


def print_serve(result: dict) -> None:
    print(f"\nServing, {result['clients']} closed-loop clients × {result['seconds']:g} s, 2 generator replicas, "
          f"{result['steps']} steps per cover; replicas killed or wedged: "
          f"{', '.join(k['how'] for k in result['kills'])}:\n")
    print("| run | requests | failed | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for name, row in result["rows"].items():
        print(f"| {name} | {row['requests'] + row['errors']} | {row['errors']} | {row['req_per_s']:.2f} | "
              f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["train", "serve", "both"], default="both")
    parser.add_argument("--config", default="configs/micro.yaml", help="world (and base config) of both parts")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="train.seed and the killer's choices")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between training kills")
    parser.add_argument("--node-down", type=float, default=20.0, help="seconds before the removed node is replaced")
    parser.add_argument("--serve-seconds", type=float, default=60.0)
    parser.add_argument("--serve-kill-every", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per served cover")
    parser.add_argument("--out", default=None, help="run folders of the train part (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides of the training runs (key=value)")
    return parser.parse_args(argv)


def as_argv(args: argparse.Namespace, **changes) -> list[str]:
    """The command line that parses back to `args` with `changes`."""
    values = vars(args) | changes
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items() if k != "overrides" and v is not None]
    return [*flags, "--", *values["overrides"]]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.part == "both":  # each part in its own process: a fresh Ray each
        results = {}
        for part in ("train", "serve"):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([sys.executable, __file__, *as_argv(args, part=part, json=f.name)], check=True)
                results[part] = json.loads(Path(f.name).read_text())
    else:
        results = {args.part: (train_part if args.part == "train" else serve_part)(args)}
    if "train" in results:
        print_train(results["train"])
    if "serve" in results:
        print_serve(results["serve"])
    if args.json:
        Path(args.json).write_text(json.dumps(results if args.part == "both" else results[args.part], indent=1))


if __name__ == "__main__":
    main()
