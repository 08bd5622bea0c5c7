"""Typed configuration: pydantic v2 sections, a YAML file first, then dotted overrides (`algo.lr=3e-4`).

Every field carries a one-line description with its unit and scope; those descriptions are the reference that
`--help` and the docs show. Unknown keys, wrong types and out-of-range values fail before any work starts, with
a message naming the key path, the bad value and what is allowed (and the closest key for a typo).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from icg_rl.config.evaluation import EvaluationConfig
from icg_rl.config.files import ConfigError, Section, apply_override, read_tree
from icg_rl.config.runtime import LearnerConfig, RayConfig, RolloutConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "coverworld.yaml"


CATALOG_FIELDS = {"seed", "num_genres", "items_per_genre", "variants_per_item", "image_size", "ratings_per_image"}


class WorldConfig(Section):
    """CoverWorld: the synthetic recommender world (docs/architecture.md §4)."""

    dir: str = Field("artifacts/coverworld", description="folder of the world build: tables, covers, models/")
    seed: int = Field(0, description="seed of every random draw in the world; same seed, same bytes")
    num_genres: int = Field(8, ge=2, le=8, description="genres in the world (each has a vocabulary, palette, motif)")
    items_per_genre: int = Field(60, ge=2, description="items generated per genre")
    variants_per_item: int = Field(4, ge=1, le=16, description="cover variants per item besides the reference cover")
    image_size: Literal[32, 64] = Field(32, description="cover side length, pixels")
    num_users: int = Field(400, ge=4, description="users in the world, held-out users included")
    heldout_user_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of users kept out of training")
    impressions_per_user: int = Field(300, ge=4, description="mean (item, variant) impressions logged per user")
    impressions_spread: float = Field(0.6, ge=0.0, le=2.0, description="sigma of the log-normal spread of "
                                      "impressions per user (light and heavy users); 0 = every user the mean")
    valid_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="latest share of each user's log for validation")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="latest share of each user's log for test")
    genre_weight: float = Field(1.0, ge=0.0, description="alpha: logit weight of the user's genre affinity")
    look_weight: float = Field(1.0, ge=0.0, description="beta: logit weight of the squared distance to the taste")
    click_offset: float = Field(0.0, description="c: logit offset of every impression")
    item_bias_std: float = Field(0.3, ge=0.0, description="std of the per-item logit bias")
    taste_spread: float = Field(1.0, gt=0.0, description="std of users' ideal points, in units of each feature's W")
    taste_segments: int = Field(4, ge=0, le=64, description="users drawn around this many taste personas (genre "
                                "affinities and ideal look); 0 = every user drawn independently")
    segment_spread: float = Field(0.15, ge=0.0, description="std of a user's offset from their persona, in units of "
                                  "the population's spread (used when taste_segments > 0)")
    ratings_per_image: int = Field(3, ge=1, description="public aesthetic ratings per cover (the world's 'AVA')")

    def catalog(self) -> dict:
        """The fields that decide the items, covers, captions and public ratings — all the base models see. User-
        side fields (users, tastes, clicks) are left out, so changing them does not retrain the models."""
        return self.model_dump(include=CATALOG_FIELDS)

    def content(self) -> dict:
        """Every field but `dir`: what the world's bytes depend on (a build moved elsewhere is still current)."""
        return self.model_dump(mode="json", exclude={"dir"})


class ZooConfig(Section):
    """Budgets of the tiny base models trained on the world (docs/architecture.md §4, models/zoo.py)."""

    seed: int = Field(0, description="seed of model initialisation and training")
    vocab_size: int = Field(1024, ge=514, description="BPE vocabulary trained on the world's texts, tokens")
    max_title_tokens: int = Field(32, ge=8, description="text encoder context length, tokens")
    text_width: int = Field(64, ge=16, description="hidden width of the CLIP text encoders")
    batch_size: int = Field(64, ge=2, description="training batch of the UNet, CLIP and heads, images")
    vae_batch_size: int = Field(32, ge=2, description="training batch of the VAE, images")
    vae_steps: int = Field(700, ge=1, description="AutoencoderKL training steps")
    unet_steps: int = Field(1800, ge=1, description="UNet denoising-objective training steps")
    clip_steps: int = Field(1500, ge=1, description="tiny CLIP contrastive steps (captions + attribute curriculum)")
    aesthetic_steps: int = Field(3000, ge=1, description="aesthetic head regression steps")
    judge_steps: int = Field(300, ge=1, description="genre judge (evaluation CNN) training steps")
    eval_samples_per_genre: int = Field(8, ge=1, description="held-out titles sampled per genre to judge the base")
    eval_inference_steps: int = Field(20, ge=1, description="DDIM steps for the base-model samples that are judged")
    eval_guidance_scale: float = Field(3.0, ge=1.0, description="CFG scale for the judged base-model samples")
    threads: int = Field(2, ge=1, description="torch CPU threads while building")
    flow_steps: int = Field(1100, ge=1, description="flow base (models/sd3, built on demand): rectified-flow steps")
    flow_width: int = Field(128, ge=32, multiple_of=32, description="flow base: transformer width (heads of 32)")
    flow_layers: int = Field(4, ge=2, description="flow base: joint transformer blocks")
    flow_shift: float = Field(1.0, gt=0.0, description="flow base: sampling-sigma shift of its flow-matching scheduler")
    xl_steps: int = Field(600, ge=1, description="SDXL-layout base (models/sdxl, built on demand): denoising steps")
    xl_time_embed_dim: int = Field(8, ge=2, multiple_of=2, description="SDXL-layout base: width of each of the six "
                                   "size/crop micro-conditioning ids' sinusoidal embedding")


class DataConfig(Section):
    """Which interactions table to train on, and how the (user, item) pair stream is cut."""

    kind: Literal["coverworld", "movielens", "pixelrec"] = Field("coverworld", description="data source")
    path: str | None = Field(None, description="dataset folder; None = the CoverWorld build folder")
    on_bad_row: Literal["error", "skip"] = Field("error", description="malformed rows: fail (file:line) or skip")
    positive_rating: float = Field(4.0, ge=0.5, le=5.0, description="MovieLens: rating counted as a click, stars")
    posters_dir: str | None = Field(None, description="MovieLens: folder of <item_id>.jpg posters; None = text-only")
    # MovieLens/PixelRec splits (CoverWorld's is stored at build time, by world.*_fraction and world.seed)
    valid_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="latest share of each user's log for validation")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="latest share of each user's log for test")
    heldout_user_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of users kept out of training")
    split_seed: int = Field(0, description="MovieLens/PixelRec: seed of the held-out user draw")
    history_len: int = Field(8, ge=0, description="recent clicked items carried per user, items")
    reference_size: int = Field(32, ge=8, description="side of the reference images in stream batches, pixels")
    pairs_per_batch: int = Field(4, ge=1, description="P: (user, item) pairs per rollout batch")
    samples_per_pair: int = Field(4, ge=1, description="K: images sampled per pair (one advantage group)")
    cache_dir: str | None = Field(None, description="where derived data is cached (catalogue features by model and "
                                  "item table); None = <dataset>/.icg_cache")


class LoraConfig(Section):
    rank: int = Field(0, ge=0, description="LoRA rank; 0 = no LoRA")
    alpha: float = Field(8.0, gt=0.0, description="LoRA alpha (scale = alpha / rank)")


class ModelConfig(Section):
    """The ICG model (docs/architecture.md §3): which base, MLLM and sizes."""

    base: str = Field("coverworld", description="SD1.x/2.x, SDXL or SD3 folder; 'coverworld'/'coverworld_flow'/"
                      "'coverworld_xl': the world's tiny UNet, SD3-layout or SDXL-layout base")
    mllm: str = Field("coverworld", description="image-text model folder, or 'coverworld' for the tiny LLaVA")
    meta_tokens: int = Field(4, ge=1, le=256, description="learnable meta tokens appended to the MLLM prompt")
    user_dim: int = Field(64, ge=4, description="width of the user embedding")
    prompt_template: str = Field("{title}", description="text prompt given to the base model; {title} is filled")
    user_id_init_std: float = Field(1.0, ge=0.0, description="init std of the user-id embeddings; 0: a known user "
                                    "starts as their history and the id learns the deviation")
    standardize_history: bool = Field(False, description="standardise each item-feature dimension over the "
                                      "catalogue before the user encoder pools a history")
    max_user_ids: int = Field(65536, ge=0, description="most training users given their own id embedding (the "
                              "most active first; the rest, like new users, are their history): the table is "
                              "trained, synced to every rollout actor and checkpointed, so it must not grow with "
                              "the log (1M PixelRec users: 256 MB)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA on the UNet's attention projections")
    mllm_lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA on the MLLM's q/v projections")


RewardName = Literal["aesthetic", "clip_t", "clip_i", "preference", "preference_lift", "pickscore", "genre_hit"]


class RewardConfig(Section):
    """Reward models and their mix (docs/architecture.md §6)."""

    clip: str = Field("coverworld", description="CLIPModel folder for relevance, or 'coverworld'")
    aesthetic_head: str = Field("coverworld", description="aesthetic head weights file, or 'coverworld'")
    pickscore: str | None = Field(None, description="PickScore-style CLIPModel folder (for the 'pickscore' reward)")
    preference: str = Field("coverworld", description="preference model folder, the --out folder of `python -m "
                            "icg_rl.preference` (holding model/), or 'coverworld' (models/preference)")
    weights: dict[RewardName, float] = Field(
        default_factory=lambda: {"aesthetic": 1.0, "clip_t": 0.5, "clip_i": 0.5, "preference": 1.0},
        description="weight of each reward in the mix",
    )
    normalize: bool = Field(True, description="running mean/std normalisation per reward before mixing")
    floors: dict[Literal["aesthetic", "clip_t", "clip_i", "pickscore"], float] = Field(
        default_factory=dict, description="rewards held as a floor, not climbed: a cover costs its weight × its "
        "shortfall below floor × the reference cover's score (rewards/mix.py); e.g. {clip_t: 0.95}")
    floor_rate: float = Field(0.0, ge=0.0, description="dual-ascent step of the floors' prices: > 0 raises a floor's "
                              "weight while the batch mean is below it and lowers it above (rewards/mix.py); 0: fixed")


class PreferenceConfig(Section):
    """The personalized preference model (two-tower, trained on click logs with Ray Train)."""

    epochs: int = Field(12, ge=1, description="passes over the training impressions")
    batch_size: int = Field(512, ge=1, description="impressions per step, per training worker")
    lr: float = Field(5e-3, gt=0.0, description="AdamW learning rate (peak, with the cosine schedule)")
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="cosine decay to 0 per batch, or constant")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay")
    user_dim: int = Field(64, ge=4, description="width of the user tower's embedding (the ICG user encoder's)")
    hidden_dim: int = Field(64, ge=4, description="width of the interaction space of the two towers")
    negatives_per_positive: int = Field(4, ge=1, description="sampled negatives per click when a log has none")
    item_bias: bool = Field(True, description="learn a per-item click bias beside the two towers (popularity)")
    item_tags: bool = Field(True, description="feed the items' genres to both towers beside the CLIP embedding")
    standardize: bool = Field(True, description="standardise each item-side dimension with the catalogue's mean "
                              "and spread (CLIP looks vary by ~0.1 around a large shared mean)")
    user_id_dropout: float = Field(1.0, ge=0.0, le=1.0, description="share of training rows whose user id is hidden "
                                   "(cold start); 1.0: history only, no id table (ids overfit ~150 impressions)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs per Ray Train worker")
    seed: int = Field(0, description="seed of initialisation, shuffling and negative sampling")


class AlgoConfig(Section):
    """RL algorithm (docs/architecture.md §7)."""

    name: Literal["ddpo", "grpo", "backprop", "nft"] = Field("ddpo", description="DDPO, GRPO, reward backprop "
                                                              "(DRaFT-K) or DiffusionNFT (reward-only, rl/nft.py)")
    lr: float = Field(3e-4, gt=0.0, description="learning rate of the ICG parameters")
    num_inference_steps: int = Field(10, ge=1, le=1000, description="DDIM steps per rollout")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta, or the flow SDE's noise level; > 0: stochastic")
    guidance_scale: float = Field(1.0, ge=1.0, description="CFG scale during rollouts")
    clip_range: float = Field(1e-4, gt=0.0, description="PPO ratio clip")
    adv_clip: float = Field(5.0, gt=0.0, description="advantage clip, in std units")
    timestep_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of recorded steps trained per sample")
    kl_coef: float = Field(0.0, ge=0.0, description="weight of the KL to the adapter-off reference policy")
    sde_window: tuple[int, int] | None = Field(None, description="policy gradient: [start, stop) noisy, trained steps")
    shared_start: bool = Field(False, description="policy gradient: a (user, item) group's samples share x_T")
    advantage_std: Literal["group", "batch"] = Field("group", description="policy gradient: std of the group/batch")
    backprop_steps: int = Field(1, ge=1, description="K of DRaFT-K: last steps carrying gradient")
    random_truncation: bool = Field(False, description="reward backprop: draw K uniformly in 1..backprop_steps")
    gradient_checkpointing: bool = Field(True, description="reward backprop: recompute UNet activations")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradient-norm clip of the ICG parameters")
    ppo_epochs: int = Field(1, ge=1, description="ddpo/grpo: optimizer steps per rollout batch (inner epochs)")
    nft_objective: Literal["nft", "awm"] = Field("nft", description="nft: DiffusionNFT's implicit positive/negative "
                                                 "policies; awm: advantage-weighted denoising loss (rl/nft.py)")
    nft_beta: float = Field(1.0, gt=0.0, description="nft: β of the implicit policies f± = f_old ± β (f_θ − f_old)")
    nft_clip: float = Field(1.0, gt=0.0, description="nft: advantage (std units) mapped to optimality 1 (−clip: 0)")
    nft_draws: int = Field(2, ge=1, description="nft: (t, ε) draws per cover per update")
    nft_shared_draws: bool = Field(True, description="nft: the samples of a group share their (t, ε) draws")
    nft_inner_steps: int = Field(1, ge=1, description="nft: optimizer steps per rollout batch, against the sampling "
                                 "policy's frozen outputs")
    nft_relabel_users: int = Field(0, ge=0, description="nft: other users each cover is trained under too")
    nft_critic_weight: float = Field(0.0, ge=0.0, description="nft: weight of the learned critic (rl/critic.py), 0 off")
    nft_critic_late: float = Field(0.5, gt=0.0, le=1.0, description="nft critic: last share of steps it noises to")
    nft_critic_rank: int = Field(16, ge=1, description="nft critic: rank of its user and item terms")
    nft_critic_warmup: int = Field(20, ge=0, description="nft critic: iterations it learns before it is climbed")
    nft_critic_steps: int = Field(0, ge=0, description="nft critic: climbed via one x̂₀ step (0) or the last K steps")
    nft_critic_user_one_step: bool = Field(False, description="nft critic: with nft_critic_steps K, its user term "
                                           "climbed on one-step x̂₀ covers (the looks), the rest through the K steps")
    nft_critic_user_weight: float = Field(1.0, ge=0.0, description="nft critic: the policy's weight on its user term")
    nft_critic_population_weight: float = Field(1.0, ge=0.0, description="nft critic: the policy's weight on its "
                                                "looks every user likes (quality; ideal_offset's shared look)")
    nft_critic_shown: int = Field(0, ge=0, description="nft critic: other users each cover is scored for")
    nft_critic_floor_weight: float = Field(0.0, ge=0.0, description="nft critic: weight of the floors (reward.floors) "
                                           "on its own model of each floored reward: a cover below pays")
    nft_critic_decay: float = Field(1e-4, ge=0.0, description="nft critic: its Adam weight decay (L2 on its terms)")
    nft_critic_user_form: Literal["bilinear", "ideal", "ideal_offset", "tower"] = Field(
        "bilinear", description="nft critic: its user term ⟨Pφ, Qu⟩ (a direction) or −½‖Pφ − Qu‖² (a look each "
        "user likes most; γ weighs it whole, or with ideal_offset only its part that differs from the user-zeroed), "
        "or tower: ⟨Hu, MLP(φ)⟩, the preference model's shape (γ weighs each user's offset from the mean user)")

    @model_validator(mode="after")
    def _window_inside_steps(self):
        if self.shared_start and self.name in ("backprop", "nft"):
            raise ValueError(f"algo.shared_start is for the policy-gradient algorithms (ddpo, grpo), not {self.name}")
        if self.nft_critic_steps and not (self.eta == 0 and self.nft_critic_steps <= self.num_inference_steps):
            raise ValueError(f"algo.nft_critic_steps={self.nft_critic_steps} needs algo.eta=0 (got {self.eta}: it "
                             f"replays the rollout's steps) and at most num_inference_steps={self.num_inference_steps}")
        for key in ("nft_relabel_users", "nft_critic_weight", "nft_critic_shown"):
            if getattr(self, key) and self.name != "nft":
                raise ValueError(f"algo.{key}={getattr(self, key)} is for algo.name=nft, not {self.name}")
        if (self.nft_critic_shown or self.nft_critic_steps or self.nft_critic_floor_weight) \
                and not self.nft_critic_weight:
            raise ValueError(f"algo.nft_critic_shown={self.nft_critic_shown}, nft_critic_steps={self.nft_critic_steps}"
                             f", nft_critic_floor_weight={self.nft_critic_floor_weight} shape the critic: they need "
                             "algo.nft_critic_weight > 0 (got 0)")
        if self.nft_critic_user_one_step and not self.nft_critic_steps:
            raise ValueError("algo.nft_critic_user_one_step=true splits the critic's climb between one x̂₀ step (its "
                             "user term) and the sampler's last K steps (the rest): it needs algo.nft_critic_steps "
                             "> 0 (got 0; with 0 every term is climbed on one step already)")
        if self.nft_relabel_users and not self.nft_shared_draws:
            raise ValueError("algo.nft_relabel_users needs algo.nft_shared_draws=true: a cover and its copy shown to "
                             "another user must meet the same (t, ε) draws (rl/relabel.py)")
        if self.sde_window is not None:
            if self.name in ("backprop", "nft"):
                raise ValueError(f"algo.sde_window is for the policy-gradient algorithms (ddpo, grpo), not "
                                 f"{self.name} (nft samples every step with algo.eta; 0 = deterministic)")
            start, stop = self.sde_window
            if not 0 <= start < stop <= self.num_inference_steps:
                raise ValueError(f"algo.sde_window {list(self.sde_window)} must satisfy 0 <= start < stop <= "
                                 f"algo.num_inference_steps ({self.num_inference_steps})")
        return self


class TrainConfig(Section):
    """The training run."""

    seed: int = Field(0, description="seed of the run")
    iterations: int = Field(10, ge=1, description="RL iterations")
    checkpoint_every: int = Field(5, ge=1, description="iterations between checkpoints")
    eval_every: int = Field(5, ge=1, description="iterations between evaluations on held-out pairs")
    eval_pairs: int = Field(64, ge=1, description="held-out (user, item) pairs of the test split scored at evaluation")
    final_eval_pairs: int | None = Field(None, ge=1, description="held-out pairs of the end-of-run evaluation "
                                         "(summary.json's numbers; a superset of eval_pairs' when larger); "
                                         "None = eval_pairs")
    pool_check_every: int = Field(10, ge=0, description="reward backprop: every N iterations the reward pools also "
                                  "score the covers the learner made (pool/<reward> in the log); 0: never")
    out: str = Field("runs/train", description="folder of the run's outputs (the CLI's --out overrides it)")
    storage_path: str | None = Field(None, description="where checkpoints go: a folder or a pyarrow filesystem URI "
                                     "(s3://..., gs://...); None = OUT/checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept; older ones are deleted")
    average_last: float = Field(0.0, ge=0.0, le=1.0, description="share of the last updates averaged (SWA) into the "
                                "evaluated and exported policy; 0 = the last iterate (rollouts sample live weights)")
    tracker: Literal["wandb", "none"] = Field("wandb", description="metrics tracker (wandb runs offline by default)")
    tracker_max_keys: int = Field(65536, gt=0, description="most (user, item) keys the advantage tracker keeps "
                                  "recent rewards of, for groups too small alone (on the driver, saved in every "
                                  "checkpoint); the least recently updated go first, and a resumed checkpoint's "
                                  "tracker is trimmed to it")


class Config(Section):
    """The whole configuration tree."""

    world: WorldConfig = Field(default_factory=WorldConfig)
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _floors_for_the_critic(self):
        if self.algo.nft_critic_floor_weight and not self.reward.floors:
            raise ValueError(f"algo.nft_critic_floor_weight={self.algo.nft_critic_floor_weight} prices the critic's "
                             "covers below reward.floors, but reward.floors is empty (e.g. reward.floors.clip_t=0.95)")
        return self

    @model_validator(mode="after")
    def _groups_for_grpo(self):
        if self.algo.name in ("grpo", "nft") and self.data.samples_per_pair < 2:
            raise ValueError(f"algo.name={self.algo.name} needs data.samples_per_pair >= 2 (a group to be relative "
                             f"to), got {self.data.samples_per_pair}")
        return self


def section_hash(*sections: BaseModel | dict) -> str:
    """A stable short hash of config sections or plain dicts of their fields (used to cache builds)."""
    payload = json.dumps([s.model_dump(mode="json") if isinstance(s, BaseModel) else s for s in sections],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Loading: file -> dict -> overrides -> validated Config
# ---------------------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (default `configs/coverworld.yaml`), apply `key.path=value` overrides, validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_tree(path)
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=str(path))


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = [describe_error(e) for e in err.errors()]
        raise ConfigError(f"invalid configuration ({source}):\n  " + "\n  ".join(lines)) from None


def describe_error(error: dict[str, Any]) -> str:
    """One line: key path, bad value, what is allowed (and the closest known key for a typo)."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc)
    if error["type"] == "extra_forbidden":
        known = list(fields_at(loc[:-1]))
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(loc[:-1] + close)!r}?" if close else ""
        return f"{path}: unknown key{hint} (allowed here: {', '.join(known)})"
    value = error.get("input")
    return f"{path}: got {value!r}; {error['msg'][0].lower()}{error['msg'][1:]}"


def fields_at(loc: list[str]) -> dict[str, Any]:
    """The fields of the config section at a key path (empty if the path is not a section)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return {}
        model = annotation
    return dict(model.model_fields)


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, description) for every leaf field: the generated configuration reference."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_fields(annotation, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((f"{prefix}{field.alias or name}", json.dumps(default), field.description or ""))
    return rows
