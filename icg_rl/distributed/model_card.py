"""The model card of an exported checkpoint (`OUT/checkpoint/README.md`): what the weights are and how they were made.

A checkpoint folder travels alone (copied to a model store, served from a volume, shared with a colleague); without a
card it is a safetensors file whose meaning lives in a run folder that stayed behind. The card follows diffusers'
adapter model cards: YAML front matter (base_model, library_name, tags) that hubs and tools read, then sections a
person reads — base model and MLLM, rewards with their weights and floors, the algorithm and its steps, the data, the
run's held-out numbers (the final summary's `eval` and `oracle` blocks) and its sample grid (`samples.png`, copied
beside the weights). Loaders ignore both files: `ICGPipeline.from_pretrained` reads only `icg_config.json`,
`icg.safetensors` and (when present) `pytorch_lora_weights.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from icg_rl.io import atomic_write_bytes

CARD_NAME, SAMPLES_NAME = "README.md", "samples.png"
ALGORITHMS = {"backprop": "reward backprop (DRaFT-K): gradient through the last K denoising steps into "
                          "differentiable rewards",
              "grpo": "GRPO: group-relative policy gradient with PPO clipping",
              "ddpo": "DDPO: PPO-clip policy gradient over the recorded denoising steps",
              "nft": "DiffusionNFT: forward-process policy optimization on the clean samples, rewards as an "
                     "optimality probability (no likelihoods, no reward gradients)"}


def render_model_card(cfg, summary: dict[str, Any]) -> str:
    """Markdown (YAML front matter + sections) for the checkpoint a run with config `cfg` exported, from its final
    `summary` (commands/train.py's: iterations, eval, oracle, ...). Pure: reads nothing, writes nothing."""
    from icg_rl.paths import base_folder, mllm_folder

    base, mllm = base_folder(cfg), mllm_folder(cfg)
    algo, data = cfg.algo, cfg.data
    lora = cfg.model.lora.rank > 0
    tags = ["icg_rl", "text-to-image", "diffusers", "stable-diffusion", "adapter", "personalization",
            "reinforcement-learning", f"rl-{algo.name}", data.kind] + (["lora"] if lora else [])
    front = {"base_model": base, "library_name": "icg_rl", "pipeline_tag": "text-to-image", "tags": tags,
             "inference": False}
    iterations = summary.get("iterations", cfg.train.iterations)
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# ICG adapter: {algo.name} on {data.kind}", "",
             f"ICG weights for `{base}`: learnable meta tokens read by the MLLM `{mllm}`, a user encoder and FiLM "
             f"refiner, and a decoupled cross-attention adapter{' plus a UNet LoRA' if lora else ''}, fine-tuned "
             f"with Ray-distributed RL ({ALGORITHMS[algo.name]}) for {iterations} iterations. Only these weights are "
             f"here; the base model and the MLLM load from the folders `icg_config.json` names.", ""]
    if summary.get("samples"):
        lines += [f"![held-out samples]({SAMPLES_NAME})", "",
                  "Held-out (user, item) pairs, one per row; columns: the item's reference cover, ICG, ICG with the "
                  "user embedding zeroed.", ""]
    lines += ["## How to use", "", "```python", "from icg_rl import ICGPipeline, ICGUser", "",
              f"pipe = ICGPipeline.from_pretrained({base!r}, icg_path='path/to/this/folder')",
              "images = pipe(['The Haunted Crypt'], reference_images=[None],  # or [np.asarray(cover)]",
              "              users=[ICGUser('u00001')])  # a known user id, ICGUser(history=[item ids]) or ICGUser()",
              "```", "",
              "Serve it: `python -m icg_rl.serve --checkpoint path/to/this/folder`; evaluate it: "
              "`python -m icg_rl.evaluate --checkpoint path/to/this/folder`.", ""]
    lines += ["## Model", ""] + _table(("", "value"), [
        ("base model", base), ("MLLM", mllm), ("meta tokens", cfg.model.meta_tokens),
        ("user embedding width", cfg.model.user_dim), ("UNet LoRA rank", cfg.model.lora.rank),
        ("MLLM LoRA rank", cfg.model.mllm_lora.rank), ("prompt template", cfg.model.prompt_template)])
    floors = cfg.reward.floors
    rows = [(name, weight, floors.get(name, "—")) for name, weight in cfg.reward.weights.items() if weight != 0]
    lines += ["", "## Rewards", ""] + _table(("reward", "weight", "floor"), rows)
    note = f"Per-reward running normalisation: {'on' if cfg.reward.normalize else 'off'}."
    if floors:
        note += (" A floor is held, not climbed: a cover pays its weight × its shortfall below the floor × the "
                 "reference cover's score" + (f"; the price follows dual ascent at rate {_num(cfg.reward.floor_rate)}."
                                               if cfg.reward.floor_rate else "."))
    lines += ["", note, ""]
    lines += ["## Training", ""] + _table(("", "value"), _algorithm_rows(cfg, iterations))
    lines += ["", "## Data", ""] + _table(("", "value"), _data_rows(cfg))
    for block, title, note in (("eval", "Evaluation (held-out pairs)",
                                "Mean reward-model scores of the exported policy's covers on held-out (user, item) "
                                "pairs; `*_reference`: the items' own covers."),
                               ("oracle", "CoverWorld oracle",
                                "The world's hidden truth: true click-through rate (`ctr_*`) of ICG's covers, the "
                                "items' reference covers, the best existing variant per user and ICG with the user "
                                "zeroed; `ab_*`: a simulated A/B test against the reference covers.")):
        if summary.get(block):
            lines += ["", f"## {title}", "", note, ""] + _table(("metric", "value"), sorted(summary[block].items()))
    lines += ["", "## Files", ""] + _table(("file", "what"), _files(lora, bool(summary.get("samples"))))
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, cfg, summary: dict[str, Any], samples: str | Path | None = None) -> Path:
    """`folder/README.md` (the card) and a copy of `samples` (the run's sample grid) as `folder/samples.png`, each
    written atomically; returns the card's path."""
    folder = Path(folder)
    if samples is not None and Path(samples).is_file():
        atomic_write_bytes(folder / SAMPLES_NAME, Path(samples).read_bytes())
    else:
        summary = {k: v for k, v in summary.items() if k != "samples"}  # no image to point at
    atomic_write_bytes(folder / CARD_NAME, render_model_card(cfg, summary).encode())
    return folder / CARD_NAME


def _algorithm_rows(cfg, iterations: int) -> list[tuple[str, Any]]:
    algo, train = cfg.algo, cfg.train
    rows = [("algorithm", f"`{algo.name}` — {ALGORITHMS[algo.name]}"), ("learning rate", algo.lr),
            ("iterations", iterations), ("inference steps (DDIM)", algo.num_inference_steps), ("DDIM eta", algo.eta),
            ("guidance scale", algo.guidance_scale)]
    if algo.name == "backprop":
        rows.append(("backprop steps K", f"{algo.backprop_steps}" + (" (drawn in 1..K)" if algo.random_truncation
                                                                        else "")))
    elif algo.name == "nft":
        rows += [("group size (samples per pair)", cfg.data.samples_per_pair), ("objective", algo.nft_objective),
                 ("β", algo.nft_beta), ("advantage → optimality clip", algo.nft_clip),
                 ("(t, ε) draws per cover", algo.nft_draws), ("inner steps per batch", algo.nft_inner_steps)]
    else:
        rows += [("group size (samples per pair)", cfg.data.samples_per_pair), ("PPO clip range", algo.clip_range),
                 ("PPO epochs per batch", algo.ppo_epochs),
                 ("KL coefficient", algo.kl_coef), ("trained step fraction", algo.timestep_fraction)]
        if algo.sde_window is not None:
            rows.append(("SDE window", f"[{algo.sde_window[0]}, {algo.sde_window[1]})"))
    average = getattr(train, "average_last", 0.0)
    rows += [("weights exported (`train.average_last`)",
              f"mean over the last {average:.0%} of updates" if average else "the last iterate"),
             ("seed", train.seed), ("learner ranks", cfg.ray.learner_workers),
             ("rollout actors", cfg.ray.rollout_workers)]
    return rows


def _data_rows(cfg) -> list[tuple[str, Any]]:
    data = cfg.data
    path = data.path or (cfg.world.dir if data.kind == "coverworld" else "—")
    rows = [("kind", data.kind), ("path", path), ("pairs per batch", data.pairs_per_batch),
            ("samples per pair", data.samples_per_pair), ("history length", data.history_len)]
    if data.kind == "coverworld":
        world = cfg.world
        rows += [("world seed", world.seed), ("users", world.num_users),
                 ("items", world.num_genres * world.items_per_genre)]
    return rows


def _files(lora: bool, samples: bool) -> list[tuple[str, str]]:
    rows = [("`icg.safetensors`", "the trained ICG weights (meta tokens, user encoder, refiner, adapter)"),
            ("`icg_config.json`", "the ICG architecture and the base/MLLM folders it was trained on")]
    if lora:
        rows.append(("`pytorch_lora_weights.safetensors`", "the UNet LoRA, in diffusers' format"))
    if samples:
        rows.append((f"`{SAMPLES_NAME}`", "the run's final held-out sample grid"))
    return rows + [(f"`{CARD_NAME}`", "this card")]


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_num(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if isinstance(value, (int, str)) else json.dumps(value, ensure_ascii=False)
