"""Random-weight model folders with the real configs' dimensions, and a training config that runs them whole.

    python benchmarks/real_layouts.py [--out artifacts/real_layouts] [--family sd15|sd3] [--tiny] [--device cuda]
        [--size 512] [--items 24] [--covers 4] [KEY.PATH=VALUE ...]

Nothing is downloaded: every model is built from its config and written with `save_pretrained`, so the run loads
folders exactly as it would load the published checkpoints. What it measures is the cost of the real layouts, not
quality: the weights are random. Under OUT:

  sd15/         SD1.5's UNet (320/640/1280/1280), VAE, CLIP-L text encoder (768 wide, 12 layers, 49,408-token
                table), DDIM scheduler; fp32, as the published main-branch files are
  sd35m/        (--family sd3) SD3.5-Medium's MMDiT (24 blocks, width 1536, dual attention in blocks 0-12), 16-channel
                VAE, CLIP-L and CLIP-G with projections, no T5 (the pipelines' T5-free path); fp32
  qwen2vl/      Qwen2VLForConditionalGeneration with Qwen2-VL-2B's dimensions (1536 wide, 28 layers, 12 heads, 2 KV
                heads, 32-block 1280-wide vision tower, patch 14, 2×2 merge) in bf16 as published, a byte-level BPE
                tokenizer with Qwen's special tokens and chat template, Qwen2-VL's image processor
  clip/         CLIPModel with ViT-L/14's dimensions + processor (relevance rewards, aesthetic embeddings, item
                features)
  aesthetic.pth the LAION head layout on 768-d embeddings
  preference/   the two-tower preference model over the synthetic users and items
  data/         a PixelRec-layout folder: items.csv, interactions.csv, images/<item_id>.jpg for `--covers` items
  train.yaml    configs/gpu/<family>_qwen2vl_1gpu.yaml (DDPO or Flow-GRPO, fractional GPUs per role) with these
                folders, the speed settings the config schema offers (bf16 rollouts and learner) and the trailing
                KEY.PATH=VALUE overrides; validated before anything is built

The CLIP tokenizers are BPEs trained on the synthetic titles; the embedding tables keep the real vocabulary size, so
every id fits. `--tiny` builds the same layouts with tiny widths and writes a CPU placement: the dry run of the GPU
check and the smoke test (tests/test_real_layouts_bench.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # param_counts' real dimensions, the tests' Qwen tokenizer
FAMILIES = {"sd15": ("sd15", "sd15_qwen2vl_1gpu.yaml"), "sd3": ("sd35m", "sd35m_qwen2vl_1gpu.yaml")}
WORDS = ("shadow", "garden", "river", "dragon", "winter", "silver", "crown", "ocean", "forest", "night", "city",
         "secret", "empire", "storm", "quiet", "golden", "lost", "star", "heart", "iron")
TAGS = ("fantasy", "romance", "travel", "history", "science", "music")
# What a CPU dry run changes besides the widths: placement on this machine's 2 cores, short sampling, small inputs.
TINY_OVERRIDES = {
    "data": {"history_len": 4, "pairs_per_batch": 2, "samples_per_pair": 2},
    "model": {"meta_tokens": 4, "user_dim": 16},
    "algo": {"num_inference_steps": 3},  # SD3.5-M's Flow-GRPO trains steps [0, 3): the fewest that keep it
    "ray": {"num_cpus": 2, "rollout_gpus": 0, "learner_gpus": 0, "reward_gpus": 0, "rollout_cpus": 0.25,
            "learner_cpus": 0.25, "reward_cpus": 0.125, "data_cpus": 1, "weight_sync": "collective"},  # no cuda_ipc
    "train": {"iterations": 2, "eval_pairs": 2},
}
GPU_SPEED = {"rollout": {"precision": "bf16"}, "learner": {"precision": "bf16"}}  # where the schema has them


# ------------------------------------------------------------------------------------------------ data
def write_pixelrec(folder: Path, items: int, users: int, clicks: int, covers: int, cover_px: int, seed: int) -> dict:
    """A PixelRec-layout folder (data/pixelrec.py): items.csv, interactions.csv and images/ for the first `covers`
    items (the rest are text-only: the driver embeds every cover with CLIP on one CPU thread at start-up)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    item_ids = [f"i{i}" for i in range(items)]
    titles = [" ".join(rng.choice(WORDS, 3, replace=False)).title() for _ in item_ids]
    tags = [str(rng.choice(TAGS)) for _ in item_ids]
    lines = ["item_id,title,tag"] + [f"{i},{t},{g}" for i, t, g in zip(item_ids, titles, tags)]
    (folder / "items.csv").write_text("\n".join(lines) + "\n")
    yy, xx = np.mgrid[0:cover_px, 0:cover_px] / cover_px
    for index in range(covers):  # a colour gradient and a block per cover, so covers differ
        colour = rng.uniform(0, 255, (2, 3))
        image = colour[0] * yy[..., None] + colour[1] * xx[..., None]
        x0, y0 = rng.integers(0, cover_px // 2, 2)
        image[y0:y0 + cover_px // 3, x0:x0 + cover_px // 3] = rng.uniform(0, 255, 3)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "images" / f"{item_ids[index]}.jpg")
    user_ids = [f"u{u}" for u in range(users)]
    rows = ["item_id,user_id,timestamp"]
    for user in user_ids:
        for step, item in enumerate(rng.choice(item_ids, clicks, replace=False)):
            rows.append(f"{item},{user},{1_700_000_000 + 3600 * step + int(rng.integers(0, 60))}")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    return {"item_ids": item_ids, "titles": titles, "tags": dict(zip(item_ids, tags)), "user_ids": user_ids}


# ------------------------------------------------------------------------------------------------ models
def clip_text_config(tokenizer, tiny: bool, width: int = 768, layers: int = 12, heads: int = 12,
                     projection: int = 768, act: str = "quick_gelu"):
    """CLIP text tower config: CLIP-L's (or CLIP-G's with other widths), or a tiny one; the real 49,408-token table."""
    from transformers import CLIPTextConfig

    if tiny:
        width, layers, heads, projection = 32, 2, 2, 32
    return CLIPTextConfig(vocab_size=max(49408 if not tiny else 0, len(tokenizer)), hidden_size=width,
                          intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=tokenizer.model_max_length, projection_dim=projection,
                          hidden_act=act, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)  # explicit ids: eos 2 would mean legacy pooling


def sd15_pipeline(tokenizer, size: int, tiny: bool):
    """SD1.5's StableDiffusionPipeline layout (or tiny widths) at `size` px, random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from param_counts import SD15_UNET, SD15_VAE
    from transformers import CLIPTextModel

    from icg_rl.models.zoo import SD_SCHEDULE

    unet = dict(SD15_UNET, sample_size=size // 8)
    vae = dict(SD15_VAE, sample_size=size)
    if tiny:
        unet |= dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32)
        vae |= dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
    return StableDiffusionPipeline(
        AutoencoderKL(**vae), CLIPTextModel(clip_text_config(tokenizer, tiny)), tokenizer, UNet2DConditionModel(**unet),
        DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1), None, None,
        requires_safety_checker=False)


def sd35m_pipeline(tokenizer, size: int, tiny: bool):
    """SD3.5-Medium's StableDiffusion3Pipeline layout without T5 (or tiny widths), random weights."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from param_counts import SD15_VAE, SD35M_TRANSFORMER
    from transformers import CLIPTextModelWithProjection

    from icg_rl.models.zoo import flow_scheduler

    transformer = dict(SD35M_TRANSFORMER, sample_size=size // 8)
    vae = dict(SD15_VAE, latent_channels=16, sample_size=size, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)  # SD3's VAE: SD1.5's blocks, 16 latent channels
    if tiny:  # CLIP-L + CLIP-G states side by side (32 + 32) are the context width; T5's zero tokens get it too
        transformer |= dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                            caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16,
                            dual_attention_layers=(0,))
        vae |= dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
    clip_l = CLIPTextModelWithProjection(clip_text_config(tokenizer, tiny))
    clip_g = CLIPTextModelWithProjection(clip_text_config(tokenizer, tiny, 1280, 32, 20, 1280, "gelu"))
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**transformer), scheduler=flow_scheduler(3.0), vae=AutoencoderKL(**vae),
        text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)


BASES = {"sd15": sd15_pipeline, "sd3": sd35m_pipeline}


def qwen2_vl(tiny: bool) -> tuple:
    """Qwen2-VL-2B's layout (or the tests' tiny one) in bf16 as published -> (model, tokenizer, image processor)."""
    import torch
    from param_counts import QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from tests.models.tiny_mllms import QWEN_CHAT_TEMPLATE, qwen_image_processor, qwen_tokenizer

    tokenizer = qwen_tokenizer()
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    special = {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if tiny:
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        processor = qwen_image_processor()
    else:  # head dim 128: 64 rotary frequencies, split 16/24/24 over (t, h, w) by M-RoPE as in Qwen2-VL-2B
        text = dict(QWEN2_VL_2B_TEXT, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
        vision = dict(QWEN2_VL_2B_VISION)
        processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                                             max_pixels=28 * 28 * 1280)
    config = Qwen2VLConfig(text_config=text | special, vision_config=vision, **ids)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return Qwen2VLForConditionalGeneration(config).to(torch.bfloat16), tokenizer, processor


def save_qwen2_vl(folder: Path, model, tokenizer, processor) -> None:
    """A hub-style folder: weights, tokenizer (with the chat template) and the image processor, whose config names
    the processor class (the Qwen processor itself needs torchvision to be built here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in (model, tokenizer, processor):
        part.save_pretrained(str(folder))
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"processor_class": "Qwen2VLProcessor"}, indent=2))


def clip_model(tokenizer, tiny: bool) -> tuple:
    """CLIP ViT-L/14's layout (or tiny) -> (model, its PIL processor)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    from icg_rl.models.zoo import clip_processor

    image = 32 if tiny else 224
    vision = (CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image, patch_size=8, projection_dim=32) if tiny else
              CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=image, patch_size=14, projection_dim=768))
    text = clip_text_config(tokenizer, tiny)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=text.projection_dim))
    return model, clip_processor(tokenizer, image)


def build_rewards(out: Path, clip_dir: Path, width: int, data: dict, cfg) -> None:
    """The LAION-layout aesthetic head and a two-tower preference model (random weights) on that CLIP."""
    import torch

    from icg_rl.models.aesthetic_head import AestheticHead
    from icg_rl.preference.model import PreferenceModel, save_preference_model

    AestheticHead(width).save(out / "aesthetic.pth")
    p = cfg.preference
    model = PreferenceModel(data["user_ids"], data["item_ids"], item_dim=width, image_dim=width, user_dim=p.user_dim,
                            hidden_dim=p.hidden_dim, item_bias=True, tag_vocab=list(TAGS), standardize=True)
    features = torch.nn.functional.normalize(torch.randn(len(data["item_ids"]), width), dim=-1)
    model.set_item_features(features, {item: [tag] for item, tag in data["tags"].items()})
    save_preference_model(model, out / "preference" / "model", str(clip_dir.resolve()), cfg.data.history_len)


# ------------------------------------------------------------------------------------------------ config
def write_config(out: Path, family: str, tiny: bool, size: int, overrides: list[str]) -> tuple[Path, object]:
    """OUT/train.yaml (extends configs/gpu/<family>_1gpu.yaml) -> (path, the validated Config). The reference
    covers are read at the generated covers' size: train.py stacks both into its sample grid, which fails when they
    differ (the real config's 448 px references beside 512 px covers)."""
    from icg_rl.config import Config, apply_override, load_config

    base_name, placement = FAMILIES[family]
    tree: dict = {
        "extends": str(ROOT / "configs" / "gpu" / placement),
        "data": {"path": str(out / "data"), "reference_size": size},
        "model": {"base": str(out / base_name), "mllm": str(out / "qwen2vl")},
        "reward": {"clip": str(out / "clip"), "aesthetic_head": str(out / "aesthetic.pth"),
                   "preference": str(out / "preference" / "model")},
        "train": {"out": str(out / "run")},
    }
    for section, values in (TINY_OVERRIDES if tiny else GPU_SPEED).items():
        schema = Config.model_fields[section].annotation.model_fields if section in Config.model_fields else {}
        kept = {k: v for k, v in values.items() if k in schema}  # a speed setting this checkout does not have: skip
        if kept:
            tree[section] = tree.get(section, {}) | kept
    for item in overrides:
        apply_override(tree, item)
    path = out / "train.yaml"
    out.mkdir(parents=True, exist_ok=True)
    header = "# written by benchmarks/real_layouts.py: random-weight folders with the real configs' dimensions\n"
    path.write_text(header + yaml.safe_dump(tree, sort_keys=False))
    return path, load_config(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="artifacts/real_layouts", help="folder for the models, data and config")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd15", help="base model layout")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and a CPU placement (dry run, tests)")
    parser.add_argument("--device", default=None, help="where weights are initialised (default: cuda if there)")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512; tiny: 64)")
    parser.add_argument("--items", type=int, default=24, help="catalogue items")
    parser.add_argument("--covers", type=int, default=4, help="items with a cover image (the rest text-only)")
    parser.add_argument("--users", type=int, default=32, help="users")
    parser.add_argument("--clicks", type=int, default=10, help="clicks per user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-only", action="store_true", help="rewrite train.yaml only, over folders built "
                        "earlier with the same --family/--tiny/--size (OUT/build.json records them)")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="written into train.yaml")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    if args.size % 64 or not 0 <= args.covers <= args.items or args.clicks > args.items:
        parser.error("--size must be a multiple of 64, --covers at most --items, --clicks at most --items")
    return args


def build(args: argparse.Namespace) -> Path:
    """Everything under --out; returns the training config's path."""
    import time

    import torch

    from icg_rl.models.tokenizer import train_clip_tokenizer

    out = Path(args.out).resolve()
    (out / "build.json").unlink(missing_ok=True)  # an interrupted rebuild must not pass for a complete one
    config_path, cfg = write_config(out, args.family, args.tiny, args.size, args.overrides)  # a bad override fails here
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = write_pixelrec(out / "data", args.items, args.users, args.clicks, args.covers, 32 if args.tiny else 256,
                          args.seed)
    tokenizer = train_clip_tokenizer(data["titles"] + [cfg.model.prompt_template], 1024, 77)

    def lap(name: str) -> None:
        nonlocal start
        timings[name], start = round(time.perf_counter() - start, 1), time.perf_counter()

    with torch.device(device):  # random init where it is fast; save_pretrained copies to the host
        BASES[args.family](tokenizer, args.size, args.tiny).save_pretrained(str(out / FAMILIES[args.family][0]))
        lap("base")
        save_qwen2_vl(out / "qwen2vl", *qwen2_vl(args.tiny))
        lap("mllm")
        clip, processor = clip_model(tokenizer, args.tiny)
        clip.save_pretrained(str(out / "clip"))
        processor.save_pretrained(str(out / "clip"))
        lap("clip")
    build_rewards(out, out / "clip", clip.config.projection_dim, data, cfg)
    lap("rewards")
    sizes = {p.name: round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**30, 2)
             for p in out.iterdir() if p.is_dir()}
    record = {"config": str(config_path), "family": args.family, "tiny": args.tiny, "size": args.size,
              "device": device, "seconds": timings, "GiB": sizes}
    (out / "build.json").write_text(json.dumps(record, indent=2))  # written last: the folders are complete
    print(json.dumps(record))
    return config_path


def rewrite_config(args: argparse.Namespace) -> Path:
    """--config-only: a new train.yaml (other overrides) over the folders an earlier build left."""
    out = Path(args.out).resolve()
    built = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else None
    wanted = {"family": args.family, "tiny": args.tiny, "size": args.size}
    if built is None or {k: built[k] for k in wanted} != wanted:
        raise SystemExit(f"--config-only: {out} holds no complete build with {wanted} (build.json: {built})")
    path, _ = write_config(out, args.family, args.tiny, args.size, args.overrides)
    print(json.dumps({"config": str(path), "reused": str(out)}))
    return path


if __name__ == "__main__":
    arguments = parse_args()
    rewrite_config(arguments) if arguments.config_only else build(arguments)
