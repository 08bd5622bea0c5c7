"""What every ICG pipeline shares, whatever its base family (SD1.5, SDXL, SD3): the ICG modules, the condition path
(MLLM meta tokens → user refinement), the trainable-weight bookkeeping and the ICG-only save/load.

A family pipeline is `class ICG<Family>Pipeline(ICGPipelineMixin, <diffusers pipeline>)` and fills in the hooks:

    denoiser_name        "unet" or "transformer": the module the adapter is installed into and LoRA wraps
    adapter_class        ICGAdapter (UNet cross-attention) or ICGJointAdapter (SD3 joint attention)
    text_encoder_names   the frozen text encoders of the family
    encode_text(prompts) -> (prompt_embeds [B, L, D], pooled [B, P] or None)   frozen, recorded per trajectory row
    denoiser_output(latents, t, prompt_embeds, pooled, features) -> ε or velocity, one branch (no CFG)

Sampling code (`rl/sampling.py`) drives every family through these hooks, and each family's `__call__` is the
diffusers pipeline's own, with the ICG tokens passed as IP-Adapter embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from icg_rl.io import atomic_write_json
from icg_rl.models.adapter import ICGAdapter
from icg_rl.models.families import dispatches_every_family, family_class
from icg_rl.models.mllm import MetaTokenEncoder
from icg_rl.models.user import FiLMRefiner, ICGUser, UserEncoder, history_tensors

FORMAT_VERSION = 2  # 2: the adapter gate has shape (1,)
WEIGHTS_NAME, CONFIG_NAME, LORA_NAME = "icg.safetensors", "icg_config.json", "pytorch_lora_weights.safetensors"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ICGModules(nn.Module):
    """Everything ICG trains besides the meta tokens: user encoder, refiner, adapter — plus the item features that
    histories are made of (a buffer: data, not weights)."""

    def __init__(self, denoiser, config: dict, adapter_class=ICGAdapter):
        super().__init__()
        self.config = dict(config)
        self.user_encoder = UserEncoder(config["user_ids"], config["item_feature_dim"], config["user_dim"],
                                        id_init_std=config.get("user_id_init_std", 1.0))
        self.refiner = FiLMRefiner(config["user_dim"], config["mllm_hidden_size"])
        self.adapter = adapter_class(denoiser, config["mllm_hidden_size"], config["meta_tokens"])
        self.item_ids: list[str] = list(config.get("item_ids", []))
        self.register_buffer("item_features", torch.zeros(len(self.item_ids), config["item_feature_dim"]))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_feature_table", None)  # a cache (feature_table): rebuilt on demand, never shipped
        return state

    @property
    def device(self) -> torch.device:
        return self.item_features.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.projection.gate.dtype

    def feature_table(self) -> dict[str, torch.Tensor]:
        """Item key -> the feature its history entries carry. With `standardize_history` each dimension is
        standardised over the catalogue: CLIP embeddings of covers share a large mean and differ in looks by ~0.1,
        so raw, every user's pooled history is nearly the same vector and taste is a small ripple on it.

        Built once and reused while the buffer is the same tensor at the same version (torch bumps a tensor's
        version on every in-place write: load_state_dict, a served policy's swap): a real catalogue has 10⁵ items,
        and every pipeline call and rollout needs the table. Built outside inference mode, so a table first made
        under `torch.inference_mode` (Serve, evaluation) can still feed a training step's autograd graph."""
        features = self.item_features
        cached = self.__dict__.get("_feature_table")
        fresh = not features.is_inference()  # inference tensors have no version counter: never cached
        if fresh and cached is not None and cached[0] is features and cached[1] == features._version:
            return cached[2]
        with torch.inference_mode(False), torch.no_grad():
            if self.config.get("standardize_history", False) and len(features) > 1:
                features = (features - features.mean(0)) / features.std(0).clamp_min(1e-3)
            table = dict(zip(self.item_ids, features))
        if fresh:
            self.__dict__["_feature_table"] = (self.item_features, self.item_features._version, table)
        return table


class ICGPipelineMixin:
    base_pipeline: type  # the diffusers pipeline the family subclasses (and loads its base with)
    optional_base_components: tuple[str, ...] = ()  # may be missing from a base folder: loaded as None
    denoiser_name = "unet"
    adapter_class = ICGAdapter
    text_encoder_names: tuple[str, ...] = ("text_encoder",)

    def _install_icg(self, mllm: MetaTokenEncoder, icg: ICGModules) -> None:
        self.register_modules(mllm=mllm, icg=icg)
        icg.adapter.install(self.denoiser)

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self, self.denoiser_name)

    @property
    def is_flow_matching(self) -> bool:
        """Flow-matching bases (SD3) predict a velocity and step with a flow scheduler."""
        return "FlowMatch" in type(self.scheduler).__name__

    def uncond_text(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional branch's text under CFG (embeds [1, L, D], pooled [1, P] or None): what the family's
        stock pipeline uses without a negative prompt — the encoding of "" here, zeros on SDXL."""
        return self.encode_text([""])

    def latent_shape(self, rows: int) -> tuple[int, int, int, int]:
        """The initial noise's shape for `rows` samples at the base's native resolution."""
        config = self.denoiser.config
        return rows, config.in_channels, config.sample_size, config.sample_size

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

    def check_icg_inputs(self, titles, reference_images, users, num_images_per_prompt) -> None:
        if isinstance(titles, str) or not isinstance(titles, (list, tuple)) or not titles:
            raise ValueError(f"titles: got {titles!r}; expected a non-empty list of strings")
        for name, value in (("reference_images", reference_images), ("users", users)):
            if value is not None and len(value) != len(titles):
                raise ValueError(f"{name}: got {len(value)} entries for {len(titles)} titles; give one per title "
                                 f"(None entries allowed) or omit it")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: got {num_images_per_prompt}; must be ≥ 1")

    def icg_call_inputs(self, titles, reference_images, users, num_images_per_prompt, guidance_scale
                        ) -> tuple[list[str], torch.Tensor]:
        """Steps 1–2 of every family's `__call__`: check inputs, meta tokens + user refinement -> (prompts, ICG
        embeddings as the parent pipeline's `ip_adapter_image_embeds` expect them, [neg; pos] under CFG)."""
        self.check_icg_inputs(titles, reference_images, users, num_images_per_prompt)
        features = self.encode_conditions(list(titles), reference_images, users)  # (B, K, d_mllm)
        # expand per image ourselves: diffusers repeats given IP embeds block-wise, prompts row-wise
        features = features.repeat_interleave(num_images_per_prompt, dim=0)  # (B·n, K, d)
        prompts = [p for p in self.prompts(titles) for _ in range(num_images_per_prompt)]
        embeds = self.icg.adapter.call_embeds(features)
        if guidance_scale > 1.0:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])  # unconditional branch sees no ICG tokens
        return prompts, embeds

    # ----------------------------------------------------------------------------------------- train / save / load
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"mllm.{k}": v for k, v in self.mllm.trainable_state_dict().items()}
        state |= {f"icg.{k}": v for k, v in self.icg.state_dict().items()}
        return state

    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by a stable name (meta tokens, MLLM LoRA, ICG modules, denoiser LoRA): what a
        learner updates and weight sync ships."""
        named = {f"mllm.{n}": p for n, p in self.mllm.named_parameters() if p.requires_grad}
        named |= {f"icg.{n}": p for n, p in self.icg.named_parameters() if p.requires_grad}
        named |= {f"{self.denoiser_name}.{n}": p for n, p in self.denoiser.named_parameters() if "lora_" in n}
        return named

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.trainable_named_parameters().values())

    def freeze_base(self) -> None:
        """Base weights frozen: only ICG modules, meta tokens and LoRA layers keep requires_grad."""
        for name in ("vae", *self.text_encoder_names):
            if getattr(self, name, None) is not None:
                getattr(self, name).requires_grad_(False)
        icg_ids = {id(p) for p in self.icg.parameters()}
        for name, param in self.denoiser.named_parameters():
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

            # diffusers' own LoRA format: `unet_lora_layers=` or `transformer_lora_layers=` per family
            self.save_lora_weights(folder, **{f"{self.denoiser_name}_lora_layers":
                                              get_peft_model_state_dict(self.denoiser)})
        atomic_write_json(folder / CONFIG_NAME, self.icg.config | {"format_version": FORMAT_VERSION})

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

            lora = self.lora_state_dict(str(folder))
            lora = lora[0] if isinstance(lora, tuple) else lora  # SD1.5/XL also return network alphas, SD3 does not
            prefix = f"{self.denoiser_name}."
            set_peft_model_state_dict(self.denoiser, {k.removeprefix(prefix): v for k, v in lora.items()})

    @classmethod
    def from_pretrained(cls, base_path: str | Path, mllm_path: str | Path | None = None,
                        icg_path: str | Path | None = None, *, meta_tokens: int = 4, user_dim: int = 64,
                        history_len: int = 8, item_features: dict | None = None, user_ids: list[str] | None = None,
                        prompt_template: str = "{title}", user_id_init_std: float = 1.0,
                        standardize_history: bool = False, unet_lora_rank: int = 0, unet_lora_alpha: float = 8.0,
                        mllm_lora_rank: int = 0, torch_dtype: torch.dtype | None = None):
        """The ICG pipeline of the base folder's family (SD1.x/2.x, SDXL, SD3), the MLLM from its folder; ICG
        weights from `icg_path` (its config wins over the keyword arguments) or freshly initialised with the gate
        at zero. `unet_lora_*` is the LoRA of the denoiser, a UNet or a transformer."""
        family = family_class(base_path)
        if not dispatches_every_family(cls) and not issubclass(family, cls) and not issubclass(cls, family):
            raise ValueError(f"base_path: {base_path} is a {family.base_class_name()} folder; load it with "
                             f"ICGPipeline.from_pretrained (which picks {family.__name__}), not {cls.__name__}")
        options = dict(meta_tokens=meta_tokens, user_dim=user_dim, history_len=history_len,
                       item_features=item_features, user_ids=user_ids, prompt_template=prompt_template,
                       user_id_init_std=user_id_init_std, standardize_history=standardize_history,
                       unet_lora_rank=unet_lora_rank, unet_lora_alpha=unet_lora_alpha, mllm_lora_rank=mllm_lora_rank)
        base = family.load_base(base_path, torch_dtype)
        return family.build_icg(base, base_path, mllm_path, icg_path, options, torch_dtype)

    @classmethod
    def base_class_name(cls) -> str:
        return cls.base_pipeline.__name__

    @classmethod
    def load_base(cls, base_path, torch_dtype):
        """The stock pipeline. diffusers writes no entry (or [null, null]) for a component saved as None and then
        refuses to load the folder unless told: the family's optional components that the folder lacks load as None
        (SD3 without T5, SDXL without an image encoder)."""
        index = json.loads((Path(base_path) / "model_index.json").read_text())
        absent = {name: None for name in cls.optional_base_components if index.get(name) in (None, [None, None])}
        return cls.base_pipeline.from_pretrained(str(base_path), torch_dtype=torch_dtype, **absent)

    @classmethod
    def build_icg(cls, base, base_path, mllm_path, icg_path, options: dict, torch_dtype=None):
        """The family pipeline around a loaded diffusers pipeline `base`: MLLM, optional LoRA, ICG modules (fresh
        with the gate at zero, or loaded from `icg_path`, whose config wins over `options`)."""
        if icg_path is not None:
            config = saved_config(icg_path, mllm_path)
        elif mllm_path is None:
            raise ValueError("mllm_path: required when icg_path is None (the folder of the image-text model)")
        else:
            features = options.get("item_features") or {}
            config = {k: v for k, v in options.items() if k != "item_features"}
            config |= {"base": str(base_path), "mllm": str(mllm_path), "user_ids": list(config.get("user_ids") or []),
                       "item_feature_dim": len(next(iter(features.values()))) if features else 1,
                       "item_ids": list(features)}
        mllm = MetaTokenEncoder.from_pretrained(config["mllm"], config["meta_tokens"],
                                                lora_rank=config["mllm_lora_rank"], torch_dtype=torch_dtype)
        config["mllm_hidden_size"] = mllm.hidden_size
        denoiser = getattr(base, cls.denoiser_name)
        if config["unet_lora_rank"] > 0:
            from peft import LoraConfig

            denoiser.add_adapter(LoraConfig(r=config["unet_lora_rank"], lora_alpha=config["unet_lora_alpha"],
                                            init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        icg = ICGModules(denoiser, config, cls.adapter_class)
        features = options.get("item_features")
        if features and icg_path is None:
            icg.item_features.copy_(torch.stack([torch.as_tensor(np.array(features[i])) for i in icg.item_ids]))
        pipe = cls(**base.components, mllm=mllm, icg=icg)
        if icg_path is not None:
            pipe.load_icg_weights(icg_path)
        pipe.freeze_base()
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe


def saved_config(icg_path, mllm_path) -> dict:
    """The ICG config of a `save_pretrained` folder (an explicit `mllm_path` overrides where the MLLM lives)."""
    path = Path(icg_path) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"icg_path: {icg_path} has no {CONFIG_NAME}; is it an ICGPipeline.save_pretrained "
                                f"folder?")
    config = json.loads(path.read_text())
    if mllm_path is not None:
        config["mllm"] = str(mllm_path)
    return config
