"""The preference model, trained with Ray Train on the shared cluster, on the micro world."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def trained(micro_preference):
    return micro_preference


def test_beats_popularity_and_reports_the_oracle(trained):
    _, _, summary = trained
    assert summary["auc"] > summary["popularity_auc"] + 0.05, summary
    assert 0.5 < summary["oracle_auc"] <= 1.0
    assert 0 <= summary["best_epoch"] < summary["epochs"] and summary["train_seconds"] > 0


def test_checkpoint_folder_is_the_preference_reward(trained):
    from icg_rl.config import RewardConfig
    from icg_rl.rewards.base import build_reward
    from tests.rewards.test_rewards import batch_for

    cfg, out, _ = trained
    reward = build_reward("preference", RewardConfig(preference=str(out / "model")), cfg.world.dir)
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    scores = reward.score(images, batch_for(cfg, 4))
    assert ((scores > 0) & (scores < 1)).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # the user matters: same images, another user, another score
    other = batch_for(cfg, 4) | {"user_id": ["u00005"] * 4, "history": [[""] * 2] * 4}
    with torch.no_grad():
        assert not torch.allclose(reward.score(images, batch_for(cfg, 4)), reward.score(images, other))


def test_ray_train_left_a_checkpoint(trained):
    _, out, _ = trained
    assert list((out / "ray_train").rglob("model.pt")), "Ray Train wrote no checkpoint"
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["history_len"] > 0 and config["user_ids"]


def test_a_changed_click_log_makes_the_model_stale(trained):
    """User-side world fields keep the base models but change the clicks: train.prepare retrains the model then."""
    from icg_rl.config import load_config
    from icg_rl.preference.train import preference_is_current
    from tests.conftest import MICRO_CONFIG

    cfg, out, _ = trained
    assert preference_is_current(out, cfg.world)
    personas = load_config(MICRO_CONFIG, [f"world.dir={cfg.world.dir}", "world.taste_segments=2"])
    assert not preference_is_current(out, personas.world)
    assert not preference_is_current(out / "nowhere", cfg.world)


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "icg_rl.preference", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "oracle" in proc.stdout
