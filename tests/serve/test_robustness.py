"""Hostile and heavy traffic against the real endpoint: hundreds of malformed requests, then sustained load."""

from __future__ import annotations

import base64
import json
import string
import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VALID = {"title": "Ashes of the Northern Sea", "seed": 5, "num_inference_steps": 2}
FIELDS = ("title", "reference_image", "user_id", "history", "num_images", "seed", "num_inference_steps",
          "guidance_scale")
letters = st.text(alphabet=string.ascii_letters + "!? ", min_size=1, max_size=12)
non_integral = st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not float(x).is_integer())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)
# per field, values that are always wrong (type, range or the server's limits)
WRONG = {
    "title": st.none() | st.integers() | st.just("") | st.lists(st.text(), max_size=3)
    | st.text(alphabet="ab", min_size=513, max_size=520),
    "reference_image": st.integers() | st.text(alphabet="!@#$%^&*()", min_size=1, max_size=30)
    | st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode())
    | st.sampled_from(["file:///etc/passwd", "http://169.254.169.254/latest", "../../secrets.png", "~/x.png"]),
    "user_id": st.integers() | st.just("") | st.text(alphabet="u", min_size=129, max_size=140) | st.lists(st.text()),
    "history": letters | st.lists(st.integers(), min_size=1, max_size=3) | st.lists(st.just(""), min_size=1)
    | st.lists(st.just("i00001"), min_size=17, max_size=20),
    "num_images": st.integers(max_value=0) | st.integers(min_value=5) | letters | non_integral,
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**63) | letters | non_integral,
    "num_inference_steps": st.integers(max_value=0) | st.integers(min_value=21, max_value=10**12) | letters,
    "guidance_scale": st.floats(max_value=0.999) | st.floats(min_value=20.001) | letters,
}


@st.composite
def malformed(draw) -> tuple[bytes, dict]:
    """(body bytes, headers) that must be refused with a 4xx."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "extra", "headers"]))
    headers = {"content-type": "application/json"}
    if kind == "bytes":
        body = draw(st.binary(max_size=256).filter(lambda b: not _is_valid_json_object(b)))
    elif kind == "json":  # any JSON that is not an object with a title
        value = draw(json_values.filter(lambda v: not (isinstance(v, dict) and "title" in v)))
        body = json.dumps(value).encode()
    elif kind == "field":
        field = draw(st.sampled_from(FIELDS))
        body = json.dumps(VALID | {field: draw(WRONG[field])}).encode()
    elif kind == "extra":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS))
        body = json.dumps(VALID | {key: draw(json_values)}).encode()
    else:  # a valid body sent as something else, or a body cut short
        body = json.dumps(VALID).encode()
        if draw(st.booleans()):
            headers = {"content-type": draw(st.sampled_from(["text/plain", "application/xml", "image/png", ""]))}
            body = b"<" + body
        else:
            body = body[: draw(st.integers(0, len(body) - 1))]
    return body, headers


def _is_valid_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


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
