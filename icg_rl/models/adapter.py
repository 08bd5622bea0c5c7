"""The ICG adapter: project personalized meta features into the UNet and inject them beside the text tokens.

It is built from diffusers' own IP-Adapter machinery, so it works on any UNet2DConditionModel (SD1.5, SDXL, the
CoverWorld UNet) without touching the base weights:

- `ICGProjection` maps meta features [N, K, d_mllm] → [N, K, d_cross] (Linear-GELU-Linear-LayerNorm, as EasyRef
  does), times a scalar **gate initialised to zero**. It is installed as the UNet's `encoder_hid_proj`
  (a `MultiIPAdapterImageProjection`, with `encoder_hid_dim_type="ip_image_proj"`), so the UNet's own
  `process_encoder_hidden_states` turns `added_cond_kwargs={"image_embeds": [features]}` into
  `(text tokens, [ICG tokens])`.
- Every cross-attention block (`attn2`) gets an `IPAdapterAttnProcessor2_0`: decoupled cross-attention whose extra
  keys/values (`to_k_ip`, `to_v_ip`, widths read from the block's own `to_k`: inner width × cross width, e.g.
  320/640/1280 × 768 on SD1.5, 32/64 × 64 on CoverWorld) attend to the ICG tokens and are added to the text
  attention's output. Self-attention (`attn1`) keeps its processor.

With the gate at zero the ICG tokens are exactly zero, so their keys and values are zero and the added attention
output is exactly zero: the untrained policy *is* the base model, bit for bit. Turning the adapter off (the KL
reference policy, no second model copy) sets the processors' scale to 0 with the same effect.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import nn


class ICGProjection(nn.Module):
    def __init__(self, in_dim: int, cross_attention_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or max(in_dim, cross_attention_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)
        # zero: the untrained adapter adds nothing. Shape (1,), not (): DeepSpeed cannot broadcast 0-d parameters
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, K, d_mllm] -> ICG tokens [N, K, d_cross]."""
        return self.gate * self.norm(self.mlp(features))


def _key(processor_name: str) -> str:
    """Module-dict key for a processor name (dots are not allowed in ModuleDict keys)."""
    return processor_name.removesuffix(".processor").replace(".", "__")


class ICGAdapter(nn.Module):
    """The projection + the decoupled cross-attention layers; owns their weights, installs them into a UNet."""

    def __init__(self, unet, in_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.projection = ICGProjection(in_dim, unet.config.cross_attention_dim)
        self.attention = nn.ModuleDict()
        for name in unet.attn_processors:
            if not name.endswith("attn2.processor"):
                continue
            attn = unet.get_submodule(name.removesuffix(".processor"))
            processor = IPAdapterAttnProcessor2_0(hidden_size=attn.to_k.out_features,
                                                  cross_attention_dim=attn.to_k.in_features,
                                                  num_tokens=(num_tokens,), scale=1.0)
            with torch.no_grad():  # start from the text branch's projections, as IP-Adapter training does
                processor.to_k_ip[0].weight.copy_(attn.to_k.weight)
                processor.to_v_ip[0].weight.copy_(attn.to_v.weight)
            self.attention[_key(name)] = processor
        if not self.attention:
            raise ValueError("unet: no cross-attention (attn2) blocks found; the ICG adapter needs a text-conditioned "
                             "UNet2DConditionModel")

    def install(self, unet) -> None:
        """Swap in our processors on attn2 (attn1 keeps its own) and our projection as `encoder_hid_proj`."""
        processors = {name: self.attention[_key(name)] if name.endswith("attn2.processor") else proc
                      for name, proc in unet.attn_processors.items()}
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([self.projection])
        unet.register_to_config(encoder_hid_dim_type="ip_image_proj")

    def call_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """Meta features [B, K, d_mllm] as the pipelines' `ip_adapter_image_embeds` entry: one 'image' per row."""
        return features[:, None]  # (B, 1, K, d_mllm)

    def added_cond_kwargs(self, features: torch.Tensor) -> dict:
        """What the UNet takes for meta features [B, K, d_mllm]: one adapter, one 'image' per row."""
        return {"image_embeds": [features[:, None]]}  # (B, 1, K, d_mllm)

    @contextmanager
    def disabled(self):
        """The reference policy: the same model with the adapter's contribution switched off."""
        saved = [p.scale for p in self.attention.values()]
        for processor in self.attention.values():
            processor.scale = [0.0]
        try:
            yield
        finally:
            for processor, scale in zip(self.attention.values(), saved):
                processor.scale = scale
