"""Parameter counts (trainable ICG vs frozen base) for the tiny CoverWorld default and an SD1.5 + Qwen2-VL-2B
layout, and the ICG adapter against the denoiser of each real base family (SD1.5 UNet, SDXL UNet, SD3.5-Medium
MMDiT, meta features of Qwen2-VL-2B's width 1536) — counted from the published configs on the meta device, no
weights needed.

    python benchmarks/param_counts.py [--world artifacts/coverworld] [--meta-tokens 64] [--users 100000]
    python benchmarks/param_counts.py --denoisers-only
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import init_empty_weights

from icg_rl.models.adapter import ICGAdapter
from icg_rl.models.adapter_sd3 import ICGJointAdapter
from icg_rl.models.user import FiLMRefiner, UserEncoder

SD15_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 cross_attention_dim=2048, attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                 up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)  # pooled 1280 + 6 ids × 256
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
QWEN2_VL_2B_HIDDEN = 1536
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77)
QWEN2_VL_2B_TEXT = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                          spatial_merge_size=2, in_channels=3, temporal_patch_size=2)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def icg_counts(unet, mllm_hidden: int, meta_tokens: int, users: int, item_dim: int, user_dim: int) -> dict:
    adapter = ICGAdapter(unet, mllm_hidden, meta_tokens)
    user = UserEncoder([f"u{i}" for i in range(users)], item_dim, user_dim)
    refiner = FiLMRefiner(user_dim, mllm_hidden)
    return {"meta tokens": meta_tokens * mllm_hidden, "user encoder": count(user), "refiner": count(refiner),
            "adapter": count(adapter)}


def real_layout(meta_tokens: int, users: int) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
        frozen = {"unet": count(unet), "vae": count(AutoencoderKL(**SD15_VAE)),
                  "text encoder": count(CLIPTextModel(CLIPTextConfig(**SD15_TEXT)))}
        qwen = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=QWEN2_VL_2B_TEXT,
                                                             vision_config=QWEN2_VL_2B_VISION))
        frozen["mllm (Qwen2-VL-2B)"] = count(qwen.model)  # the LM head is tied to the embeddings (and unused)
        trainable = icg_counts(unet, 1536, meta_tokens, users, item_dim=768, user_dim=256)
    return trainable, frozen


def tiny_layout(world: Path, meta_tokens: int) -> tuple[dict, dict]:
    from diffusers import StableDiffusionPipeline
    from transformers import LlavaForConditionalGeneration

    sd = StableDiffusionPipeline.from_pretrained(str(world / "models" / "sd"))
    llava = LlavaForConditionalGeneration.from_pretrained(str(world / "models" / "mllm"))
    import pandas as pd

    users = len(pd.read_parquet(world / "users.parquet"))
    frozen = {"unet": count(sd.unet), "vae": count(sd.vae), "text encoder": count(sd.text_encoder),
              "mllm (tiny LLaVA)": count(llava.model)}  # MetaTokenEncoder runs the model without its LM head
    hidden = llava.config.text_config.hidden_size
    return icg_counts(sd.unet, hidden, meta_tokens, users, item_dim=64, user_dim=64), frozen


def denoiser_rows(meta_tokens: int = 4, mllm_hidden: int = QWEN2_VL_2B_HIDDEN) -> list[tuple[str, int, int]]:
    """(family, base denoiser params, ICG adapter params) for each real base family's denoiser."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    rows = []
    with torch.device("meta"):  # buffers too: SD3.5's 384² × 1536 position table would take 0.9 GB and seconds
        for family, build, adapter_class in (
                ("SD1.5 UNet", lambda: UNet2DConditionModel(**SD15_UNET), ICGAdapter),
                ("SDXL UNet", lambda: UNet2DConditionModel(**SDXL_UNET), ICGAdapter),
                ("SD3.5-Medium MMDiT", lambda: SD3Transformer2DModel(**SD35M_TRANSFORMER), ICGJointAdapter)):
            denoiser = build()
            rows.append((family, count(denoiser), count(adapter_class(denoiser, mllm_hidden, meta_tokens))))
    return rows


def print_denoisers(rows: list[tuple[str, int, int]]) -> None:
    print(f"{'denoiser':<22}{'base params':>16}{'ICG adapter':>16}{'adapter / base':>16}")
    for family, base, adapter in rows:
        print(f"{family:<22}{base:>16,}{adapter:>16,}{100 * adapter / base:>15.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="artifacts/coverworld", help="a CoverWorld build folder")
    parser.add_argument("--meta-tokens", type=int, default=4, help="K for the tiny default")
    parser.add_argument("--real-meta-tokens", type=int, default=64, help="K for SD1.5 + Qwen2-VL (EasyRef uses 64)")
    parser.add_argument("--users", type=int, default=100_000, help="known users in the real layout")
    parser.add_argument("--denoisers-only", action="store_true", help="only the per-family adapter table")
    args = parser.parse_args()
    print_denoisers(denoiser_rows())
    if args.denoisers_only:
        return
    print()
    rows = [("tiny CoverWorld", *tiny_layout(Path(args.world), args.meta_tokens)),
            ("SD1.5 + Qwen2-VL-2B", *real_layout(args.real_meta_tokens, args.users))]
    print(f"{'layout':<22}{'part':<22}{'params':>16}")
    for layout, trainable, frozen in rows:
        for part, n in trainable.items():
            print(f"{layout:<22}{'train: ' + part:<22}{n:>16,}")
        for part, n in frozen.items():
            print(f"{layout:<22}{'frozen: ' + part:<22}{n:>16,}")
        t, f = sum(trainable.values()), sum(frozen.values())
        print(f"{layout:<22}{'TOTAL trainable':<22}{t:>16,}  ({100 * t / (t + f):.2f}% of all)")
        print(f"{layout:<22}{'TOTAL frozen':<22}{f:>16,}")


if __name__ == "__main__":
    main()
