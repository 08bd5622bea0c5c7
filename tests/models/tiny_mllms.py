"""Tiny image-text models for the meta-token encoder tests: LLaVA, Qwen2-VL and Qwen2.5-VL, each saved as a folder.

Every model is built from a config (random weights, nothing downloaded) with a processor made locally, then written
with `save_pretrained` so the tests load it exactly as a real checkpoint folder would be loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from icg_rl.config import ZooConfig
from icg_rl.models import zoo
from icg_rl.models.tokenizer import train_clip_tokenizer

TITLES = ["The Haunted Crypt", "Grim Curse", "Love in Paris", "Star Fleet Rising", "A Quiet Garden",
          "Midnight Detective", "Dragons of the North"]
IMAGE_SIZE = 32
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
# The shape of Qwen2-VL's own chat template (an image part becomes vision_start + image_pad + vision_end).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llava(folder: Path) -> Path:
    """The zoo's LLaVA (ZooConfig widths) with a CLIP BPE tokenizer + `<image>`, as build.py's `_save_llava`."""
    tokenizer = train_clip_tokenizer(TITLES, vocab_size=560, max_length=24)
    tokenizer.model_max_length = 512  # room for the 64 image tokens
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    model = zoo.build_llava(ZooConfig(), tokenizer, IMAGE_SIZE)
    processor = LlavaProcessor(image_processor=zoo.image_processor(IMAGE_SIZE), tokenizer=tokenizer, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _save(folder, model, processor)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE trained on the titles, with Qwen's special tokens (ids resolved by name, as Qwen does)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TITLES * 4, trainer=trainer)
    vocab = backend.get_vocab()
    merges = _merges_of(backend)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    return tokenizer


def _merges_of(backend: Tokenizer) -> list[tuple[str, str]]:
    state = json.loads(backend.to_str())
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]


def qwen_image_processor() -> Qwen2VLImageProcessorPil:
    """Patch 4, merge 2: a 32×32 image is resized to 16×16 → 4×4 patches → 4 merged image tokens."""
    return Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=64,
                                    max_pixels=256)


def _qwen_ids(tokenizer: Qwen2Tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return ids


def _qwen_text(tokenizer: Qwen2Tokenizer) -> dict:
    """2 layers, width 32, 2 heads (head dim 16 → 8 rotary frequencies, split 2/3/3 over t/h/w by M-RoPE)."""
    return {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def save_tiny_qwen2_vl(folder: Path, chat_template: bool = True) -> Path:
    """Qwen2-VL: 1-block ViT (width 32, patch 4, 2×2 merge) + the 2-layer Qwen2 text model above."""
    tokenizer = qwen_tokenizer()
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 4,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    config = Qwen2VLConfig(text_config=_qwen_text(tokenizer), vision_config=vision, **_qwen_ids(tokenizer))
    return _save_qwen(folder, Qwen2VLForConditionalGeneration(config), tokenizer, "Qwen2VLProcessor", chat_template)


def save_tiny_qwen2_5_vl(folder: Path, chat_template: bool = False) -> Path:
    """Qwen2.5-VL: 2-block windowed ViT (window 16 px, block 1 full attention) + the 2-layer text model."""
    tokenizer = qwen_tokenizer()
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
              "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
              "window_size": 16, "fullatt_block_indexes": [1]}
    config = Qwen2_5_VLConfig(text_config=_qwen_text(tokenizer), vision_config=vision, **_qwen_ids(tokenizer))
    return _save_qwen(folder, Qwen2_5_VLForConditionalGeneration(config), tokenizer, "Qwen2_5_VLProcessor",
                      chat_template)


def _save_qwen(folder: Path, model: torch.nn.Module, tokenizer: Qwen2Tokenizer, processor_class: str,
               chat_template: bool) -> Path:
    """A hub-style Qwen folder written part by part: the Qwen processors cannot be built here (their video
    processor needs torchvision, which is not installed), so preprocessor_config.json names the processor class
    as hub folders do, and the chat template is the tokenizer's (chat_template.jinja)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if chat_template:
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    qwen_image_processor().save_pretrained(str(folder))
    config_file = folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text()) | {"processor_class": processor_class}
    config_file.write_text(json.dumps(config, indent=2))
    return folder


def _save(folder: Path, model: torch.nn.Module, processor) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
