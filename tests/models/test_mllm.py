"""MetaTokenEncoder on tiny LLaVA, Qwen2-VL and Qwen2.5-VL folders (random weights, built and saved locally)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, Qwen2_5_VLProcessor, Qwen2VLProcessor

from icg_rl.models.mllm import MetaTokenEncoder
from tests.models import tiny_mllms

FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl"]
K = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One saved folder per family (Qwen2-VL with a chat template; LLaVA and Qwen2.5-VL with plain prompts)."""
    root = tmp_path_factory.mktemp("tiny_mllms")
    torch.manual_seed(0)
    return {"llava": tiny_mllms.save_tiny_llava(root / "llava"),
            "qwen2_vl": tiny_mllms.save_tiny_qwen2_vl(root / "qwen2_vl", chat_template=True),
            "qwen2_5_vl": tiny_mllms.save_tiny_qwen2_5_vl(root / "qwen2_5_vl", chat_template=False)}


def encoder(folders, family, seed=0, **kwargs) -> MetaTokenEncoder:
    torch.manual_seed(seed)
    return MetaTokenEncoder.from_pretrained(folders[family], K, **kwargs)


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


TITLES = ["Grim Curse", "The Haunted Crypt of the Long Night", "Love in Paris"]
IMAGES = [image(1), None, Image.fromarray(image(2))]  # mixed: array, text-only, PIL


def test_tiny_models_are_tiny(folders):
    counts = {family: tiny_mllms.num_params(encoder(folders, family).model) for family in FAMILIES}
    assert all(1_000 < n < 400_000 for n in counts.values()), counts


@pytest.mark.float_sensitive
@pytest.mark.parametrize("family", FAMILIES)
def test_shape_text_only_and_mixed_batches(folders, family):
    enc = encoder(folders, family)
    with torch.no_grad():
        mixed = enc(TITLES, IMAGES)
        text_only = enc(TITLES)
    assert mixed.shape == text_only.shape == (3, K, enc.hidden_size)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert torch.allclose(mixed[1], text_only[1], atol=1e-5)  # the text-only row is the same in both batches
    assert not torch.allclose(mixed[0], text_only[0], atol=1e-3)  # the image changes the features


@pytest.mark.float_sensitive
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_each_item_alone(folders, family):
    enc = encoder(folders, family)
    with torch.no_grad():
        batch = enc(TITLES, IMAGES)
        alone = torch.cat([enc([title], [img]) for title, img in zip(TITLES, IMAGES)])
    assert torch.allclose(batch, alone, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_is_a_plain_dict_of_cpu_tensors_with_meta_after_each_prompt(folders, family):
    enc = encoder(folders, family)
    prepared = enc.prepare(TITLES, IMAGES)
    assert type(prepared) is dict
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in prepared.values())
    mask, positions = prepared["attention_mask"], prepared["meta_positions"]
    assert positions.shape == (3, K)
    for row in range(3):
        first = int(positions[row, 0])
        assert positions[row].tolist() == list(range(first, first + K))
        assert mask[row, : first + K].all() and not mask[row, first + K:].any()  # right padding after the metas
    if family != "llava":
        assert {"mm_token_type_ids", "image_grid_thw"} <= set(prepared)
        assert len(prepared["image_grid_thw"]) == 2  # two rows have images
    with torch.no_grad():
        assert torch.equal(enc(prepared=prepared), enc(TITLES, IMAGES))


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_path_matches_the_models_own_input_ids_path(folders, family):
    """With one meta token set to a real token's embedding, its feature is the model's own last hidden state for
    prompt + that token (image placeholders found from embeddings; Qwen's M-RoPE positions as the model makes them)."""
    torch.manual_seed(0)
    enc = MetaTokenEncoder.from_pretrained(folders[family], 1)
    token = 7
    with torch.no_grad():
        enc.meta_tokens.copy_(enc.model.get_input_embeddings().weight[token][None])
        for title, img in zip(TITLES, IMAGES):
            prepared = enc.prepare([title], [img])
            end = int(prepared["meta_positions"][0, 0]) + 1
            ids = prepared["input_ids"][:, :end].clone()
            ids[0, -1] = token
            extra = {k: v for k, v in prepared.items() if k in ("pixel_values", "image_grid_thw")}
            if "mm_token_type_ids" in prepared:
                extra["mm_token_type_ids"] = prepared["mm_token_type_ids"][:, :end]
            own = enc.model.model(input_ids=ids, attention_mask=prepared["attention_mask"][:, :end], **extra)
            assert torch.allclose(enc([title], [img])[0, 0], own.last_hidden_state[0, -1], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_different_titles_give_different_features(folders, family):
    enc = encoder(folders, family)
    with torch.no_grad():
        out = enc(["Grim Curse", "Love in Paris"])
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_by_default_and_gradients_reach_only_the_meta_tokens(folders, family):
    enc = encoder(folders, family)
    enc.train()
    assert not enc.model.training  # the frozen MLLM stays in eval mode
    assert [name for name, p in enc.named_parameters() if p.requires_grad] == ["meta_tokens"]
    enc(TITLES, IMAGES).square().mean().backward()
    assert enc.meta_tokens.grad is not None and enc.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())
    assert list(enc.trainable_state_dict()) == ["meta_tokens"]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_lora_gets_gradients_on_the_language_models_q_v_only(folders, family):
    enc = encoder(folders, family, lora_rank=4)
    lora = {name: p for name, p in enc.model.named_parameters() if "lora_" in name}
    assert len(lora) == 2 * 2 * 2  # 2 layers × (q_proj, v_proj) × (A, B)
    assert all("language_model" in name and ("q_proj" in name or "v_proj" in name) for name in lora)
    trainable = {name for name, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable == set(lora)
    with torch.no_grad():
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # as after some training, so lora_A also gets a gradient
    enc(TITLES, IMAGES).square().mean().backward()
    assert enc.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    assert all(p.grad is None for name, p in enc.model.named_parameters() if name not in lora)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_trainable_state_round_trip_reproduces_features_exactly(folders, family):
    enc = encoder(folders, family, seed=0, lora_rank=4)
    with torch.no_grad():
        for name, p in enc.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # LoRA away from its zero start, so loading it matters
        expected = enc(TITLES, IMAGES)
    state = enc.trainable_state_dict()
    assert "meta_tokens" in state and sum(k.startswith("lora.") for k in state) == 8
    fresh = encoder(folders, family, seed=1, lora_rank=4)
    with torch.no_grad():
        assert not torch.allclose(fresh(TITLES, IMAGES), expected, atol=1e-4)
        fresh.load_trainable_state_dict(state)
        assert torch.equal(fresh(TITLES, IMAGES), expected)


def test_bfloat16_load_returns_float32_features(folders):
    enc = encoder(folders, "llava", torch_dtype=torch.bfloat16)
    assert enc.model.dtype == torch.bfloat16
    with torch.no_grad():
        out = enc(TITLES, IMAGES)
    assert out.shape == (3, K, enc.hidden_size) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_qwen_processors_load_without_torchvision(folders):
    assert isinstance(encoder(folders, "qwen2_vl").processor, Qwen2VLProcessor)
    assert isinstance(encoder(folders, "qwen2_5_vl").processor, Qwen2_5_VLProcessor)
    assert encoder(folders, "qwen2_vl").processor.chat_template  # its chat template came along


def test_clear_errors(folders, tmp_path):
    enc = encoder(folders, "llava")
    with pytest.raises(ValueError, match="reference_images has 1 entries but titles has 2"):
        enc.prepare(["a", "b"], [None])
    with pytest.raises(ValueError, match=r"reference_images\[0\]"):
        enc.prepare(["a"], [np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="titles="):
        enc.prepare("a single string")
    with pytest.raises(ValueError, match="titles=None"):
        enc()
    with pytest.raises(ValueError, match="num_meta_tokens=0"):
        MetaTokenEncoder.from_pretrained(folders["llava"], 0)
    with pytest.raises(ValueError, match="num_meta_tokens=0"):
        MetaTokenEncoder(enc.model, enc.processor, 0)
    with pytest.raises(ValueError, match="lora_rank=-1"):
        MetaTokenEncoder(enc.model, enc.processor, 2, lora_rank=-1)
    with pytest.raises(ValueError, match="prompt_template="):
        MetaTokenEncoder(enc.model, enc.processor, 2, prompt_template="{name}")
    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"model_type='llama'.*'llava', 'qwen2_5_vl', 'qwen2_vl'"):
        MetaTokenEncoder.from_pretrained(tmp_path, 2)
    with pytest.raises(ValueError, match="unexpected"):
        enc.load_trainable_state_dict({"meta_tokens": enc.meta_tokens.detach(), "lora.x": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        enc.load_trainable_state_dict({"meta_tokens": torch.zeros(K + 1, enc.hidden_size)})


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_lora_state_round_trips_bit_identically_and_mismatches_name_the_key(folders, family):
    """The LoRA part goes through peft's get/set_peft_model_state_dict: `lora.<peft key>` names, exact copies, and a
    missing key or a wrong shape is a ValueError naming it, raised before anything is loaded."""
    enc = encoder(folders, family, seed=0, lora_rank=4)
    with torch.no_grad():
        for name, p in enc.model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    state = enc.trainable_state_dict()
    lora_keys = sorted(k for k in state if k != "meta_tokens")
    assert len(lora_keys) == 8 and all(k.startswith("lora.") and ".default." not in k for k in lora_keys)

    fresh = encoder(folders, family, seed=1, lora_rank=4)
    assert not torch.equal(fresh.meta_tokens, enc.meta_tokens)
    fresh.load_trainable_state_dict(state)
    again = fresh.trainable_state_dict()
    assert list(again) == list(state)
    assert all(torch.equal(again[k], state[k]) and again[k].dtype == state[k].dtype for k in state)
    own_lora = {n: p for n, p in enc.model.named_parameters() if "lora_" in n}
    fresh_lora = {n: p for n, p in fresh.model.named_parameters() if "lora_" in n}
    assert own_lora.keys() == fresh_lora.keys()
    assert all(torch.equal(fresh_lora[n], own_lora[n]) for n in own_lora)
    again[lora_keys[0]].add_(1.0)  # the returned tensors are copies, not the encoder's parameters
    assert torch.equal(fresh.trainable_state_dict()[lora_keys[0]], state[lora_keys[0]])

    legacy = {"meta_tokens": state["meta_tokens"]} | {f"lora.{n}": p.detach().clone() for n, p in own_lora.items()}
    older = encoder(folders, family, seed=2, lora_rank=4)
    older.load_trainable_state_dict(legacy)  # states saved under the model parameter names still load
    assert all(torch.equal(older.trainable_state_dict()[k], state[k]) for k in state)

    key = lora_keys[0]
    before = {k: v.clone() for k, v in fresh.trainable_state_dict().items()}
    with pytest.raises(ValueError, match=rf"missing \['{re.escape(key)}'\]"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items() if k != key})
    rows, cols = state[key].shape
    bad = state | {key: torch.zeros(rows + 1, cols), "meta_tokens": state["meta_tokens"] + 1.0}
    with pytest.raises(ValueError, match=rf"state\['{re.escape(key)}'\] has shape \({rows + 1}, {cols}\)"):
        fresh.load_trainable_state_dict(bad)
    after = fresh.trainable_state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # a rejected state changes nothing
