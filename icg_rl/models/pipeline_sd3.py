"""ICGSD3Pipeline: the ICG pipeline on SD3-family flow-matching bases (SD3, SD3.5, CoverWorld's tiny `models/sd3`).

It *is* a `StableDiffusion3Pipeline` — two CLIP text encoders with pooled embeddings, the T5 encoder optional (SD3
runs without it: its tokens are zeros), `SD3Transformer2DModel`, `FlowMatchEulerDiscreteScheduler` — plus the ICG
modules, with the meta features entering every joint-attention block through the SD3 IP-Adapter route
(`models/adapter_sd3.py`). Sampling is the parent's `__call__` with the ICG tokens as `ip_adapter_image_embeds`; at
gate zero its images equal the stock pipeline's. Load it with `ICGPipeline.from_pretrained(sd3_folder, ...)`.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from icg_rl.models.adapter_sd3 import ICGJointAdapter
from icg_rl.models.mllm import MetaTokenEncoder
from icg_rl.models.pipeline_mixin import ICGModules, ICGPipelineMixin

T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length: the zero T5 tokens it adds without T5


class ICGSD3Pipeline(ICGPipelineMixin, StableDiffusion3Pipeline):
    base_pipeline = StableDiffusion3Pipeline
    optional_base_components = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")
    denoiser_name = "transformer"
    adapter_class = ICGJointAdapter
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3=None, tokenizer_3=None, image_encoder=None, feature_extractor=None,
                 mllm: MetaTokenEncoder = None, icg: ICGModules = None):
        super().__init__(transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                         text_encoder_3, tokenizer_3, image_encoder, feature_extractor)
        self._install_icg(mllm, icg)
        # Without T5 the stock pipeline appends T5_TOKENS zero tokens; we pass one and attend to it as to that many
        self.t5_tokens = T5_TOKENS if text_encoder_3 is None else None
        icg.adapter.compact_t5_tail(T5_TOKENS if text_encoder_3 is None else 1)

    def _text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = {"max_sequence_length": 1} if self.t5_tokens else {}
        embeds, _, pooled, _ = self.encode_prompt(prompts, None, None, self._execution_device, 1, False, **kwargs)
        return embeds, pooled

    # --------------------------------------------------------------------------------------------- family hooks
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen (prompt_embeds [B, L, D], pooled [B, P]): both CLIPs (+ T5 or its zeros), no CFG."""
        with torch.no_grad():
            return self._text(prompts)

    def denoiser_output(self, latents, t, prompt_embeds, pooled, features) -> torch.Tensor:
        """Velocity prediction of one branch: latents [B, C, h, w], text [B, L, D] + pooled [B, P], ICG [B, K, d]."""
        timestep = torch.as_tensor(t, device=latents.device).reshape(-1).expand(len(latents))
        return self.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=prompt_embeds,
                                pooled_projections=pooled,
                                joint_attention_kwargs=self.icg.adapter.joint_attention_kwargs(features),
                                return_dict=False)[0]

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, titles: list[str], reference_images=None, users=None, num_images_per_prompt: int = 1,
                 generator=None, num_inference_steps: int = 28, guidance_scale: float = 7.0,
                 output_type: str = "pil", **kwargs):
        """1. check inputs → 2. meta tokens + user refinement → 3.–7. the parent pipeline's prompt encoding,
        flow-matching timesteps, latents, denoising (ICG tokens as IP-Adapter embeddings) and decoding."""
        kwargs.pop("eta", None)  # a DDIM argument: flow-matching sampling has none
        prompts, embeds = self.icg_call_inputs(titles, reference_images, users, num_images_per_prompt,
                                               guidance_scale)
        embeds_text, pooled = self.encode_text(prompts)  # the compact text tokens (see __init__)
        if guidance_scale > 1.0:
            negative, negative_pooled = (x.expand(len(prompts), *x.shape[1:]) for x in self.uncond_text())
            kwargs |= {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
        return super().__call__(prompt_embeds=embeds_text, pooled_prompt_embeds=pooled, ip_adapter_image_embeds=embeds,
                                num_images_per_prompt=1,
                                generator=generator, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, output_type=output_type, **kwargs)
