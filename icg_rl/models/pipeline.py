"""ICGPipeline: a Stable Diffusion pipeline whose cross-attention also sees personalized MLLM meta tokens.

    pipe = ICGPipeline.from_pretrained("artifacts/coverworld/models/sd", mllm_path=".../models/mllm")
    images = pipe(["The Haunted Crypt"], reference_images=[cover], users=[ICGUser("u00003")]).images

It *is* a `StableDiffusionPipeline` (the base components load from any SD1.5-layout folder the way diffusers loads
them) plus two modules: `mllm` (the frozen image-text model with its learnable meta tokens) and `icg` (user
encoder, FiLM refiner, and the adapter installed into the UNet through diffusers' IP-Adapter machinery). Sampling
reuses the parent's `__call__` — the same prompt encoding, timesteps, latents, denoising and decoding — with the
ICG tokens passed as IP-Adapter embeddings. With the adapter's gate at zero the output equals the base pipeline's.

`save_pretrained(dir)` writes only ICG weights (`icg.safetensors` + `icg_config.json`, and
`pytorch_lora_weights.safetensors` in diffusers' LoRA format when the UNet has LoRA).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from torch import nn

from icg_rl.io import atomic_write_json
from icg_rl.models.adapter import ICGAdapter
from icg_rl.models.mllm import MetaTokenEncoder
from icg_rl.models.user import FiLMRefiner, ICGUser, UserEncoder, history_tensors

FORMAT_VERSION = 2  # 2: the adapter gate has shape (1,)
WEIGHTS_NAME, CONFIG_NAME, LORA_NAME = "icg.safetensors", "icg_config.json", "pytorch_lora_weights.safetensors"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ICGModules(nn.Module):
    """Everything ICG trains besides the meta tokens: user encoder, refiner, adapter — plus the item features that
    histories are made of (a buffer: data, not weights)."""

    def __init__(self, unet, config: dict):
        super().__init__()
        self.config = dict(config)
        self.user_encoder = UserEncoder(config["user_ids"], config["item_feature_dim"], config["user_dim"],
                                        id_init_std=config.get("user_id_init_std", 1.0))
        self.refiner = FiLMRefiner(config["user_dim"], config["mllm_hidden_size"])
        self.adapter = ICGAdapter(unet, config["mllm_hidden_size"], config["meta_tokens"])
        self.item_ids: list[str] = list(config.get("item_ids", []))
        self.register_buffer("item_features", torch.zeros(len(self.item_ids), config["item_feature_dim"]))

    @property
    def device(self) -> torch.device:
        return self.item_features.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.projection.gate.dtype

    def feature_table(self) -> dict[str, torch.Tensor]:
        """Item key -> the feature its history entries carry. With `standardize_history` each dimension is
        standardised over the catalogue: CLIP embeddings of covers share a large mean and differ in looks by ~0.1,
        so raw, every user's pooled history is nearly the same vector and taste is a small ripple on it."""
        features = self.item_features
        if self.config.get("standardize_history", False) and len(features) > 1:
            features = (features - features.mean(0)) / features.std(0).clamp_min(1e-3)
        return dict(zip(self.item_ids, features))


class ICGPipeline(StableDiffusionPipeline):
    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, mllm: MetaTokenEncoder, icg: ICGModules,
                 safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_modules(mllm=mllm, icg=icg)
        icg.adapter.install(unet)

    # ------------------------------------------------------------------------------------------------ conditions
    def prepare_condition_inputs(self, titles: list[str], reference_images=None, users=None) -> dict:
        """The raw conditioning inputs as plain tensors (what a trajectory records, so a learner can recompute the
        condition with current weights): the MLLM's processed prompt + the user's index and history."""
        users = users if users is not None else [ICGUser() for _ in titles]
        users = [u if isinstance(u, ICGUser) else ICGUser(user_id=u) for u in users]
        encoder, cfg = self.icg.user_encoder, self.icg.config
        history, mask = history_tensors(users, self.icg.feature_table(), cfg["history_len"], cfg["item_feature_dim"])
        inputs = {f"mllm.{k}": v for k, v in self.mllm.prepare(list(titles), reference_images).items()}
        inputs |= {"user_index": encoder.indices([u.user_id for u in users]), "history": history,
                   "history_mask": mask}
        return inputs

    def encode_condition_inputs(self, inputs: dict, zero_user: bool = False) -> torch.Tensor:
        """Raw inputs -> refined meta features [B, K, d_mllm] (differentiable w.r.t. every ICG parameter).

        `zero_user` replaces the user embedding by zeros: the evaluation arm that shows what personalization adds."""
        device = self._execution_device
        prepared = {k.removeprefix("mllm."): v.to(device) for k, v in inputs.items() if k.startswith("mllm.")}
        meta = self.mllm(prepared=prepared)  # (B, K, d_mllm)
        user = self.icg.user_encoder(inputs["user_index"].to(device), inputs["history"].to(device, meta.dtype),
                                     inputs["history_mask"].to(device))  # (B, user_dim)
        if zero_user:
            user = torch.zeros_like(user)
        return self.icg.refiner(meta, user.to(meta.dtype))

    def encode_conditions(self, titles: list[str], reference_images=None, users=None) -> torch.Tensor:
        return self.encode_condition_inputs(self.prepare_condition_inputs(titles, reference_images, users))

    def prompts(self, titles: list[str]) -> list[str]:
        return [self.icg.config["prompt_template"].format(title=t) for t in titles]

    # ------------------------------------------------------------------------------------------------- sampling
    def check_icg_inputs(self, titles, reference_images, users, num_images_per_prompt) -> None:
        if isinstance(titles, str) or not isinstance(titles, (list, tuple)) or not titles:
            raise ValueError(f"titles: got {titles!r}; expected a non-empty list of strings")
        for name, value in (("reference_images", reference_images), ("users", users)):
            if value is not None and len(value) != len(titles):
                raise ValueError(f"{name}: got {len(value)} entries for {len(titles)} titles; give one per title "
                                 f"(None entries allowed) or omit it")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: got {num_images_per_prompt}; must be ≥ 1")

    @torch.no_grad()
    def __call__(self, titles: list[str], reference_images=None, users=None, num_images_per_prompt: int = 1,
                 generator=None, num_inference_steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.0,
                 output_type: str = "pil", **kwargs):
        """1. check inputs → 2. meta tokens + user refinement → 3.–7. the parent pipeline's prompt encoding,
        timesteps, latents, denoising (ICG tokens as IP-Adapter embeddings) and decoding."""
        self.check_icg_inputs(titles, reference_images, users, num_images_per_prompt)
        features = self.encode_conditions(list(titles), reference_images, users)  # (B, K, d_mllm)
        # expand per image ourselves: diffusers repeats given IP embeds block-wise, prompts row-wise
        features = features.repeat_interleave(num_images_per_prompt, dim=0)  # (B·n, K, d)
        prompts = [p for p in self.prompts(titles) for _ in range(num_images_per_prompt)]
        embeds = features[:, None]  # (B·n, 1, K, d): one adapter "image" per row
        if guidance_scale > 1.0:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])  # unconditional branch sees no ICG tokens
        return super().__call__(prompt=prompts, ip_adapter_image_embeds=[embeds], num_images_per_prompt=1,
                                generator=generator, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, eta=eta, output_type=output_type, **kwargs)

    # ----------------------------------------------------------------------------------------- train / save / load
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"mllm.{k}": v for k, v in self.mllm.trainable_state_dict().items()}
        state |= {f"icg.{k}": v for k, v in self.icg.state_dict().items()}
        return state

    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by a stable name (meta tokens, MLLM LoRA, ICG modules, UNet LoRA): what a
        learner updates and weight sync ships."""
        named = {f"mllm.{n}": p for n, p in self.mllm.named_parameters() if p.requires_grad}
        named |= {f"icg.{n}": p for n, p in self.icg.named_parameters() if p.requires_grad}
        named |= {f"unet.{n}": p for n, p in self.unet.named_parameters() if "lora_" in n}
        return named

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.trainable_named_parameters().values())

    def freeze_base(self) -> None:
        """Base weights frozen: only ICG modules, meta tokens and LoRA layers keep requires_grad."""
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
        icg_ids = {id(p) for p in self.icg.parameters()}
        for name, param in self.unet.named_parameters():
            param.requires_grad_(id(param) in icg_ids or "lora_" in name)

    def save_pretrained(self, save_directory: str | Path, **_) -> None:
        """ICG weights and config only — never the base model's weights."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "icg_format_version": str(FORMAT_VERSION)})
        tmp.replace(folder / WEIGHTS_NAME)
        if self.icg.config.get("unet_lora_rank", 0) > 0:
            from peft.utils import get_peft_model_state_dict

            StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(self.unet))
        atomic_write_json(folder / CONFIG_NAME, self.icg.config | {"format_version": FORMAT_VERSION})

    @classmethod
    def from_pretrained(cls, base_path: str | Path, mllm_path: str | Path | None = None,
                        icg_path: str | Path | None = None, *, meta_tokens: int = 4, user_dim: int = 64,
                        history_len: int = 8, item_features: dict | None = None, user_ids: list[str] | None = None,
                        prompt_template: str = "{title}", user_id_init_std: float = 1.0,
                        standardize_history: bool = False, unet_lora_rank: int = 0, unet_lora_alpha: float = 8.0,
                        mllm_lora_rank: int = 0, torch_dtype: torch.dtype | None = None) -> ICGPipeline:
        """Base from an SD-layout folder, the MLLM from its folder; ICG weights from `icg_path` (its config wins
        over the keyword arguments) or freshly initialised with the gate at zero."""
        if icg_path is not None:
            config = _saved_config(icg_path, mllm_path)
        elif mllm_path is None:
            raise ValueError("mllm_path: required when icg_path is None (the folder of the image-text model)")
        else:
            features = item_features or {}
            config = {"base": str(base_path), "mllm": str(mllm_path), "meta_tokens": meta_tokens,
                      "user_dim": user_dim, "history_len": history_len,
                      "user_id_init_std": user_id_init_std, "standardize_history": standardize_history,
                      "item_feature_dim": len(next(iter(features.values()))) if features else 1,
                      "item_ids": list(features), "user_ids": list(user_ids or []), "prompt_template": prompt_template,
                      "unet_lora_rank": unet_lora_rank, "unet_lora_alpha": unet_lora_alpha,
                      "mllm_lora_rank": mllm_lora_rank}
        _check_base_layout(base_path)
        base = StableDiffusionPipeline.from_pretrained(str(base_path), safety_checker=None,
                                                       requires_safety_checker=False, torch_dtype=torch_dtype)
        mllm = MetaTokenEncoder.from_pretrained(config["mllm"], config["meta_tokens"],
                                                lora_rank=config["mllm_lora_rank"], torch_dtype=torch_dtype)
        config["mllm_hidden_size"] = mllm.hidden_size
        if config["unet_lora_rank"] > 0:
            from peft import LoraConfig

            base.unet.add_adapter(LoraConfig(r=config["unet_lora_rank"], lora_alpha=config["unet_lora_alpha"],
                                             init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        icg = ICGModules(base.unet, config)
        if item_features and icg_path is None:
            icg.item_features.copy_(torch.stack([torch.as_tensor(np.array(item_features[i])) for i in icg.item_ids]))
        pipe = cls(base.vae, base.text_encoder, base.tokenizer, base.unet, base.scheduler, mllm, icg)
        if icg_path is not None:
            pipe.load_icg_weights(icg_path)
        pipe.freeze_base()
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe

    def load_icg_weights(self, icg_path: str | Path) -> None:
        folder = Path(icg_path)
        state = load_file(str(folder / WEIGHTS_NAME))
        self.mllm.load_trainable_state_dict({k[5:]: v for k, v in state.items() if k.startswith("mllm.")})
        missing, unexpected = self.icg.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("icg.")},
                                                       strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_NAME}: does not match this ICG model (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        if (folder / LORA_NAME).is_file():
            from peft import set_peft_model_state_dict

            lora = StableDiffusionPipeline.lora_state_dict(str(folder))[0]
            set_peft_model_state_dict(self.unet, {k.removeprefix("unet."): v for k, v in lora.items()})


def _check_base_layout(base_path) -> None:
    """SD1.x/2.x layouts load below; name what is not supported instead of failing deep inside diffusers."""
    index = Path(base_path) / "model_index.json"
    if index.is_file():
        kind = json.loads(index.read_text()).get("_class_name", "")
        if "XL" in kind or "StableDiffusion3" in kind or "Flux" in kind:
            raise NotImplementedError(f"model.base: {base_path} is a {kind} folder; the ICG pipeline supports "
                                      f"Stable Diffusion 1.x/2.x layouts (StableDiffusionPipeline) so far")


def _saved_config(icg_path, mllm_path) -> dict:
    """The ICG config of a `save_pretrained` folder (an explicit `mllm_path` overrides where the MLLM lives)."""
    path = Path(icg_path) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"icg_path: {icg_path} has no {CONFIG_NAME}; is it an ICGPipeline.save_pretrained "
                                f"folder?")
    config = json.loads(path.read_text())
    if mllm_path is not None:
        config["mllm"] = str(mllm_path)
    return config


def load_checkpoint(checkpoint: str | Path, base: str | None = None, mllm: str | None = None,
                    torch_dtype: torch.dtype | None = None) -> ICGPipeline:
    """A trained policy from its ICG folder (a run's OUT/checkpoint or any save_pretrained folder), on the base
    model and MLLM it was trained with — or on `base`/`mllm` when those moved (another machine, a mounted volume)."""
    config = _saved_config(checkpoint, mllm)
    base = base or config["base"]
    for field, path in (("base", base), ("mllm", config["mllm"])):
        if Path(path).is_absolute() and not Path(path).exists():
            raise FileNotFoundError(f"{field}: {path} (named by {Path(checkpoint) / CONFIG_NAME}) does not exist "
                                    f"here; pass where that model lives on this machine")
    return ICGPipeline.from_pretrained(base, mllm_path=mllm, icg_path=checkpoint, torch_dtype=torch_dtype)


def model_paths(cfg) -> tuple[str, str]:
    """`model.base` and `model.mllm` as loadable paths: 'coverworld' names the world build's tiny models."""
    models = Path(cfg.world.dir) / "models"
    base = str(models / "sd") if cfg.model.base == "coverworld" else cfg.model.base
    mllm = str(models / "mllm") if cfg.model.mllm == "coverworld" else cfg.model.mllm
    return base, mllm


def pipeline_from_config(cfg, user_ids: list[str] | None = None, item_features: dict | None = None,
                         icg_path: str | Path | None = None) -> ICGPipeline:
    """The ICGPipeline a full Config describes (`model.*`, history length from `data.history_len`)."""
    base, mllm = model_paths(cfg)
    m = cfg.model
    return ICGPipeline.from_pretrained(
        base, mllm_path=mllm, icg_path=icg_path, meta_tokens=m.meta_tokens, user_dim=m.user_dim,
        history_len=cfg.data.history_len, item_features=item_features, user_ids=user_ids,
        prompt_template=m.prompt_template, user_id_init_std=m.user_id_init_std,
        standardize_history=m.standardize_history, unet_lora_rank=m.lora.rank, unet_lora_alpha=m.lora.alpha,
        mllm_lora_rank=m.mllm_lora.rank)
