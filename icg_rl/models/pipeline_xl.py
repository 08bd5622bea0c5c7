"""ICGXLPipeline: the ICG pipeline on SDXL bases (SDXL 1.0 base, any `StableDiffusionXLPipeline` folder).

It *is* a `StableDiffusionXLPipeline` — two CLIP text encoders whose penultimate hidden states are concatenated
(768 + 1280 = 2048 wide on SDXL) plus the second one's pooled embedding, a `UNet2DConditionModel` with SDXL's
"text_time" added conditioning (pooled text + six size/crop ids) — plus the ICG modules, with the meta features
entering every UNet cross-attention block through the same adapter as SD1.5 (`models/adapter.py`). Sampling is the
parent's `__call__` with the ICG tokens as `ip_adapter_image_embeds`; at gate zero its images equal the stock
pipeline's. The unconditional branch is SDXL's: with `force_zeros_for_empty_prompt` (SDXL's default) zero text and
zero pooled embeddings, not the encoding of "" (`uncond_text`). Load it with `ICGPipeline.from_pretrained(folder)`.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from icg_rl.models.adapter import ICGAdapter
from icg_rl.models.mllm import MetaTokenEncoder
from icg_rl.models.pipeline_mixin import ICGModules, ICGPipelineMixin


class ICGXLPipeline(ICGPipelineMixin, StableDiffusionXLPipeline):
    base_pipeline = StableDiffusionXLPipeline
    optional_base_components = ("image_encoder", "feature_extractor")
    denoiser_name = "unet"
    adapter_class = ICGAdapter
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None, mllm: MetaTokenEncoder = None, icg: ICGModules = None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self._install_icg(mllm, icg)

    # --------------------------------------------------------------------------------------------- family hooks
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen (prompt_embeds [B, L, D_1 + D_2], pooled [B, P]): both CLIPs' penultimate layers, no CFG."""
        with torch.no_grad():
            embeds, _, pooled, _ = self.encode_prompt(prompts, None, self._execution_device, 1, False)
        return embeds, pooled

    def uncond_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's negative text: zeros (text [1, L, D] and pooled [1, P]) under `force_zeros_for_empty_prompt`,
        as the stock pipeline uses without a negative prompt; the encoding of "" otherwise."""
        embeds, pooled = self.encode_text([""])
        if self.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(embeds), torch.zeros_like(pooled)
        return embeds, pooled

    def add_time_ids(self, rows: int, pooled: torch.Tensor) -> torch.Tensor:
        """SDXL's micro-conditioning [rows, 6] at the native resolution: original = target size = (H, W), crop
        (0, 0) — what the parent's `__call__` passes without size arguments."""
        size = (self.default_sample_size * self.vae_scale_factor,) * 2
        ids = self._get_add_time_ids(size, (0, 0), size, dtype=pooled.dtype,
                                     text_encoder_projection_dim=int(pooled.shape[-1]))  # (1, 6)
        return ids.to(pooled.device).repeat(rows, 1)  # (rows, 6)

    def denoiser_output(self, latents, t, prompt_embeds, pooled, features) -> torch.Tensor:
        """ε prediction of one branch: latents [B, C, h, w], text [B, L, D] + pooled [B, P], ICG [B, K, d_mllm]."""
        latents = self.scheduler.scale_model_input(latents, t)
        added = {"text_embeds": pooled, "time_ids": self.add_time_ids(len(latents), pooled)}
        return self.unet(latents, t, encoder_hidden_states=prompt_embeds,
                         added_cond_kwargs=added | self.icg.adapter.added_cond_kwargs(features)).sample

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, titles: list[str], reference_images=None, users=None, num_images_per_prompt: int = 1,
                 generator=None, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 output_type: str = "pil", **kwargs):
        """1. check inputs → 2. meta tokens + user refinement → 3.–7. the parent pipeline's prompt encoding,
        timesteps, latents, denoising (ICG tokens as IP-Adapter embeddings) and decoding."""
        prompts, embeds = self.icg_call_inputs(titles, reference_images, users, num_images_per_prompt,
                                               guidance_scale)
        return super().__call__(prompt=prompts, ip_adapter_image_embeds=[embeds], num_images_per_prompt=1,
                                generator=generator, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, output_type=output_type, **kwargs)

    @classmethod
    def build_icg(cls, base, *args, **kwargs):
        """The mixin's build, keeping the base's `force_zeros_for_empty_prompt` (a config value, which diffusers'
        `components` leaves out)."""
        pipe = super().build_icg(base, *args, **kwargs)
        pipe.register_to_config(force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt)
        return pipe
