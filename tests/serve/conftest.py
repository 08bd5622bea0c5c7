"""One Serve instance for the serving tests: the micro world's policy behind the real HTTP proxy on 127.0.0.1.

Two applications share it: `/` (no auth) and `/secure` (bearer token from the replica's environment, a small body
limit). The checkpoint is tests/conftest.py's `micro_checkpoint` (adapter gate open, so users change the images).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests

TOKEN = "test-token-7f3a"
IMAGE_SIZE = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(checkpoint: Path, **extra) -> dict:
    return {"checkpoint": str(checkpoint), "image_size": IMAGE_SIZE, "default_steps": 4,
            "default_guidance_scale": 2.0, "torch_threads": 1,
            "limits": {"max_body_bytes": 256 * 1024, "max_image_pixels": 512 * 512, "max_num_images": 4,
                       "max_steps": 20, "max_history": 16}} | extra


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
def served(ray_cluster, micro_checkpoint):
    """{"url", "secure_url", "checkpoint", "users", "items"} for a running Serve instance; shut down afterwards."""
    from ray import serve

    from icg_rl.serve.app import application

    checkpoint, users, items = micro_checkpoint
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    generator = {"ray_actor_options": {"num_cpus": 0.2}, "user_config": {"max_batch_size": 8,
                                                                         "batch_wait_timeout_s": 0.05}}
    serve.run(application(settings(checkpoint), {"CoverAPI": small, "CoverGenerator": generator}),
              name="icg", route_prefix="/")
    secure_api = {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"ICG_TEST_TOKEN": TOKEN}}}}
    serve.run(application(settings(checkpoint, auth_token_env="ICG_TEST_TOKEN"),
                          {"CoverAPI": secure_api, "CoverGenerator": {"ray_actor_options": {"num_cpus": 0.1}}}),
              name="icg_secure", route_prefix="/secure")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    wait_healthy(f"{url}/secure")
    yield {"url": url, "secure_url": f"{url}/secure", "checkpoint": checkpoint, "users": users, "items": items}
    serve.shutdown()
