"""The micro zoo: every folder loads through the library's own from_pretrained, and the models learned."""

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer, LlavaForConditionalGeneration, LlavaProcessor

from icg_rl.models import zoo
from icg_rl.models.aesthetic_head import AestheticHead
from icg_rl.models.build import build_base_models
from icg_rl.models.pretrain import vae_psnr


def test_sd_folder_loads_and_samples_with_stock_pipeline(micro_world):
    cfg, _ = micro_world
    pipe = StableDiffusionPipeline.from_pretrained(str(Path(cfg.world.dir) / "models" / "sd"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["The Haunted Crypt"], num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, cfg.world.image_size, cfg.world.image_size, 3)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the world's latents, not SD's constant


def test_tokenizer_keeps_unseen_letters_inside_the_title(micro_world):
    cfg, _ = micro_world
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(cfg.world.dir) / "models" / "sd" / "tokenizer"))
    ids = tokenizer("Ñandú über Zürich — 東京!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1], "an unseen letter became EOS mid-title"
    assert tokenizer.eos_token_id != 2  # CLIP's legacy argmax pooling would kick in


def test_clip_aesthetic_and_mllm_folders_load(micro_world):
    cfg, _ = micro_world
    models = Path(cfg.world.dir) / "models"
    clip = CLIPModel.from_pretrained(str(models / "clip"))
    processor = CLIPProcessor.from_pretrained(str(models / "clip"))
    batch = processor(text=["Grim Curse"], images=[np.zeros((32, 32, 3), np.uint8)], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        out = clip(**batch)
    assert out.logits_per_image.shape == (1, 1)
    head = AestheticHead.load(models / "aesthetic" / "head.pth")
    assert head(torch.randn(3, head.in_dim)).shape == (3,)
    llava = LlavaForConditionalGeneration.from_pretrained(str(models / "mllm"))
    llava_processor = LlavaProcessor.from_pretrained(str(models / "mllm"))
    inputs = llava_processor(text=["<image> Grim Curse"], images=[np.zeros((32, 32, 3), np.uint8)],
                             return_tensors="pt")
    with torch.no_grad():
        hidden = llava(**inputs, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape[1] == inputs["input_ids"].shape[1]


def test_micro_models_learned_something(micro_world):
    """Margins over untrained/chance, on the micro world's seconds-long training."""
    cfg, summary = micro_world
    models = summary["models"]
    chance = 1.0 / cfg.world.num_genres
    assert models["clip"]["genre_retrieval"] > chance + 0.15
    assert models["judge"]["valid_accuracy"] > chance + 0.3
    from icg_rl.data.coverworld import load_coverworld
    from icg_rl.io import read_image

    data = load_coverworld(cfg.world.dir)
    images = torch.from_numpy(np.stack([read_image(Path(cfg.world.dir) / p) for p in data.variants["image_path"]]))
    images = images.permute(0, 3, 1, 2).float() / 255.0
    pipe = StableDiffusionPipeline.from_pretrained(str(Path(cfg.world.dir) / "models" / "sd"))
    torch.manual_seed(0)
    untrained = zoo.build_vae(cfg.world.image_size)
    assert vae_psnr(pipe.vae, images) > vae_psnr(untrained, images) + 3.0


def test_second_build_reuses_the_cache(micro_world):
    cfg, _ = micro_world
    again = build_base_models(cfg.world.dir, cfg.world, cfg.zoo, progress=False)
    assert again["cached"] is True
