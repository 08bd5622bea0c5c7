"""ICGPipeline: a Stable Diffusion pipeline whose cross-attention also sees personalized MLLM meta tokens.

    pipe = ICGPipeline.from_pretrained("artifacts/coverworld/models/sd", mllm_path=".../models/mllm")
    images = pipe(["The Haunted Crypt"], reference_images=[cover], users=[ICGUser("u00003")]).images

`ICGPipeline.from_pretrained` is the one entry point for every base family: it reads the base folder's
`model_index.json` and builds the matching ICG pipeline — this class for SD1.x/2.x layouts
(`StableDiffusionPipeline`), `ICGXLPipeline` for SDXL, `ICGSD3Pipeline` for SD3/SD3.5 (flow matching). Each is a
subclass of the diffusers pipeline of its family plus two modules: `mllm` (the frozen image-text model with its
learnable meta tokens) and `icg` (user encoder, FiLM refiner, and the adapter installed into the denoiser through
diffusers' IP-Adapter machinery). Sampling reuses the parent's `__call__` — the same prompt encoding, timesteps,
latents, denoising and decoding — with the ICG tokens passed as IP-Adapter embeddings. With the adapter's gate at zero
the output equals the base pipeline's.

`save_pretrained(dir)` writes only ICG weights (`icg.safetensors` + `icg_config.json`, and
`pytorch_lora_weights.safetensors` in diffusers' LoRA format when the denoiser has LoRA).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from icg_rl.models.mllm import MetaTokenEncoder
from icg_rl.models.pipeline_mixin import (  # noqa: F401  (re-exported: the names users import from here)
    CONFIG_NAME,
    FORMAT_VERSION,
    LORA_NAME,
    LORA_TARGETS,
    WEIGHTS_NAME,
    ICGModules,
    ICGPipelineMixin,
    saved_config,
)


class ICGPipeline(ICGPipelineMixin, StableDiffusionPipeline):
    base_pipeline = StableDiffusionPipeline

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, mllm: MetaTokenEncoder, icg: ICGModules,
                 safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._install_icg(mllm, icg)

    # --------------------------------------------------------------------------------------------- family hooks
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        """Frozen text encoder output [B, L, D] (the pipeline's own encode_prompt, no CFG); no pooled embedding."""
        with torch.no_grad():
            embeds, _ = self.encode_prompt(prompts, self._execution_device, 1, False)
        return embeds, None

    def denoiser_output(self, latents, t, prompt_embeds, pooled, features) -> torch.Tensor:
        """ε prediction of one branch: latents [B, C, h, w], text [B, L, D], ICG features [B, K, d_mllm]."""
        latents = self.scheduler.scale_model_input(latents, t)
        return self.unet(latents, t, encoder_hidden_states=prompt_embeds,
                         added_cond_kwargs=self.icg.adapter.added_cond_kwargs(features)).sample

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, titles: list[str], reference_images=None, users=None, num_images_per_prompt: int = 1,
                 generator=None, num_inference_steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.0,
                 output_type: str = "pil", **kwargs):
        """1. check inputs → 2. meta tokens + user refinement → 3.–7. the parent pipeline's prompt encoding,
        timesteps, latents, denoising (ICG tokens as IP-Adapter embeddings) and decoding."""
        prompts, embeds = self.icg_call_inputs(titles, reference_images, users, num_images_per_prompt,
                                               guidance_scale)
        return super().__call__(prompt=prompts, ip_adapter_image_embeds=[embeds], num_images_per_prompt=1,
                                generator=generator, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, eta=eta, output_type=output_type, **kwargs)

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_base(cls, base_path, torch_dtype):
        """The stock pipeline without its safety checker (covers are scored by the reward models)."""
        return StableDiffusionPipeline.from_pretrained(str(base_path), safety_checker=None,
                                                       requires_safety_checker=False, torch_dtype=torch_dtype)


def load_checkpoint(checkpoint: str | Path, base: str | None = None, mllm: str | None = None,
                    torch_dtype: torch.dtype | None = None) -> ICGPipeline:
    """A trained policy from its ICG folder (a run's OUT/checkpoint or any save_pretrained folder), on the base
    model and MLLM it was trained with — or on `base`/`mllm` when those moved (another machine, a mounted volume)."""
    config = saved_config(checkpoint, mllm)
    base = base or config["base"]
    for field, path in (("base", base), ("mllm", config["mllm"])):
        if Path(path).is_absolute() and not Path(path).exists():
            raise FileNotFoundError(f"{field}: {path} (named by {Path(checkpoint) / CONFIG_NAME}) does not exist "
                                    f"here; pass where that model lives on this machine")
    return ICGPipeline.from_pretrained(base, mllm_path=mllm, icg_path=checkpoint, torch_dtype=torch_dtype)


def pipeline_from_config(cfg, user_ids: list[str] | None = None, item_features: dict | None = None,
                         icg_path: str | Path | None = None) -> ICGPipeline:
    """The ICGPipeline a full Config describes (`model.*`, history length from `data.history_len`)."""
    from icg_rl.paths import base_folder, mllm_folder

    base, mllm = base_folder(cfg), mllm_folder(cfg)
    m = cfg.model
    return ICGPipeline.from_pretrained(
        base, mllm_path=mllm, icg_path=icg_path, meta_tokens=m.meta_tokens, user_dim=m.user_dim,
        history_len=cfg.data.history_len, item_features=item_features, user_ids=user_ids,
        prompt_template=m.prompt_template, user_id_init_std=m.user_id_init_std,
        standardize_history=m.standardize_history, unet_lora_rank=m.lora.rank, unet_lora_alpha=m.lora.alpha,
        mllm_lora_rank=m.mllm_lora.rank)
