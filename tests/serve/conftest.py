"""One Serve instance for the serving tests: the micro world's policies behind the real HTTP proxy on 127.0.0.1.

Two applications share it: `/` serves two policies over one base — `default` (tests/conftest.py's `micro_checkpoint`,
adapter gate open, so users change the images) and `seed1` (the same recipe from another seed) — and the A/B
experiment `cover_ab` (3:1); `/secure` serves the default checkpoint alone (plain `checkpoint:` args) behind a bearer
token from the replica's environment, with a small lingering-close bound.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests

from tests.fresh_policy import save_fresh_policy
from tests.serve.malformed import EXPERIMENT, LIMITS, POLICIES

TOKEN = "test-token-7f3a"
IMAGE_SIZE = 32
ARMS = {POLICIES[0]: 3.0, POLICIES[1]: 1.0}  # the experiment's weights
LINGER_BYTES = 32 * 2**20  # `/`: a refused body up to this size is read to its end (16 MiB tests pass)
SECURE_LINGER_BYTES = 2**20  # `/secure`: larger refused bodies are not read at all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(checkpoint: Path | None, linger_bytes: int = LINGER_BYTES, **extra) -> dict:
    """The test apps' args: one `checkpoint`, or (None) `policies` in `extra`."""
    source = {"checkpoint": str(checkpoint)} if checkpoint is not None else {}
    return source | {"image_size": IMAGE_SIZE, "default_steps": 4, "default_guidance_scale": 2.0, "torch_threads": 1,
                     "limits": LIMITS | {"linger_max_bytes": linger_bytes}} | extra


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not answer 200 within {timeout_s} s")


@pytest.fixture(scope="package")
def served(ray_cluster, micro_world, micro_checkpoint, tmp_path_factory):
    """{"url", "secure_url", "checkpoint", "policies", "users", "items"} for a running Serve instance; shut down
    afterwards."""
    from ray import serve

    from icg_rl.serve.app import application

    checkpoint, users, items = micro_checkpoint
    second, _, _ = save_fresh_policy(micro_world[0], tmp_path_factory.mktemp("policy_seed1") / "checkpoint", seed=1)
    policies = {POLICIES[0]: str(checkpoint), POLICIES[1]: str(second)}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    generator = {"ray_actor_options": {"num_cpus": 0.2}, "user_config": {"max_batch_size": 8,
                                                                         "batch_wait_timeout_s": 0.05}}
    serve.run(application(settings(None, policies=policies, experiments={EXPERIMENT: ARMS},
                                   max_policies_per_replica=2), {"CoverAPI": small, "CoverGenerator": generator}),
              name="icg", route_prefix="/")
    secure_api = {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"ICG_TEST_TOKEN": TOKEN}}}}
    serve.run(application(settings(checkpoint, SECURE_LINGER_BYTES, auth_token_env="ICG_TEST_TOKEN"),
                          {"CoverAPI": secure_api, "CoverGenerator": {"ray_actor_options": {"num_cpus": 0.1}}}),
              name="icg_secure", route_prefix="/secure")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    wait_healthy(f"{url}/secure")
    yield {"url": url, "secure_url": f"{url}/secure", "checkpoint": checkpoint, "policies": policies, "users": users,
           "items": items}
    serve.shutdown()
