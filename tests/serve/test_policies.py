"""Many policies on one base over real HTTP: named policies through Serve's model multiplexing, the A/B split, and
the replica's own counters (the base is loaded once; a policy is only its ICG weights)."""

from __future__ import annotations

import hashlib
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.serve.conftest import ARMS
from tests.serve.malformed import EXPERIMENT, POLICIES
from tests.serve.test_endpoint import post

REQUEST = {"title": "The Salt Road", "seed": 21, "num_inference_steps": 4}


def weights_version(checkpoint: str) -> str:
    return "icg-" + hashlib.sha256((Path(checkpoint) / "icg.safetensors").read_bytes()).hexdigest()[:12]


def test_two_policies_over_one_base_answer_with_their_own_weights(served):
    url, user = served["url"], served["users"][0]
    first, second = (post(url, REQUEST | {"user_id": user, "policy": name}) for name in POLICIES)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    a, b = first.json(), second.json()
    assert (a["policy"], b["policy"]) == POLICIES and a["experiment"] is b["experiment"] is None
    assert a["model_version"] == weights_version(served["policies"][POLICIES[0]])
    assert b["model_version"] == weights_version(served["policies"][POLICIES[1]])
    assert a["model_version"] != b["model_version"]
    assert a["images"] != b["images"]  # the same request, another policy's weights: other covers
    # swapping back restores the first policy exactly, and the default (no `policy`) is the first configured
    assert post(url, REQUEST | {"user_id": user, "policy": POLICIES[0]}).json()["images"] == a["images"]
    default = post(url, REQUEST | {"user_id": user}).json()
    assert default["policy"] == POLICIES[0] and default["images"] == a["images"]
    assert "pipeline;dur=" in first.headers["server-timing"]  # where the time went, per response


def test_models_lists_the_policies_with_their_versions(served):
    listing = requests.get(f"{served['url']}/v1/models", timeout=30)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["default_policy"] == POLICIES[0] and body["max_policies_per_replica"] == 2
    assert [(p["name"], p["model_version"]) for p in body["policies"]] == [
        (name, weights_version(served["policies"][name])) for name in POLICIES]
    assert body["experiments"] == {EXPERIMENT: ARMS}


def test_a_replica_loads_the_base_once_and_swaps_only_icg_weights(served):
    url = served["url"]
    before = requests.get(f"{url}/v1/stats", timeout=30).json()
    for name in POLICIES * 3:  # alternate: every request after the first needs the other policy's weights
        assert post(url, REQUEST | {"policy": name}).status_code == 200
    after = requests.get(f"{url}/v1/stats", timeout=30).json()
    assert after["replica"] == before["replica"]  # one generator replica in this app: the same counters
    assert after["base_loads"] == 1
    assert after["policy_loads"] == {name: 1 for name in POLICIES}  # each read from disk once, then from memory
    assert after["weight_swaps"] - before["weight_swaps"] >= 5
    assert all(after["requests"][name] - before["requests"].get(name, 0) >= 3 for name in POLICIES)


def test_an_experiment_splits_users_by_its_weights_and_each_user_keeps_an_arm(served):
    url, users = served["url"], [f"ab-user-{i}" for i in range(160)]
    share = ARMS[POLICIES[1]] / sum(ARMS.values())

    def arm(body: dict) -> str:
        response = post(url, body | {"experiment": EXPERIMENT, "num_inference_steps": 1})
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["experiment"] == EXPERIMENT
        return payload["policy"]

    with ThreadPoolExecutor(8) as pool:
        arms = list(pool.map(lambda u: arm({"title": "Split", "seed": 1, "user_id": u}), users))
        # the same users again, with other titles and seeds: the arm follows the user, nothing else
        again = list(pool.map(lambda u: arm({"title": f"Other {u}", "seed": 99, "user_id": u}), users[:40]))
    assert again == arms[:40]
    second = arms.count(POLICIES[1])
    assert set(arms) == set(POLICIES)
    bound = 4 * math.sqrt(len(users) * share * (1 - share))  # 4 binomial standard deviations
    assert abs(second - len(users) * share) <= bound, (second, len(users) * share, bound)
    # cold start (no user id): the seed decides, so a replayed request lands on the same arm
    cold = [arm({"title": "Cold", "seed": seed}) for seed in (3, 3, 4, 4)]
    assert cold[0] == cold[1] and cold[2] == cold[3]


def test_unknown_policy_or_experiment_is_a_400_listing_what_exists(served):
    url = served["url"]
    policy = post(url, {"title": "x", "policy": "nope"})
    assert policy.status_code == 400 and policy.json()["error"] == (
        f"policy: 'nope' is not served here; policies are {list(POLICIES)}")
    experiment = post(url, {"title": "x", "experiment": "nope"})
    assert experiment.status_code == 400 and experiment.json()["error"] == (
        f"experiment: 'nope' is not configured here; experiments are ['{EXPERIMENT}']")
    both = post(url, {"title": "x", "policy": POLICIES[0], "experiment": EXPERIMENT})
    assert both.status_code == 400 and both.json()["error"].startswith("policy, experiment: give one or neither")


def test_per_policy_counts_reach_rays_prometheus_endpoint(served):
    """Serve metrics (ray.serve.metrics) tagged by policy and experiment, as a dashboard would scrape them; replicas
    report every few seconds, so the earlier tests' requests show up within a bounded wait."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    deadline, seen = time.monotonic() + 30.0, {}
    while time.monotonic() < deadline:
        seen = {}
        for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith("ray_icg_serve_cover_requests_total{") and 'application="icg"' in line:
                tags = dict(re.findall(r'(\w+)="([^"]*)"', line))
                key = (tags["policy"], tags["experiment"], tags["outcome"])
                seen[key] = seen.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        if all(seen.get((name, EXPERIMENT, "ok"), 0) > 0 and seen.get((name, "", "ok"), 0) > 0 for name in POLICIES):
            break
        time.sleep(1.0)
    for name in POLICIES:  # both policies, asked directly and as arms of the experiment
        assert seen.get((name, "", "ok"), 0) >= 3 and seen.get((name, EXPERIMENT, "ok"), 0) >= 1, seen
