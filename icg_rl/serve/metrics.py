"""Per-policy request counts and latencies through Ray Serve's own metrics (`ray.serve.metrics`): exported with the
replica's deployment/application tags to each node's Prometheus endpoint next to Serve's built-in series, so a
dashboard can compare the arms of an experiment. As Prometheus sees them:

    ray_icg_serve_cover_requests_total{policy, experiment, outcome}   outcome: ok | error
    ray_icg_serve_cover_latency_ms_bucket{policy, experiment, le}     generator round trip + PNG encoding, ms
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]


class PolicyMetrics:
    """Created inside a replica (Ray metrics need the replica's worker)."""

    def __init__(self):
        self.requests = metrics.Counter("icg_serve_cover_requests", description="cover requests by policy",
                                        tag_keys=("policy", "experiment", "outcome"))
        self.latency = metrics.Histogram("icg_serve_cover_latency_ms", description="cover latency by policy, ms",
                                         boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("policy", "experiment"))

    def record(self, policy: str, experiment: str | None, ok: bool, seconds: float) -> None:
        tags = {"policy": policy, "experiment": experiment or ""}
        self.requests.inc(tags=tags | {"outcome": "ok" if ok else "error"})
        if ok:
            self.latency.observe(seconds * 1000.0, tags=tags)
