"""A generator replica dies under load (a real SIGKILL of its process, requests in flight on it): no request fails and
every response equals the same request's undisturbed one; with `recovery.max_retries: 0` the requests it held get a
clear 503. Then the health check's view of a wedged or broken replica (recovery.py's BatchWatch)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from ray.exceptions import ActorDiedError

from icg_rl.config.serve import Recovery
from icg_rl.serve.recovery import BatchWatch, ReplicaLost, with_retries
from tests.serve.conftest import settings, wait_healthy

KILL_APP, NO_RETRY_APP = "icg_kill", "icg_noretry"
# heavy enough (4 images × 20 steps) that a replica still holds requests when the test kills it
BODIES = [{"title": f"Harbour at dusk {i}", "seed": 100 + i, "num_images": 4, "num_inference_steps": 20}
          for i in range(24)]
DIED = re.compile(r"^generator: the replica generating this request died \(\w+\) on each of 1 attempt "
                  r"\(recovery\.max_retries=0\)")


@pytest.fixture(scope="module")
def apps(served):
    """Two more apps on the package's Serve instance: `/kill` (2 generator replicas, default recovery) and
    `/noretry` (1 replica, max_retries 0); deleted afterwards, so the killed replicas' replacements leave too."""
    from ray import serve

    from icg_rl.serve.app import application

    # max_batch_size 1: a request's pixels then cannot depend on which requests shared its batch (README), so a
    # resent request must equal its undisturbed run byte for byte
    generator = {"ray_actor_options": {"num_cpus": 0.2}, "user_config": {"max_batch_size": 1,
                                                                         "batch_wait_timeout_s": 0.0}}
    api = {"ray_actor_options": {"num_cpus": 0.1}}
    serve.run(application(settings(served["checkpoint"]),
                          {"CoverAPI": api, "CoverGenerator": generator | {"num_replicas": 2}}),
              name=KILL_APP, route_prefix="/kill")
    serve.run(application(settings(served["checkpoint"], recovery={"max_retries": 0}),
                          {"CoverAPI": api, "CoverGenerator": generator | {"num_replicas": 1}}),
              name=NO_RETRY_APP, route_prefix="/noretry")
    urls = {KILL_APP: f"{served['url']}/kill", NO_RETRY_APP: f"{served['url']}/noretry"}
    for url in urls.values():
        wait_healthy(url)
    yield urls
    serve.delete(KILL_APP)
    serve.delete(NO_RETRY_APP)


def generator_stats(app: str) -> dict:
    """One generator replica's counters (pid, in_flight, ...) through a Serve handle: whichever replica the router
    picks."""
    from ray import serve

    return serve.get_deployment_handle("CoverGenerator", app_name=app).stats.remote().result(timeout_s=60)


def replica_pids(app: str, count: int, timeout_s: float = 180.0) -> set[int]:
    pids: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < count and time.monotonic() < deadline:
        pids.add(generator_stats(app)["pid"])
    assert len(pids) == count, f"found generator pids {pids}, expected {count} replicas"
    return pids


def kill_a_busy_replica(app: str, timeout_s: float = 120.0) -> tuple[int, int]:
    """SIGKILL the first replica that reports requests in flight; -> (its pid, how many it held as last seen). The
    first that does, not a chosen one: the router sends the stats call to the less loaded replica, so a chosen one
    might never answer while busy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = generator_stats(app)
        if stats["in_flight"] > 0:
            os.kill(stats["pid"], signal.SIGKILL)
            return stats["pid"], stats["in_flight"]
    raise AssertionError(f"no replica of {app} held a request within {timeout_s} s")


def post_all(url: str, bodies: list[dict]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: requests.post(f"{url}/v1/covers", json=body, timeout=300), bodies))


def attempts(response: requests.Response) -> int:
    match = re.search(r'attempts;desc="(\d+)"', response.headers.get("Server-Timing", ""))
    assert match, response.headers.get("Server-Timing")
    return int(match.group(1))


def test_a_replica_killed_under_load_fails_no_request_and_changes_no_response(apps):
    url = apps[KILL_APP]
    undisturbed = [requests.post(f"{url}/v1/covers", json=body, timeout=300) for body in BODIES]  # one at a time
    assert all(r.status_code == 200 for r in undisturbed), [r.text[:200] for r in undisturbed if r.status_code != 200]
    replica_pids(KILL_APP, 2)  # both replicas up
    with ThreadPoolExecutor(1) as pool:
        loaded = pool.submit(post_all, url, BODIES)
        victim, held = kill_a_busy_replica(KILL_APP)
        responses = loaded.result(timeout=600)
    failed = [(r.status_code, r.text[:300]) for r in responses if r.status_code != 200]
    assert not failed, failed
    assert sum(attempts(r) > 1 for r in responses) >= 1, f"no request was resent (the victim held {held})"
    for body, before, after in zip(BODIES, undisturbed, responses):
        assert after.json() == before.json(), body  # same seed, same images, same everything
    assert victim not in replica_pids(KILL_APP, 2)  # Serve replaced it; its process is gone


def test_without_retries_a_killed_replicas_requests_get_a_clear_503(apps):
    url = apps[NO_RETRY_APP]
    with ThreadPoolExecutor(1) as pool:
        loaded = pool.submit(post_all, url, BODIES[:8])
        kill_a_busy_replica(NO_RETRY_APP)
        responses = loaded.result(timeout=600)
    lost = [r for r in responses if r.status_code != 200]
    assert lost, "every request finished before the kill"
    for response in lost:
        assert response.status_code == 503, response.text[:300]
        assert DIED.match(response.json()["error"]), response.json()
        assert response.headers.get("Retry-After") == "1"
    wait_healthy(url)  # Serve starts a replacement; the app serves again
    assert requests.post(f"{url}/v1/covers", json=BODIES[0], timeout=300).status_code == 200


# --- the pieces, without Serve -------------------------------------------------------------------------------------


def test_retries_are_bounded_and_only_for_a_lost_replica():
    calls: list[int] = []

    async def dies_then(n_deaths: int, error: Exception | None = None):
        calls.append(1)
        if len(calls) <= n_deaths:
            raise ActorDiedError()
        if error is not None:
            raise error
        return "images"

    recovery = Recovery(max_retries=2, retry_backoff_s=0.0)
    assert asyncio.run(with_retries(lambda: dies_then(2), recovery, "test")) == ("images", 3)
    calls.clear()
    with pytest.raises(ReplicaLost, match=r"ActorDiedError\) on each of 3 attempts \(recovery.max_retries=2\)"):
        asyncio.run(with_retries(lambda: dies_then(5), recovery, "test"))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):  # the generator refusing a request is not a lost replica: never resent
        asyncio.run(with_retries(lambda: dies_then(0, ValueError("bad")), recovery, "test"))
    assert len(calls) == 1


def test_the_health_check_fails_for_a_hung_pipeline_call_or_repeated_failures():
    now = [0.0]
    watch = BatchWatch(Recovery(max_batch_s=60.0, max_failed_batches=2), clock=lambda: now[0])
    with watch.batch():
        now[0] = 59.0
        assert watch.problem() is None
        now[0] = 61.0
        assert "wedged: a pipeline call has run for 61 s" in watch.problem()
    assert watch.problem() is None  # the call returned: healthy again
    for _ in range(2):
        with pytest.raises(RuntimeError), watch.batch():
            raise RuntimeError("CUDA error: device-side assert triggered")
    assert "2 pipeline calls failed in a row" in watch.problem() and "device-side assert" in watch.problem()
    with watch.batch():
        pass
    assert watch.problem() is None  # one success resets the count

    from icg_rl.serve.generator import CoverGenerator

    replica = object.__new__(CoverGenerator.func_or_class)  # check_health itself, without loading a model
    replica.pipe, replica.watch = object(), watch
    replica.check_health()
    watch.started = now[0] - 120.0
    with pytest.raises(RuntimeError, match="CoverGenerator: wedged"):
        replica.check_health()
