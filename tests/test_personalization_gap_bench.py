"""benchmarks/personalization_gap.py on the micro world: both runs (proxy, gold) train with reward backprop, are
scored on the same held-out pairs with the same noise, and the gold run really trains on the oracle's P(click)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import MICRO_CONFIG, load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("personalization_gap")


def test_proxy_and_gold_runs_share_the_start_and_diverge(bench, micro_preference, tmp_path, monkeypatch):
    cfg, _, _ = micro_preference
    out = tmp_path / "gap"
    monkeypatch.setattr("sys.argv", ["personalization_gap.py", "--config", str(MICRO_CONFIG), "--iterations", "2",
                                     "--eval-every", "1", "--pairs", "6", "--out", str(out),
                                     f"world.dir={cfg.world.dir}", "algo.name=backprop", "algo.lr=0.05",
                                     "algo.num_inference_steps=3", "algo.backprop_steps=1"])
    bench.main()
    curves = json.loads((out / "personalization_gap.json").read_text())["curves"]
    assert set(curves) == {"proxy", "gold"} and [r["iteration"] for r in curves["gold"]] == [0, 1, 2]
    proxy, gold = curves["proxy"], curves["gold"]
    for key in ("gold_ctr_icg", "gold_ctr_user_zeroed", "proxy", "clip_t", "ctr_reference", "ctr_best_variant"):
        assert proxy[0][key] == pytest.approx(gold[0][key]), key  # same init, pairs and noise before training
    assert all(0.0 < r["gold_ctr_icg"] < 1.0 and np.isfinite(r["proxy"]) for r in proxy + gold)
    assert proxy[-1]["gold_ctr_icg"] != gold[-1]["gold_ctr_icg"]  # different rewards, different updates
    assert (out / "personalization_gap.png").stat().st_size > 1000
