"""The evaluation section of the configuration: `python -m icg_rl.evaluate`'s arms, metrics and their models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from icg_rl.config.files import Section


class LPIPSConfig(Section):
    """LPIPS to the reference cover: plain torch modules on the public weight files (evaluation/lpips.py)."""

    backbone: Literal["alex", "vgg"] = Field("alex", description="feature network of the metric")
    backbone_weights: str | None = Field(None, description="torchvision-layout state dict of the backbone "
                                         "(alexnet-owt-*.pth / vgg16-*.pth); None = LPIPS reported unavailable")
    linear_weights: str | None = Field(None, description="the lpips package's linear heads (weights/v0.1/alex.pth "
                                       "or vgg.pth); None = LPIPS reported unavailable")


class JudgeConfig(Section):
    """The MLLM judge: a local image-text model rates each cover 1-5 on the stated criteria."""

    model: str | None = Field("coverworld", description="LLaVA / Qwen2-VL folder, 'coverworld' (the world's tiny "
                              "MLLM: random weights, plumbing only) or None (reported unavailable)")
    prompt: str | None = Field(None, description="judge prompt with a {title} placeholder; None = the built-in "
                               "prompt (relevance to the title, visual quality, appeal as a cover; answer 1-5)")
    max_new_tokens: int = Field(8, ge=1, description="tokens the judge may answer with")


class EvaluationConfig(Section):
    """`python -m icg_rl.evaluate` (docs/architecture.md §10): arms, metrics and their budgets."""

    split: str = Field("test", description="split whose (user, item) pairs are evaluated")
    pairs: int = Field(64, ge=2, description="held-out (user, item) pairs scored per arm")
    num_inference_steps: int | None = Field(None, ge=1, description="denoising steps; None = algo's")
    diversity_items: int = Field(8, ge=1, description="items each drawn for several users (diversity across users)")
    diversity_users: int = Field(4, ge=2, description="users per diversity item")
    ab_impressions_per_pair: int = Field(200, ge=1, description="simulated impressions per pair in the CoverWorld "
                                         "A/B test")
    downstream_impressions: int = Field(512, ge=16, description="test impressions (whole users) the downstream "
                                        "CTR model ranks with each arm's covers")
    downstream_train_impressions: int = Field(200_000, ge=16, description="training impressions (whole users, a "
                                              "seeded choice) the downstream CTR model learns from; bounds its cost "
                                              "on a paper-size log (CoverWorld's whole train split fits)")
    downstream_epochs: int = Field(8, ge=1, description="training passes of the downstream CTR model")
    batch_size: int = Field(32, ge=1, description="images generated per pipeline call")
    lpips: LPIPSConfig = Field(default_factory=LPIPSConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
