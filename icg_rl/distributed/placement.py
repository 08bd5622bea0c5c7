"""Where a run's actors go, and the check that they fit before any is created (docs/architecture.md §8).

Ray leaves an actor whose request exceeds the cluster pending forever, with no error. A run therefore adds up
everything it will ask for — rollout actors, one pool per reward, learner ranks — and compares it with the
cluster's totals first (waiting up to `ray.resource_wait_s` for an autoscaler to add nodes), failing with the
numbers when it cannot fit.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
RESOURCE_SLACK = 1e-6  # fractional requests (0.1 × 10) must not fail on float rounding
VERBOSE_ENV = "ICG_RL_VERBOSE"  # set by the commands' --verbose (cli.set_verbosity)


class ResourceShortfall(RuntimeError):
    """The actors a run asks for cannot fit the cluster (the message has the numbers)."""


@dataclass(frozen=True)
class Request:
    count: int
    cpus: float
    gpus: float


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool | None = None) -> str:
    """Attach to the cluster at `address` (or RAY_ADDRESS), or start a local one; returns a description.

    Quiet unless `verbose` (default: the commands' `--verbose`, i.e. $ICG_RL_VERBOSE): the console keeps this
    program's own lines, while actors' stdout/stderr (model-loading bars, DeepSpeed and library warnings, Ray Train
    and Ray Data output: `(RolloutWorker pid=…)` lines, two dozen in a 2-iteration micro run) stay in the session's
    log files, and Ray's INFO messages (Ray Data's per-execution plan included) are dropped. An actor's exception
    still reaches the driver: Ray raises it here with its traceback."""
    import ray

    if ray.is_initialized():
        return "the already initialised Ray session"
    verbose = verbose_requested() if verbose is None else verbose
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on; a local cluster needs none
    if not verbose:
        quiet_ray_data()
    chatter = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: inside `ray job submit` Ray merges it with the job's and fails on a shared key
        ray.init(address=address, **chatter)
        described = f"the cluster at {address}"
    else:
        env = {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        if not verbose:
            env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # drawn in actors (Ray Train's shards) for no one to see
        # address="local": a new cluster, never whatever `ray start` left registered in /tmp/ray on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                 **chatter)
        described = f"a new local cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs)"
    if verbose:
        return described
    return f"{described}; actors' logs in {_logs_dir()} (--verbose prints them here)"


def verbose_requested() -> bool:
    """The commands' `--verbose` (cli.set_verbosity sets VERBOSE_ENV), or the variable set by hand."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_ray_data() -> None:
    """Ray Data runs the pair stream in the driver and writes an INFO block per dataset execution (plan, operators,
    'Full logs in …') to the console; keep those in its log file (ray-data.log) and drop its progress bars."""
    import ray.data  # configures the "ray.data" logger (a console and a file handler) on first import
    from ray.util.debug import log_once

    ray.data.DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # spends the once-per-process "Progress bars disabled" warning
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def _logs_dir() -> str:
    try:  # no public API names the session folder
        from ray._private.worker import _global_node

        return os.path.join(_global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - only a hint in a log line
        return "/tmp/ray/session_latest/logs"


def run_requests(cfg, reward_names: list[str]) -> dict[str, Request]:
    """Every actor group a training run creates, from `cfg.ray`."""
    r = cfg.ray
    rollouts = 1 if r.rollout_workers == "auto" else r.rollout_workers  # auto: at least one must fit
    requests = {"rollout": Request(rollouts, *r.role("rollout")),
                "learner": Request(r.learner_workers, *r.role("learner"))}
    for name in reward_names:
        requests[f"reward pool {name!r}"] = Request(r.reward_workers, *r.role("reward"))
    if r.data_cpus > 0:
        requests["Ray Data (pair stream)"] = Request(1, r.data_cpus, 0.0)
    return requests


def shortfall(requests: dict[str, Request], have: dict[str, float]) -> str | None:
    """None when the summed requests fit `have` (Ray's resource totals), else a message with the numbers."""
    need_cpu = sum(q.count * q.cpus for q in requests.values())
    need_gpu = sum(q.count * q.gpus for q in requests.values())
    have_cpu, have_gpu = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
    if need_cpu <= have_cpu + RESOURCE_SLACK and need_gpu <= have_gpu + RESOURCE_SLACK:
        return None
    parts = ", ".join(f"{name}: {q.count} × ({q.cpus:g} CPU, {q.gpus:g} GPU)" for name, q in requests.items())
    missing = []
    if need_cpu > have_cpu + RESOURCE_SLACK:
        missing.append(f"{need_cpu - have_cpu:g} CPU")
    if need_gpu > have_gpu + RESOURCE_SLACK:
        missing.append(f"{need_gpu - have_gpu:g} GPU")
    return (f"actor requests exceed the cluster by {' and '.join(missing)}: {parts} = {need_cpu:g} CPU, "
            f"{need_gpu:g} GPU; the cluster has {have_cpu:g} CPU, {have_gpu:g} GPU. Lower ray.*_cpus / ray.*_gpus "
            f"or the worker counts, add nodes, or raise ray.num_cpus (pending actors would otherwise wait forever)")


def check_fits(requests: dict[str, Request | tuple[int, float, float]], wait_s: float = 0.0) -> None:
    """Raise RuntimeError unless the summed requests fit the cluster's totals (not what is free now), polling up
    to `wait_s` seconds for an autoscaler. Call it once with every group the run creates: groups that each fit
    alone may not fit together."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("check_fits: Ray is not initialised; call ray.init (or placement.connect) first")
    requests = {k: q if isinstance(q, Request) else Request(*q) for k, q in requests.items()}
    deadline = time.monotonic() + wait_s
    while True:
        problem = shortfall(requests, ray.cluster_resources())
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise ResourceShortfall(problem)
        log.info("waiting for the cluster to grow (%.0f s left): %s", deadline - time.monotonic(), problem)
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def rollout_capacity(cfg, reward_names: list[str]) -> int:
    """How many rollout actors the cluster holds now beside every other actor group (for `rollout_workers: auto`),
    between 1 and `ray.max_rollout_workers`."""
    import ray

    have = ray.cluster_resources()
    others = {k: q for k, q in run_requests(cfg, reward_names).items() if k != "rollout"}
    free_cpu = float(have.get("CPU", 0.0)) - sum(q.count * q.cpus for q in others.values())
    free_gpu = float(have.get("GPU", 0.0)) - sum(q.count * q.gpus for q in others.values())
    cpus, gpus = cfg.ray.role("rollout")
    fits = [math.floor(free_cpu / cpus + RESOURCE_SLACK)] + ([math.floor(free_gpu / gpus + RESOURCE_SLACK)]
                                                              if gpus > 0 else [])
    return max(1, min(cfg.ray.max_rollout_workers, *fits))


def torch_threads(cpus: float, configured: int | None) -> int:
    """Intra-op threads for an actor: the configured number, else its CPU request rounded up (at least 1)."""
    return configured if configured is not None else max(1, math.ceil(cpus - RESOURCE_SLACK))


def role_threads(cfg, role: str, workers: int, node_cpus: float | None = None) -> int:
    """torch intra-op threads per actor of a role ('rollout', 'learner', 'reward'): `ray.<role>_threads`, else
    `ray.threads_per_worker`, else fitted to the machine:

    - an actor with a GPU: its CPU request rounded up (the GPU does the work; threads only feed it);
    - a CPU-only reward actor: 1 (reward models are small; the pools score while rollouts run);
    - CPU-only rollout actors and learner ranks: the node's cores shared by the role's `workers` actors. In sync mode
      the phases alternate, so each phase may use every core; async runs rollouts during the update, so each role
      gets half. More threads than cores would only oversubscribe: 2 threads per actor with 4 reward pools ran
      Ray sync at 0.52x the in-process loop on 2 cores (RESULTS, issue 9), the spinning threads fighting.

    `node_cpus`: the largest node's CPU count (default: asked from the connected cluster)."""
    configured = cfg.ray.threads(role)
    if configured is not None:
        return configured
    cpus, gpus = cfg.ray.role(role)
    if gpus > 0:
        return torch_threads(cpus, None)
    if role == "reward":
        return 1
    if node_cpus is None:
        node_cpus = largest_node_cpus()
    share = int(node_cpus // max(1, workers))
    if cfg.rollout.async_:
        share //= 2
    return max(1, share)


def largest_node_cpus() -> float:
    """The CPU count of the cluster's largest alive node (the local machine's when Ray reports none)."""
    import ray

    sizes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return max(sizes, default=0.0) or float(os.cpu_count() or 1)


def in_object_store(value):
    """An ObjectRef of `value` (put now), or `value` itself when it already is one: what several actor groups
    share, or a group rebuilt later gets, is put once."""
    import ray

    return value if isinstance(value, ray.ObjectRef) else ray.put(value)
