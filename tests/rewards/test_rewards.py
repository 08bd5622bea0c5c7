"""Rewards on the micro world's models, plus the LAION layout on a CLIP with ViT-L/14's embedding width."""

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from icg_rl.models.aesthetic_head import AestheticHead
from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.rewards.aesthetic import AestheticReward
from icg_rl.rewards.base import check_finite
from icg_rl.rewards.registry import build_reward

LAION_SHAPES = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
                "layers.7": (1, 16)}


def laion_state_dict() -> dict[str, torch.Tensor]:
    """Randomly filled, in the exact layout of sac+logos+ava1-l14-linearMSE.pth."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in LAION_SHAPES.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=generator) * 0.05
        state[f"{name}.bias"] = torch.randn(shape[0], generator=generator) * 0.05
    return state


def batch_for(cfg, size: int) -> dict:
    rng = np.random.default_rng(0)
    return {"title": ["The Haunted Crypt", "Grim Curse", "Tender Heart", "Quantum Nebula"][:size],
            "reference_image": rng.integers(0, 255, (size, 32, 32, 3), dtype=np.uint8),
            "has_reference": np.array([True, False, True, True][:size]),
            "user_id": np.array(["u00001", "nobody", "u00003", "u00004"][:size]),
            "history": np.array([["i00001", "i00002"], ["", ""], ["i00003", ""], ["", ""]][:size], dtype=object)}


def test_laion_layout_loads_and_scores_on_a_768d_clip(tmp_path):
    torch.save(laion_state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    head = AestheticHead.load(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    assert head.in_dim == 768
    tiny_l14_width = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=768))
    from icg_rl.models.zoo import image_processor

    embedder = CLIPEmbedder(tiny_l14_width, CLIPProcessor(image_processor=image_processor(32),
                                                          tokenizer=_any_tokenizer()))
    scores = AestheticReward(embedder, head).score(torch.rand(3, 3, 64, 64))
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def _any_tokenizer():
    from icg_rl.models.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(["a b c"], 520, 16)


def test_non_laion_layout_names_missing_and_unexpected_keys(tmp_path):
    state = laion_state_dict()
    state.pop("layers.7.weight")
    state["fc.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layers.7.weight'\], unexpected keys \['fc.weight'\]"):
        AestheticHead.load(tmp_path / "bad.pth")


@pytest.mark.parametrize("name", ["aesthetic", "clip_t", "clip_i"])
def test_differentiable_rewards_pass_gradient_to_pixels(micro_world, name):
    cfg, _ = micro_world
    reward = build_reward(name, cfg.reward, cfg.world.dir)
    assert reward.differentiable
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    scores = reward.score(images, batch_for(cfg, 4))
    assert scores.shape == (4,)
    scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_clip_i_falls_back_to_clip_t_without_reference(micro_world):
    cfg, _ = micro_world
    clip_i = build_reward("clip_i", cfg.reward, cfg.world.dir)
    clip_t = build_reward("clip_t", cfg.reward, cfg.world.dir)
    images, batch = torch.rand(4, 3, 32, 32), batch_for(cfg, 4)
    with torch.no_grad():
        by_image, by_title = clip_i.score(images, batch), clip_t.score(images, batch)
    assert torch.allclose(by_image[1], by_title[1])  # row 1 has no reference image
    assert not torch.allclose(by_image[0], by_title[0])


def test_bad_images_and_scores_get_clear_errors(micro_world):
    cfg, _ = micro_world
    reward = build_reward("aesthetic", cfg.reward, cfg.world.dir)
    with pytest.raises(ValueError, match=r"must be \[B, 3, H, W\], got shape \(4, 32, 32, 3\)"):
        reward.score(torch.rand(4, 32, 32, 3))
    with pytest.raises(TypeError, match="float in \\[0, 1\\], got dtype torch.uint8"):
        reward.score(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"in \[0, 1\], got values in \[-1.000"):
        reward.score(torch.full((2, 3, 32, 32), -1.0))
    with pytest.raises(FloatingPointError, match="reward 'aesthetic' produced 1 non-finite"):
        check_finite(torch.tensor([0.0, float("nan")]), "aesthetic")
    with pytest.raises(ValueError, match="unknown reward 'beauty'; registered rewards: aesthetic, clip_i"):
        build_reward("beauty", cfg.reward, cfg.world.dir)


def test_pickscore_style_folder_scores_with_the_logit_scale(micro_world, tmp_path):
    """Any CLIPModel + processor folder works as a PickScore-style reward (here: the micro CLIP, saved anew)."""
    from pathlib import Path

    from icg_rl.config import RewardConfig

    cfg, _ = micro_world
    source = Path(cfg.world.dir) / "models" / "clip"
    CLIPModel.from_pretrained(str(source)).save_pretrained(tmp_path / "pickscore")
    CLIPProcessor.from_pretrained(str(source)).save_pretrained(tmp_path / "pickscore")
    pick = build_reward("pickscore", RewardConfig(pickscore=str(tmp_path / "pickscore")), cfg.world.dir)
    clip_t = build_reward("clip_t", cfg.reward, cfg.world.dir)
    images, batch = torch.rand(2, 3, 32, 32), batch_for(cfg, 2)
    with torch.no_grad():
        scale = pick.embedder.logit_scale
        assert torch.allclose(pick.score(images, batch), scale * clip_t.score(images, batch), atol=1e-4)
    with pytest.raises(ValueError, match="reward.pickscore: no folder configured"):
        build_reward("pickscore", RewardConfig(), cfg.world.dir)
