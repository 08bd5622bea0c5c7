"""`python -m icg_rl.evaluate` end to end on the micro world: every metric present or "unavailable: <why>", the
CoverWorld A/B table, the report files; the base arm really is the base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icg_rl.evaluation.arms import ARMS


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    from icg_rl.evaluation.lpips import random_backbone_state_dict, random_linear_state_dict

    folder = tmp_path_factory.mktemp("lpips")
    torch.save(random_backbone_state_dict("alex", seed=0), folder / "alexnet.pth")  # the public layouts, random
    torch.save(random_linear_state_dict("alex", seed=0), folder / "alex.pth")
    return folder / "alexnet.pth", folder / "alex.pth"


def small(cfg_world_dir: str, *extra: str) -> list[str]:
    return [f"world.dir={cfg_world_dir}", "evaluation.pairs=6", "evaluation.num_inference_steps=2",
            "evaluation.diversity_items=2", "evaluation.diversity_users=3", "evaluation.ab_impressions_per_pair=50",
            "evaluation.downstream_impressions=40", "evaluation.downstream_epochs=2", *extra]


def test_evaluate_writes_every_metric_and_the_ab_table(micro_preference, micro_checkpoint, lpips_files, tmp_path):
    from icg_rl.commands.evaluate import main

    cfg, _, _ = micro_preference
    checkpoint, _, _ = micro_checkpoint
    backbone, linear = lpips_files
    out = tmp_path / "evaluation"
    rc = main(["--config", "configs/micro.yaml", "--checkpoint", str(checkpoint), "--out", str(out),
               *small(cfg.world.dir, f"evaluation.lpips.backbone_weights={backbone}",
                      f"evaluation.lpips.linear_weights={linear}")])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    expected = {"aesthetic", "clip_t", "clip_i", "diversity", "personal_win_rate", "lpips_to_reference", "judge",
                "oracle_ctr", "oracle_aesthetic", "downstream_auc", "downstream_ndcg@10"}
    assert expected <= set(metrics)
    for name in expected - {"judge"}:
        for arm in ARMS:
            assert isinstance(metrics[name][arm], float) and np.isfinite(metrics[name][arm]), (name, arm)
    # random-weight judge: a score or an explicit "unavailable", and the unparseable answers are counted
    for arm in ARMS:
        value = metrics["judge"][arm]
        assert isinstance(value, float) or value.startswith("unavailable: all")
        assert 0 <= summary["judge"][arm]["unparseable"] <= summary["judge"][arm]["answered"] == 6
    # structural truths of the arms
    assert metrics["lpips_to_reference"]["reference"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["diversity"]["reference"] == pytest.approx(0.0, abs=1e-5)  # one cover per item
    assert metrics["diversity"]["base"] == pytest.approx(0.0, abs=1e-5)  # same title + noise, no user path
    assert metrics["diversity"]["icg_user_zeroed"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["diversity"]["icg"] > 1e-4  # the user changes the cover
    assert metrics["oracle_ctr"]["best_variant"] >= metrics["oracle_ctr"]["reference"]
    assert set(metrics["downstream_auc"]) == {"logged", *ARMS}
    ab = summary["ab_test"]
    assert set(ab) == {*ARMS, "best_variant"} and all(r["impressions"] == 300 for r in ab.values())
    assert all(r["ci_low"] <= r["ctr"] <= r["ci_high"] for r in ab.values())
    report = (out / "report.md").read_text()
    assert "Simulated A/B test" in report and "| oracle_ctr |" in report and "Judge prompt" in report
    from PIL import Image

    grid = Image.open(out / "samples.png")
    assert grid.size == (32 * len(ARMS), 32 * 6)  # rows = users (6 pairs), columns = arms
    assert Image.open(out / "metrics.png").size[0] > 0


def test_unconfigured_metrics_are_reported_unavailable(micro_preference, micro_checkpoint, tmp_path):
    from icg_rl.commands.evaluate import main

    cfg, _, _ = micro_preference
    checkpoint, _, _ = micro_checkpoint
    out = tmp_path / "evaluation"
    overrides = small(cfg.world.dir, "evaluation.judge.model=null", "reward.weights={aesthetic: 1.0, clip_t: 1.0}")
    assert main(["--config", "configs/micro.yaml", "--checkpoint", str(checkpoint), "--out", str(out),
                 *overrides]) == 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["lpips_to_reference"]["icg"].startswith("unavailable: LPIPS not configured")
    assert metrics["judge"]["icg"] == "unavailable: no judge model configured (evaluation.judge.model)"
    assert metrics["personal_win_rate"]["icg"].startswith("unavailable: no preference reward")
    assert "clip_i" not in metrics  # only the configured rewards are scored
    assert "Not available" in (out / "report.md").read_text()


def test_base_arm_is_the_base_model(micro_checkpoint):
    """Gate at zero: the user, the reference image and the trained adapter change nothing."""
    from icg_rl.evaluation.arms import base_model
    from icg_rl.models.pipeline import ICGPipeline, load_checkpoint
    from icg_rl.models.user import ICGUser

    checkpoint, users, _ = micro_checkpoint
    pipe = load_checkpoint(checkpoint)
    fresh_base = ICGPipeline.from_pretrained(json.loads((checkpoint / "icg_config.json").read_text())["base"],
                                             mllm_path=pipe.icg.config["mllm"])  # untrained ICG: gate 0

    def draw(p, user):
        return p(["Night Harbour"], users=[ICGUser(user)], num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    with base_model(pipe):
        a, b = draw(pipe, users[0]), draw(pipe, users[1])
    assert np.array_equal(a, b) and np.allclose(a, draw(fresh_base, users[0]), atol=1e-6)
    assert pipe.icg.adapter.projection.gate.item() == 3.0  # restored afterwards
    assert not np.allclose(draw(pipe, users[0]), a, atol=1e-3)
