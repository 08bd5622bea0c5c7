"""`MetaTokenEncoder`: K learnable meta tokens read out of a frozen image-text model (docs/architecture.md §3).

Each item's prompt (its title, plus its reference image when it has one) is tokenised by the model's own processor;
K meta-token embeddings are appended right after the row's prompt, the model runs on `inputs_embeds`, and the last
hidden states at the K meta positions are the item's conditioning features, [B, K, d]. The MLLM stays frozen (its
weights are the user's checkpoint); only the meta tokens train, plus optional LoRA on the language model's q/v.

Supported families (picked by `config.model_type`):

    llava       LlavaForConditionalGeneration (the CoverWorld zoo's tiny default)
    qwen2_vl    Qwen2VLForConditionalGeneration      image positions come from M-RoPE (3-D rotary positions),
    qwen2_5_vl  Qwen2_5_VLForConditionalGeneration   so we compute `position_ids` with the model's `get_rope_index`

Row independence: rows are processed one by one and right-padded after their meta tokens, so causal attention never
sees padding and an item's features do not depend on the rest of the batch (text-only and image rows can mix).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # [B, L] tensors, padded per row
IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")  # per-image tensors, concatenated in row order
LORA_TARGETS = r".*language_model.*\.(q_proj|v_proj)"  # the text model's q/v only (CLIP towers also have q_proj)
LORA_ADAPTER = "default"  # the peft adapter name of the MLLM's LoRA (peft's own default)


class _NoVideoProcessor:
    """Lets a Qwen processor be built without its video processor, which needs torchvision; images need none."""

    def check_argument_for_proper_class(self, argument_name, argument):
        """Accept `video_processor=None`; every other sub-processor is checked as usual."""
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


class _ImageOnlyQwen2VLProcessor(_NoVideoProcessor, Qwen2VLProcessor):
    pass


class _ImageOnlyQwen2_5_VLProcessor(_NoVideoProcessor, Qwen2_5_VLProcessor):
    pass


@dataclass(frozen=True)
class Family:
    """How one model type is loaded and run."""

    model_class: type
    mrope: bool  # Qwen-style 3-D rotary positions: pass position_ids from get_rope_index + mm_token_type_ids
    image_only_processor: type | None  # fallback processor when AutoProcessor cannot load (no torchvision)


FAMILIES = {
    "llava": Family(LlavaForConditionalGeneration, mrope=False, image_only_processor=None),
    "qwen2_vl": Family(Qwen2VLForConditionalGeneration, mrope=True, image_only_processor=_ImageOnlyQwen2VLProcessor),
    "qwen2_5_vl": Family(Qwen2_5_VLForConditionalGeneration, mrope=True,
                         image_only_processor=_ImageOnlyQwen2_5_VLProcessor),
}


def family_of(model_type: str) -> Family:
    """The `Family` of a `config.model_type`, or a ValueError listing what is supported."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type={model_type!r} is not supported by MetaTokenEncoder; supported model types: "
                         f"{sorted(FAMILIES)}")
    return FAMILIES[model_type]


def load_processor(path: str | Path, family: Family) -> ProcessorMixin:
    """AutoProcessor, or — when it fails (Qwen's video processor needs torchvision) or the folder names no processor
    class — the family's processor assembled from the folder's tokenizer, image processor and chat template."""
    try:
        processor = AutoProcessor.from_pretrained(str(path))
    except ImportError:
        if family.image_only_processor is None:
            raise
        processor = None
    if isinstance(processor, ProcessorMixin):
        return processor
    if family.image_only_processor is None:
        raise ValueError(f"path={str(path)!r} has no image-text processor config (processor_config.json or "
                         f"preprocessor_config.json naming one); save the model's processor into the folder")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    image_processor = AutoImageProcessor.from_pretrained(str(path))  # falls back to the PIL backend by itself
    return family.image_only_processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                       chat_template=_chat_template(Path(path), tokenizer))


def _chat_template(folder: Path, tokenizer) -> str | None:
    """The folder's chat template, wherever transformers versions put it."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def _check_sizes(num_meta_tokens: int, lora_rank: int, prompt_template: str) -> None:
    """ValueErrors for arguments that cannot work, raised before any weights are loaded."""
    if int(num_meta_tokens) < 1:
        raise ValueError(f"num_meta_tokens={num_meta_tokens!r} is not allowed; it must be an integer >= 1")
    if int(lora_rank) < 0:
        raise ValueError(f"lora_rank={lora_rank!r} is not allowed; use 0 (no LoRA) or a positive rank")
    try:
        prompt_template.format(title="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt_template={prompt_template!r} is not a valid template: only the field {{title}} is "
                         f"allowed ({err!r})") from None


def _as_image(image, index: int) -> Image.Image | None:
    """None, a PIL image, or a uint8 (H, W, 3) array → None or an RGB PIL image (no channel-order guessing)."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return Image.fromarray(image)
    described = f"array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    raise ValueError(f"reference_images[{index}]={described} is not allowed; each entry must be None (text-only), a "
                     f"PIL image or a uint8 numpy array of shape (H, W, 3)")


def _add_lora(model: torch.nn.Module, rank: int, alpha: float) -> None:
    """LoRA (peft) on the language model's attention q/v projections; only the LoRA weights stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none")
    inject_adapter_in_model(config, model, adapter_name=LORA_ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


def _peft_key(key: str) -> str:
    """`lora.<...>.lora_A.default.weight` (an older state's name: the model parameter's) -> peft's
    `lora.<...>.lora_A.weight`; other keys unchanged."""
    if not key.startswith("lora."):
        return key
    return re.sub(rf"\.(lora_[AB])\.{re.escape(LORA_ADAPTER)}\.", r".\1.", key)


class MetaTokenEncoder(torch.nn.Module):
    """K learnable meta tokens appended to each item's prompt; returns their last hidden states, [B, K, d]."""

    def __init__(self, model, processor, num_meta_tokens: int, prompt_template: str = "{title}",
                 lora_rank: int = 0, lora_alpha: float = 8.0):
        """Wrap a loaded model + processor: freeze the model, add LoRA if asked, create the meta tokens."""
        super().__init__()
        _check_sizes(num_meta_tokens, lora_rank, prompt_template)
        self.family = family_of(model.config.model_type)
        self.model, self.processor = model, processor
        self.num_meta_tokens, self.prompt_template, self.lora_rank = int(num_meta_tokens), prompt_template, lora_rank
        embeddings = model.get_input_embeddings()
        self.hidden_size = embeddings.embedding_dim
        model.requires_grad_(False)  # frozen MLLM: the user's checkpoint is never changed
        model.eval()
        if lora_rank > 0:
            _add_lora(model, lora_rank, lora_alpha)
        std = float(embeddings.weight.detach().float().std())  # [V, d] → scalar: the scale of real embeddings
        device = embeddings.weight.device
        self.meta_tokens = torch.nn.Parameter(torch.randn(self.num_meta_tokens, self.hidden_size, device=device)
                                              * std)  # [K, d]
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0  # its embedding is overwritten or masked anyway

    @classmethod
    def from_pretrained(cls, path, num_meta_tokens, prompt_template="{title}", lora_rank=0, lora_alpha=8.0,
                        torch_dtype=None) -> MetaTokenEncoder:
        """Load the model class for the folder's `config.model_type` and its processor from a local folder."""
        _check_sizes(num_meta_tokens, lora_rank, prompt_template)
        family = family_of(AutoConfig.from_pretrained(str(path)).model_type)
        kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
        model = family.model_class.from_pretrained(str(path), **kwargs)
        processor = load_processor(path, family)
        return cls(model, processor, num_meta_tokens, prompt_template, lora_rank, lora_alpha)

    @property
    def device(self) -> torch.device:
        """Where the meta tokens live (DiffusionPipeline asks each component for its device)."""
        return self.meta_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.meta_tokens.dtype

    def train(self, mode: bool = True) -> MetaTokenEncoder:
        """Training mode for the meta tokens; the frozen MLLM stays in eval mode (no dropout noise)."""
        super().train(mode)
        self.model.eval()
        return self

    # ---- processing: titles + images → a plain dict of CPU tensors --------------------------------------------

    def prepare(self, titles: list[str], reference_images: list | None = None) -> dict[str, torch.Tensor]:
        """The processor step, as CPU tensors: the raw conditioning input `forward(prepared=...)` recomputes from.

        Keys: input_ids, attention_mask [B, L] (plus mm_token_type_ids for Qwen), meta_positions [B, K], and the
        image tensors of the rows that have an image, in row order (pixel_values, image_grid_thw for Qwen).
        """
        titles, images = self._check_inputs(titles, reference_images)
        rows = [self._process_row(title, image) for title, image in zip(titles, images)]
        return self._collate(rows)

    def _check_inputs(self, titles, reference_images) -> tuple[list[str], list[Image.Image | None]]:
        """Validated titles and one RGB PIL image or None per title."""
        if isinstance(titles, str) or titles is None:
            raise ValueError(f"titles={titles!r} is not allowed; pass a list of title strings")
        titles = list(titles)
        if not titles or not all(isinstance(t, str) for t in titles):
            raise ValueError(f"titles={titles!r} is not allowed; pass a non-empty list of strings")
        if reference_images is None:
            return titles, [None] * len(titles)
        reference_images = list(reference_images)
        if len(reference_images) != len(titles):
            raise ValueError(f"reference_images has {len(reference_images)} entries but titles has {len(titles)}; "
                             f"pass exactly one entry (an image or None) per title")
        return titles, [_as_image(image, i) for i, image in enumerate(reference_images)]

    def _prompt(self, title: str, has_image: bool) -> str:
        """The chat template when the processor has one (meta tokens then sit where the answer starts), else the
        image token + newline + filled template for image rows, and just the filled template for text rows."""
        text = self.prompt_template.format(title=title)
        if getattr(self.processor, "chat_template", None):
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{self.processor.image_token}\n{text}" if has_image else text

    def _process_row(self, title: str, image: Image.Image | None) -> dict[str, torch.Tensor]:
        """One row through the processor on its own: no cross-row padding, and image/text rows can mix."""
        images = None if image is None else [image]
        out = self.processor(text=[self._prompt(title, image is not None)], images=images, return_tensors="pt")
        return {key: value for key, value in out.items() if key in SEQUENCE_KEYS + IMAGE_KEYS}

    def _collate(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad rows, with K meta positions right after each row's own tokens and padding after them."""
        k = self.num_meta_tokens
        keep = [row["attention_mask"][0].bool() for row in rows]  # [n_i] each: the processor's real tokens
        lengths = torch.tensor([int(mask.sum()) for mask in keep])  # [B]
        batch, total = len(rows), int(lengths.max()) + k
        out = {"input_ids": torch.full((batch, total), self.pad_token_id, dtype=torch.long),  # [B, L]
               "attention_mask": torch.zeros(batch, total, dtype=torch.long)}  # [B, L]
        if "mm_token_type_ids" in rows[0]:
            out["mm_token_type_ids"] = torch.zeros(batch, total, dtype=torch.long)  # [B, L]; meta/pad are text (0)
        for i, (row, mask, n) in enumerate(zip(rows, keep, lengths.tolist())):
            out["input_ids"][i, :n] = row["input_ids"][0][mask]  # [1, n_i] → [n_i] into row i
            out["attention_mask"][i, : n + k] = 1  # the meta tokens are attended; the padding after them is not
            if "mm_token_type_ids" in out:
                out["mm_token_type_ids"][i, :n] = row["mm_token_type_ids"][0][mask]  # [1, n_i] → [n_i]
        out["meta_positions"] = lengths[:, None] + torch.arange(k)  # [B, K]
        out["has_image"] = torch.tensor([IMAGE_KEYS[0] in row for row in rows])  # [B]: who owns the image tensors
        for key in IMAGE_KEYS:
            parts = [row[key] for row in rows if key in row]
            if parts:
                out[key] = torch.cat(parts)  # [sum over image rows, ...] in row order
        return out

    # ---- the model pass ----------------------------------------------------------------------------------------

    def forward(self, titles=None, reference_images=None, *, prepared: dict | None = None) -> torch.Tensor:
        """[B, K, d] last hidden states at the meta positions (from titles/images, or a `prepare` dict)."""
        if prepared is None:
            if titles is None:
                raise ValueError("titles=None is not allowed without prepared=...; pass titles (and optionally "
                                 "reference_images) or the dict returned by prepare()")
            prepared = self.prepare(titles, reference_images)
        device = self.meta_tokens.device
        batch = {key: value.to(device) for key, value in prepared.items()}
        embeds = self._embed_with_meta(batch["input_ids"], batch["meta_positions"])  # [B, L, d]
        hidden = self.model.model(**self._model_inputs(batch, embeds)).last_hidden_state  # [B, L, d], final norm
        index = batch["meta_positions"][..., None].expand(-1, -1, hidden.shape[-1])  # [B, K, d]
        return hidden.gather(1, index).to(self.meta_tokens.dtype)  # [B, K, d]

    def _embed_with_meta(self, input_ids: torch.Tensor, meta_positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the meta positions overwritten by the (trainable) meta tokens."""
        embeds = self.model.get_input_embeddings()(input_ids)  # [B, L, d]
        meta = self.meta_tokens.to(embeds.dtype).expand(input_ids.shape[0], -1, -1)  # [B, K, d]
        index = meta_positions[..., None].expand(-1, -1, embeds.shape[-1])  # [B, K, d]
        return embeds.scatter(1, index, meta)  # [B, L, d]

    def _model_inputs(self, batch: dict[str, torch.Tensor], embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keyword inputs of the inner model. With `input_ids=None` the models find image placeholders by comparing
        embeddings with the image token's, so only Qwen's rotary positions need computing here (its own fallback
        without input_ids would give plain 1-D positions, or stale `rope_deltas` from an earlier call)."""
        inputs = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}
        for key in IMAGE_KEYS:
            if key in batch:
                value = batch[key]
                inputs[key] = value.to(embeds.dtype) if value.is_floating_point() else value
        if self.family.mrope:
            inputs["mm_token_type_ids"] = batch["mm_token_type_ids"]
            inputs["position_ids"], _ = self.model.model.get_rope_index(  # [3, B, L] (t, h, w)
                batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])
        return inputs

    # ---- the trainable part ------------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """`meta_tokens`, plus `lora.<peft key>` for each LoRA weight when LoRA is on (detached copies); the peft keys
        are `peft.get_peft_model_state_dict`'s, the model parameter names without the adapter name."""
        state = {"meta_tokens": self.meta_tokens.detach().clone()}
        if self.lora_rank > 0:
            from peft import get_peft_model_state_dict

            lora = get_peft_model_state_dict(self.model, adapter_name=LORA_ADAPTER)
            state |= {f"lora.{name}": value.detach().clone() for name, value in lora.items()}
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` returned; keys and shapes must match exactly. The LoRA weights go in
        through `peft.set_peft_model_state_dict`. Older states named them by model parameter
        (`...lora_A.default.weight`); those names are accepted too."""
        state = {_peft_key(key): value for key, value in state.items()}
        own = self.trainable_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state keys do not match this encoder (lora_rank={self.lora_rank}): missing {missing}, "
                             f"unexpected {unexpected}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)}; this encoder needs "
                                 f"{tuple(own[key].shape)}")
        with torch.no_grad():
            self.meta_tokens.copy_(state["meta_tokens"])
        lora = {key.removeprefix("lora."): value for key, value in state.items() if key != "meta_tokens"}
        if lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, lora, adapter_name=LORA_ADAPTER)
            if result.unexpected_keys:
                raise ValueError(f"peft did not place these LoRA weights: {sorted(result.unexpected_keys)}")
