"""The tiny model zoo: CoverWorld's base models, built from configs and saved in their standard formats.

Layout under `DIR/models/` (each folder loads with the library's own `from_pretrained`, exactly as a user's real
checkpoint would):

    sd/         StableDiffusionPipeline folder: vae (AutoencoderKL ×4), unet (UNet2DConditionModel on 8×8 latents),
                text_encoder (CLIPTextModel) + tokenizer (BPE trained on the titles), scheduler (DDIM)
    clip/       CLIPModel + CLIPProcessor (32 px, patch 4) for relevance rewards
    mllm/       LlavaForConditionalGeneration + LlavaProcessor (random init; its meta tokens are what ICG trains)
    aesthetic/  LAION-layout aesthetic head (plain state dict `head.pth`) + config.json naming its CLIP
    judge/      the genre judge used to evaluate base samples (evaluation only)
    sd3/        StableDiffusion3Pipeline folder, built on demand (models/flow_base.py): an SD3Transformer2DModel trained
                by rectified flow, the same VAE, the CLIP text tower twice (CLIPTextModelWithProjection), no T5
    sdxl/       StableDiffusionXLPipeline folder, built on demand (models/xl_base.py): a UNet with SDXL's "text_time"
                conditioning, warm-started from sd/unet, the same VAE, the CLIP text tower as both text encoders

Sizes follow what trained well on 2 CPU cores (docs/architecture.md §4): 32×32 covers, a ×4 VAE to 8×8×4 latents, a UNet
that also sees a pooled text embedding (`addition_embed_type="text"`, computed inside the UNet from the same
encoder states, so the stock StableDiffusionPipeline runs it unchanged).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import JointAttnProcessor2_0
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
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
FLOW_HEAD_DIM = 32  # channels per attention head of the SD3 transformer (zoo.flow_width / 32 heads)
FLOW_PATCH_SIZE = 2  # 4×4 tokens of 2×2×4 latents: 1100 steps of 4 blocks beat 800 of 3 at patch 1 (same seconds)


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


def build_xl_unet(cfg: ZooConfig, image_size: int, text_width: int, projection_dim: int) -> UNet2DConditionModel:
    """`build_unet`'s levels and widths with SDXL's conditioning (so the SD UNet's weights mostly carry over):
    cross-attention over both CLIPs' penultimate states side by side (2 × text_width wide), linear attention
    projections, and "text_time" added conditioning — the second CLIP's pooled projection (projection_dim) beside the
    six size/crop ids, each id in a sinusoidal embedding of `xl_time_embed_dim` channels."""
    return UNet2DConditionModel(
        sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=2 * text_width,
        attention_head_dim=2, use_linear_projection=True,  # heads, as in build_unet; SDXL projects linearly
        addition_embed_type="text_time", addition_time_embed_dim=cfg.xl_time_embed_dim,
        projection_class_embeddings_input_dim=projection_dim + 6 * cfg.xl_time_embed_dim,
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


def text_encoder_with_projection(clip: CLIPModel) -> CLIPTextModelWithProjection:
    """SD3's CLIP encoders (CLIP-L and bigG there): our CLIP's text tower and its text projection, which SD3 pools."""
    encoder = CLIPTextModelWithProjection(clip.config.text_config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval()


def build_sd3_transformer(cfg: ZooConfig, text_width: int, projection_dim: int, latent_size: int
                          ) -> SD3Transformer2DModel:
    """A tiny SD3 MMDiT on `latent_size`² × 4 latents in FLOW_PATCH_SIZE² patches. Its context is what
    StableDiffusion3Pipeline builds with two CLIP encoders and no T5: their penultimate states side by side
    (2 × text_width wide, hence joint_attention_dim; T5's zero tokens get the same width), pooled = both
    projections (2 × projection_dim)."""
    return SD3Transformer2DModel(
        sample_size=latent_size, patch_size=FLOW_PATCH_SIZE, in_channels=4, out_channels=4, num_layers=cfg.flow_layers,
        attention_head_dim=FLOW_HEAD_DIM, num_attention_heads=cfg.flow_width // FLOW_HEAD_DIM,
        joint_attention_dim=2 * text_width, caption_projection_dim=cfg.flow_width,
        pooled_projection_dim=2 * projection_dim, pos_embed_max_size=latent_size // FLOW_PATCH_SIZE,
    )


def flow_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    """SD3's sampler: Euler steps on the flow ODE, sigmas shifted to shift·σ / (1 + (shift − 1)·σ). SD3 shifts by 3
    at 1024 px (more pixels keep more signal at a given σ, SD3 paper §5.3.2); our 8×8×4 latents need none: at 10
    steps shifts 1-3 judged alike (97-98%) and as close to the covers as 40 steps, so the default is 1 (no shift)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


class RepeatedTailAttnProcessor(JointAttnProcessor2_0):
    """SD3 joint attention in which the last context token stands for `repeats` identical copies of itself.

    Without T5, StableDiffusion3Pipeline appends `max_sequence_length` (256) all-zero T5 tokens to the CLIP tokens.
    They enter the transformer identical and stay identical (every layer but attention acts per token, and equal
    queries attend alike), so as keys they act as one token whose attention logit is raised by log(repeats). With
    this processor one such token gives the stock pipeline's output exactly, at ~1/5 of the cost of 288 tokens.
    """

    def __init__(self, repeats: int):
        super().__init__()
        self.repeats = repeats

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, image_tokens = hidden_states.shape[:2]

        def split_heads(x, norm):  # (B, T, C) -> (B, heads, T, C / heads)
            x = x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        q = torch.cat([split_heads(attn.to_q(hidden_states), attn.norm_q),
                       split_heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], dim=2)
        k = torch.cat([split_heads(attn.to_k(hidden_states), attn.norm_k),
                       split_heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], dim=2)
        v = torch.cat([split_heads(attn.to_v(hidden_states), None),
                       split_heads(attn.add_v_proj(encoder_hidden_states), None)], dim=2)  # (B, heads, T, d)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)  # (1, T): added to every query's logits
        bias[:, -1] = math.log(self.repeats)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).flatten(2)  # (B, T, C)
        image, context = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context
