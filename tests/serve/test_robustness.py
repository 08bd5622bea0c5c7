"""Hostile and heavy traffic against the real endpoint: hundreds of malformed requests, then sustained load."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings

from tests.serve.malformed import EXPERIMENT, VALID, malformed

sent: list[int] = []


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(request=malformed())
def test_malformed_requests_get_4xx_never_5xx(served, request):
    body, headers = request
    response = requests.post(f"{served['url']}/v1/covers", data=body, headers=headers, timeout=60)
    sent.append(response.status_code)
    assert 400 <= response.status_code < 500, (body[:200], response.status_code, response.text[:300])
    assert "error" in response.json()


def test_server_is_healthy_after_the_fuzzing(served):
    assert len(sent) >= 500, f"only {len(sent)} malformed requests were sent"
    assert requests.get(f"{served['url']}/healthz", timeout=30).status_code == 200
    ok = requests.post(f"{served['url']}/v1/covers", json=VALID, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["images"]) == 1


@pytest.mark.slow
def test_32_concurrent_clients_for_20_seconds_see_no_errors(served):
    url, stop_at = f"{served['url']}/v1/covers", time.monotonic() + 20.0
    codes: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        n = 0
        while time.monotonic() < stop_at:
            body = {"title": f"Client {index} request {n}", "seed": index * 1000 + n, "num_inference_steps": 2,
                    "user_id": served["users"][index % len(served["users"])]}
            if index % 2:  # half the clients through the A/B split: both policies' batches interleave
                body["experiment"] = EXPERIMENT
            try:
                response = session.post(url, json=body, timeout=120)
                with lock:
                    codes.append(response.status_code)
            except requests.RequestException as error:
                with lock:
                    failures.append(repr(error))
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert codes and all(c == 200 for c in codes), {c: codes.count(c) for c in set(codes)}
    assert len(codes) >= 32  # every client got at least one answer
