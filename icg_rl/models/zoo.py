"""The tiny model zoo: CoverWorld's base models, built from configs and saved in their standard formats.

Layout under `DIR/models/` (each folder loads with the library's own `from_pretrained`, exactly as a user's real
checkpoint would):

    sd/         StableDiffusionPipeline folder: vae (AutoencoderKL ×4), unet (UNet2DConditionModel on 8×8 latents),
                text_encoder (CLIPTextModel) + tokenizer (BPE trained on the titles), scheduler (DDIM)
    clip/       CLIPModel + CLIPProcessor (32 px, patch 4) for relevance rewards
    mllm/       LlavaForConditionalGeneration + LlavaProcessor (random init; its meta tokens are what ICG trains)
    aesthetic/  LAION-layout aesthetic head (plain state dict `head.pth`) + config.json naming its CLIP
    judge/      the genre judge used to evaluate base samples (evaluation only)

Sizes follow what trained well on 2 CPU cores (docs/architecture.md §4): 32×32 covers, a ×4 VAE to 8×8×4 latents, a UNet
that also sees a pooled text embedding (`addition_embed_type="text"`, computed inside the UNet from the same
encoder states, so the stock StableDiffusionPipeline runs it unchanged).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from icg_rl.config import ZooConfig

# Stable Diffusion 1.x noise schedule, so schedulers, log-probs and step counts behave as on real checkpoints.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's normalisation constants
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def text_config(cfg: ZooConfig, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=cfg.max_title_tokens,
        projection_dim=cfg.text_width,
        # set explicitly: eos_token_id == 2 switches CLIP to legacy argmax pooling
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def vision_config(cfg: ZooConfig, image_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width, num_hidden_layers=2,
                            num_attention_heads=2, image_size=image_size, patch_size=4,
                            projection_dim=cfg.text_width)


def build_clip(cfg: ZooConfig, tokenizer: CLIPTokenizer, image_size: int) -> CLIPModel:
    config = CLIPConfig(text_config=text_config(cfg, tokenizer).to_dict(),
                        vision_config=vision_config(cfg, image_size).to_dict(), projection_dim=cfg.text_width)
    return CLIPModel(config)


def image_processor(image_size: int) -> CLIPImageProcessorPil:
    """The PIL-backed CLIP processor (the default one needs torchvision, which we do not depend on)."""
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 image_mean=IMAGE_MEAN, image_std=IMAGE_STD)


def clip_processor(tokenizer: CLIPTokenizer, image_size: int) -> CLIPProcessor:
    return CLIPProcessor(image_processor=image_processor(image_size), tokenizer=tokenizer)


def build_vae(image_size: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=image_size, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), norm_num_groups=32,
    )


def build_unet(cfg: ZooConfig, image_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=cfg.text_width,
        attention_head_dim=2,  # in diffusers' UNet this is the number of heads
        addition_embed_type="text", addition_embed_type_num_heads=2,
    )


def train_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD_SCHEDULE)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_llava(cfg: ZooConfig, tokenizer, image_size: int) -> LlavaForConditionalGeneration:
    """A tiny LLaVA: CLIP-style vision tower (patch 4) + a 2-layer Llama on the world's vocabulary."""
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision_config(cfg, image_size).to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    return LlavaForConditionalGeneration(config)


def load_text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """SD's text encoder is a CLIP text tower (as SD1.5 uses CLIP ViT-L/14's): copy ours out of the trained CLIP."""
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()
