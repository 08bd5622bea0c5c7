"""The ICG adapter for SD3-family (MMDiT, flow-matching) bases: meta features enter every joint-attention block.

The route is diffusers' SD3 IP-Adapter machinery: the pipeline hands `ip_adapter_image_embeds` to the transformer in
`joint_attention_kwargs`; the transformer runs them through its `image_proj` (here: the ICG projection, with the
zero gate) and passes the resulting tokens to every attention processor as `ip_hidden_states`.

The processor differs from `SD3IPAdapterJointAttnProcessor2_0` on purpose. That one lets the image queries attend
over [image keys; IP keys] and adds the result, a second self-attention that is not zero when the IP tokens are zero:
the base model is reproduced only by skipping the branch (`scale == 0`), and a gate sitting at zero would then never
receive a gradient. `ICGJointAttnProcessor` runs the stock `JointAttnProcessor2_0` and adds a *decoupled*
cross-attention — image queries over the ICG tokens alone, as IP-Adapter does in UNets — projected by the block's own
output weights:

    out = JointAttn(x, text) + scale · W_out · softmax(q k_icgᵀ / √d) v_icg,    k_icg, v_icg = K(g·T), V(g·T)

With the gate g at zero the ICG keys and values are zero, the added term is exactly zero (the untrained policy *is*
the base model, bit for bit), and d out / d g = W_out · mean(V(T)) ≠ 0, so training moves the gate off zero.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0
from torch import nn

from icg_rl.models.adapter import ICGProjection, _key


class ICGJointAttnProcessor(nn.Module):
    """Stock SD3 joint attention + the decoupled ICG cross-attention (module docstring)."""

    def __init__(self, token_dim: int, inner_dim: int, scale: float = 1.0):
        super().__init__()
        self.joint = JointAttnProcessor2_0()  # or the T5-free shortcut (`ICGJointAdapter.compact_t5_tail`)
        self.to_k_ip = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(token_dim, inner_dim, bias=False)
        self.scale = scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ip_hidden_states=None,
                 temb=None):
        out = self.joint(attn, hidden_states, encoder_hidden_states, attention_mask)
        if ip_hidden_states is None or self.scale == 0:
            return out
        image, context = out if isinstance(out, tuple) else (out, None)
        batch, heads = hidden_states.shape[0], attn.heads
        head_dim = attn.to_q.out_features // heads

        def split(x):  # (B, N, heads·d) -> (B, heads, N, d)
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        query = split(attn.to_q(hidden_states))
        key, value = split(self.to_k_ip(ip_hidden_states)), split(self.to_v_ip(ip_hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_added_k is not None:  # the text keys' norm (SD3.5's qk-norm)
            key = attn.norm_added_k(key)
        branch = F.scaled_dot_product_attention(query, key, value)  # (B, heads, N, d)
        branch = branch.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(image.dtype)
        image = image + self.scale * F.linear(branch, attn.to_out[0].weight)  # the output projection, no bias
        return (image, context) if context is not None else image


class TimestepFreeProjection(nn.Module):
    """The transformer calls `image_proj(embeds, timestep)` and expects (tokens, timestep embedding): the ICG
    projection needs no timestep, and the decoupled processor no timestep embedding."""

    def __init__(self, projection: ICGProjection):
        super().__init__()
        self.projection = projection

    def forward(self, embeds: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.projection(embeds), None


class ICGJointAdapter(nn.Module):
    """The projection + one decoupled ICG attention per joint-attention block; installs them into a transformer."""

    def __init__(self, transformer, in_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.attention = nn.ModuleDict()
        token_dim = None
        for name in transformer.attn_processors:
            attn = transformer.get_submodule(name.removesuffix(".processor"))
            if getattr(attn, "add_k_proj", None) is None:  # SD3.5's extra self-attention (attn2): no text branch
                continue
            token_dim = attn.add_k_proj.in_features  # the width of the text tokens after `context_embedder`
            processor = ICGJointAttnProcessor(token_dim, attn.to_q.out_features)
            with torch.no_grad():  # start from the text branch's projections, as IP-Adapter training does
                processor.to_k_ip.weight.copy_(attn.add_k_proj.weight)
                processor.to_v_ip.weight.copy_(attn.add_v_proj.weight)
            self.attention[_key(name)] = processor
        if token_dim is None:
            raise ValueError("transformer: no joint-attention blocks with a text branch (add_k_proj) found; the ICG "
                             "joint adapter needs an SD3-layout transformer")
        self.projection = ICGProjection(in_dim, token_dim)

    def install(self, transformer) -> None:
        processors = {name: self.attention[_key(name)] if _key(name) in self.attention else proc
                      for name, proc in transformer.attn_processors.items()}
        transformer.set_attn_processor(processors)
        transformer.image_proj = TimestepFreeProjection(self.projection)

    def compact_t5_tail(self, repeats: int) -> None:
        """Without T5 the pipeline appends `repeats` identical zero tokens to the text; the stock attention then
        equals one such token with its logit raised by log(repeats) (`zoo.RepeatedTailAttnProcessor`). The ICG
        pipeline passes one and every processor runs that shortcut: the same outputs at a fraction of the cost."""
        from icg_rl.models.zoo import RepeatedTailAttnProcessor

        for processor in self.attention.values():
            processor.joint = RepeatedTailAttnProcessor(repeats) if repeats > 1 else JointAttnProcessor2_0()

    def call_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """Meta features [B, K, d_mllm] as the SD3 pipeline's `ip_adapter_image_embeds`."""
        return features

    def joint_attention_kwargs(self, features: torch.Tensor) -> dict:
        return {"ip_adapter_image_embeds": features}

    @contextmanager
    def disabled(self):
        """The reference policy: the same model with the adapter's contribution switched off."""
        saved = [p.scale for p in self.attention.values()]
        for processor in self.attention.values():
            processor.scale = 0.0
        try:
            yield
        finally:
            for processor, scale in zip(self.attention.values(), saved):
                processor.scale = scale
