"""A learned reward critic for reward-only RL: a small differentiable model of what the reward pools said.

The pools' rewards may have no gradient (a CTR service, a judge, a rule). NFT alone turns them into one scalar
weight per cover, and at 16 covers per iteration each draw's own denoising error drowns the user's part of that
signal (benchmarks/RESULTS.md, issue 34: NFT gains over the untrained policy but not over the user-zeroed one). The
critic turns the same scores into a direction: it learns, from every scored cover, how the advantage varies with
the cover's looks for this user and this item, and the policy climbs it by backprop (ReFL-style, one denoising
step from a forward-noised cover to its predicted x₀, then the VAE decode).

    φ(x)   = the cover's frozen-CLIP image embedding, standardised like the catalogue's item features
    u      = the user's pooled history, in that same space (what ICG conditions on)
    i      = the item: its feature (as u's entries) and its title's CLIP text embedding (what relevance is scored on)
    f(x)   = ⟨q, φ⟩ + ⟨P φ, Q u⟩ + ⟨R φ, S i⟩ + ⟨m, [φ, φ] ⊙ i⟩
             looks everybody likes, looks this user likes, looks of the item (low rank, and dimension by dimension)
    fit    : Σ_groups Σ_k (f_k − mean_g f − A_k)²       group-centred regression on the advantages A (std units)
           + Σ_c (f(φ_c, u′, i_c) − f(φ_c, u_c, i_c) − D_c)²   with covers shown to other users (below)
    policy : L = −λ · mean f(φ(decode(x̂₀(x_t, c_θ))))    x_t: a cover noised forward at a late step
             or  −λ · mean f(φ(decode(x₀(x_K, c_θ))))   the sampler's last K steps from the rollout's x_K (DRaFT-K)
             or  the user term on the first, the rest on the second       (`algo.nft_critic_user_one_step`)

Which path (world seed 1 and 2, issue 34). One x̂₀ step from a late step can change a cover's colour and contrast
(the looks a user likes) but hardly its layout, which the early steps set: on world seed 2 the policy kept the
one-step covers' relevance while its sampled covers left their titles. Through the sampler's last 5 steps relevance
holds (CLIP-T 0.89-0.95 of the reference covers' on three worlds) but seed 1 stopped personalizing (×1.01).

Shown covers (`algo.nft_critic_shown`). Within a group the covers differ by noise, and most of what the advantages
say about them is what every user likes: on world seed 1 the fitted critic predicted the advantage at 0.84 but the
preference lift, the personal part, at 0.41. Each cover is also scored, by the same reward pools, for other users of
the batch: D_c, how much more user u′ likes it than its own user u does, is the personal part alone (the cover,
its item and every user-independent reward are the same), and it trains the user term ⟨P φ, Q u⟩ directly. The
policy may climb that term γ times over (`algo.nft_critic_user_weight`, as the backprop recipe weighs the
preference lift): through Ray on world seed 0, γ = 1 gave ×1.02 over the user-zeroed policy and γ = 2 ×1.13–1.16.

An ideal look (`algo.nft_critic_user_form: ideal`): the user term −½‖P φ − Q u‖² in place of ⟨P φ, Q u⟩. Taste is
bounded (CoverWorld's users like a look most and fewer clicks past it; a preference model's image tower can say
so): a bilinear term is a direction, and a policy that climbs it γ times over pushes the looks past the user's,
until one user's covers share a look whatever their item (world seed 2: CLIP-T fell to 0.49 of the reference
covers'). The quadratic's pull fades as a cover reaches the user's look; γ scales the whole term (how hard it
pulls, not where to). It also holds a look every user shares (−½‖P φ‖², what the user-zeroed policy is pulled to);
`ideal_offset` leaves that part at weight 1 and weighs only the rest, each user's offset from it, γ times.

A preference model's shape (`tower`, rl/critic_tower.py): ⟨H(u − ū), MLP(φ)⟩ as the user term, ⟨b + Hū, MLP(φ)⟩
among the looks everybody likes: its CTR part's gradient meets the exact rewards' at a cosine of 0.41, against
0.16 for ideal_offset, on world seed 0's covers (benchmarks/critic_direction.py).

The last term is there for relevance: CLIP-T-like rewards are an agreement between the cover's embedding and the
title's, a full-rank bilinear form that the rank-16 term cannot hold (on world seed 1's untrained covers it raised
the held-out correlation from 0.827 to 0.835, and from 0.878 to 0.903 at weight decay 0.1: benchmarks/critic_fit.py).

Centring within the group matches what the advantages are: the samples of a (user, item) group share u and i, so
only the covers' looks separate them, and the critic is never asked to predict a user's or an item's base rate. The
fit sees a replay of recent batches (the policy moves slowly; the scores of its recent covers still describe the
rewards); before a batch enters it, the critic's correlation with that batch's advantages is measured (held out).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.rl.critic_tower import TOWER_WIDTH, LookTower
from icg_rl.rl.floor_model import FlooredRewardModel


class CoverCritic(nn.Module):
    def __init__(self, embedder: CLIPEmbedder, catalogue: torch.Tensor, rank: int = 16, lr: float = 3e-3,
                 replay_rows: int = 1024, fit_steps: int = 20, seed: int = 0, user_form: str = "bilinear",
                 weight_decay: float = 1e-4, floors: dict[str, float] | None = None):
        super().__init__()
        self.embedder = embedder.requires_grad_(False)
        dim = catalogue.shape[1]
        self.register_buffer("mean", catalogue.mean(0), persistent=False)
        self.register_buffer("std", catalogue.std(0).clamp_min(1e-3), persistent=False)
        generator = torch.Generator().manual_seed(seed)

        def projection() -> nn.Parameter:
            return nn.Parameter(torch.randn(rank, dim, generator=generator) / dim ** 0.5)

        if user_form not in USER_FORMS:
            raise ValueError(f"algo.nft_critic_user_form: one of {USER_FORMS}, got {user_form!r}")
        self.ideal, self.offset_only = user_form.startswith("ideal"), user_form == "ideal_offset"
        self.quality = nn.Parameter(torch.zeros(dim))
        self.image_user, self.user = projection(), projection()  # the bilinear and ideal forms' P and Q
        if self.ideal:  # a random quadratic starts ~rank times larger than the bilinear term: start it near flat
            with torch.no_grad():
                self.image_user.mul_(0.25), self.user.mul_(0.25)
        self.tower = LookTower(dim, TOWER_WIDTH, generator) if user_form == "tower" else None
        self.register_buffer("user_mean", torch.zeros(dim))  # the replay's mean user (the tower's offsets)
        self.image_item = projection()
        self.item = nn.Parameter(torch.randn(rank, 2 * dim, generator=generator) / (2 * dim) ** 0.5)
        self.match = nn.Parameter(torch.zeros(2 * dim))  # φ's agreement with i's halves, dimension by dimension
        self.floors = dict(sorted((floors or {}).items()))  # floored reward -> its factor (rl/floor_model.py)
        self.floor_models = nn.ModuleDict({name: FlooredRewardModel(dim, rank, generator) for name in self.floors})
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        self.replay_rows, self.fit_steps = replay_rows, fit_steps
        self.replay: list[tuple[torch.Tensor, ...]] = []
        self.next_group = 0

    def parameters(self, recurse: bool = True):  # the frozen CLIP is not the critic's to train
        return (p for name, p in self.named_parameters(recurse=recurse) if not name.startswith("embedder."))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, 3, H, W] in [0, 1] -> standardised CLIP embeddings [B, D] (differentiable)."""
        embeds = F.normalize(self.embedder.image_embeds(images), dim=-1)
        return (embeds - self.mean) / self.std

    def forward(self, image: torch.Tensor, user: torch.Tensor, item: torch.Tensor,
                personal_weight: float = 1.0) -> torch.Tensor:
        """φ [B, D], u [B, D], i [B, 2D] -> predicted advantage [B] (up to a per-group constant). The policy may
        climb the user term `personal_weight` times over (`algo.nft_critic_user_weight`; the fit never does)."""
        population, relevant, personal = self.terms(image, user, item)
        return population + relevant + personal_weight * personal

    def terms(self, image: torch.Tensor, user: torch.Tensor, item: torch.Tensor,
              looks: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(looks every user likes, the item's, the user's own) [B] each: the policy weighs the first and last.
        `looks`: the tower's MLP(φ), when the caller already has it (`LookTower.looks`)."""
        shared, personal = self.user_terms(image, user, looks)
        relevant = ((image @ self.image_item.T) * (item @ self.item.T)).sum(-1)
        relevant = relevant + (image.repeat(1, 2) * item) @ self.match
        return image @ self.quality + shared, relevant, personal

    def user_terms(self, image: torch.Tensor, user: torch.Tensor, looks: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the user term's part every user shares (γ leaves it alone), the user's own part) [B] each."""
        if self.tower is not None:  # the preference model's own shape: looks through a small MLP, a user head
            return self.tower(image, user, self.user_mean, looks)
        if not self.ideal:
            return image.new_zeros(len(image)), ((image @ self.image_user.T) * (user @ self.user.T)).sum(-1)
        look = image @ self.image_user.T  # a look each user likes most: the pull toward it fades as a cover reaches it
        personal = -0.5 * (look - user @ self.user.T).pow(2).sum(-1)
        if not self.offset_only:
            return image.new_zeros(len(image)), personal
        shared = -0.5 * look.pow(2).sum(-1)  # γ weighs how far each user's look is from everybody's, not the pull
        return shared, personal - shared

    def state_bytes(self) -> bytes:
        """Its weights, optimizer moments and replay (a resumed run fits on the same recent covers)."""
        import io

        own = {k: v for k, v in self.state_dict().items() if not k.startswith("embedder.")}
        buffer = io.BytesIO()
        torch.save({"model": own, "optimizer": self.optimizer.state_dict(), "replay": self.replay,
                    "next_group": self.next_group}, buffer)
        return buffer.getvalue()

    def load_state_bytes(self, payload: bytes) -> None:
        import io

        state = torch.load(io.BytesIO(payload), map_location=self.mean.device, weights_only=True)
        self.load_state_dict(state["model"], strict=False)  # the frozen CLIP is the run's own, not saved
        self.optimizer.load_state_dict(state["optimizer"])
        no_pairs = (torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))  # a replay saved before shown covers
        rows = [tuple(row) + (no_pairs if len(row) == 5 else ()) for row in state["replay"]]
        self.replay = [row if len(row) == 8 else row + (self.no_floored(len(row[0]), row[0].device),) for row in rows]
        self.next_group = state["next_group"]

    def no_floored(self, rows: int, device) -> torch.Tensor:
        return torch.full((rows, 2 * len(self.floors)), float("nan"), device=device)

    def floored_columns(self, floored: dict | None, rows: int, device) -> torch.Tensor:
        """{reward: (scores [B], reference covers' scores [B])} -> [B, 2F]: per floored reward its scores, then its
        floor (factor × the reference's; NaN where unknown)."""
        columns = self.no_floored(rows, device)
        for k, (name, factor) in enumerate(self.floors.items()):
            if floored is not None and name in floored:
                scores, reference = floored[name]
                columns[:, 2 * k] = torch.as_tensor(np.asarray(scores), dtype=torch.float32, device=device)
                columns[:, 2 * k + 1] = factor * torch.as_tensor(np.asarray(reference), dtype=torch.float32,
                                                                 device=device)
        return columns

    def floor_shortfall(self, image: torch.Tensor, item: torch.Tensor, floors: torch.Tensor) -> torch.Tensor:
        """Σ over floored rewards of relu(floor − r̂(φ, i)) / σ per cover [B]; `floors` [B, F]."""
        total = image.new_zeros(len(image))
        for k, model in enumerate(self.floor_models.values()):
            total = total + model.shortfall(image, item, floors[:, k].to(image))
        return total

    def observe(self, image, user, item, group_key: np.ndarray, advantages: torch.Tensor,
                shown: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                floored: dict | None = None) -> dict[str, float]:
        """Add a scored batch (features detached) to the replay and fit on the replay -> metrics. `shown`: (own
        rows, partner rows, differences) [M] each: cover `own` scored for `partner`'s user, how much more (in the
        advantages' units) that user likes it than its own does (`shown_differences`): the user term's own signal.
        `floored`: {reward: (scores, reference covers' scores)} of the floored rewards (`floored_columns`)."""
        _, groups = np.unique(np.asarray(group_key).astype(str), return_inverse=True)
        groups = torch.as_tensor(groups + self.next_group)
        self.next_group = int(groups.max()) + 1
        pairs = torch.zeros(0, 2, dtype=torch.long, device=image.device), torch.zeros(0, device=image.device)
        if shown is not None:
            pairs = (torch.as_tensor(np.stack(shown[:2], 1), dtype=torch.long, device=image.device),
                     torch.as_tensor(shown[2], device=image.device).float())
        row = (image.detach(), user.detach(), item.detach(), groups, advantages.detach().float(), *pairs,
               self.floored_columns(floored, len(image), image.device))
        metrics = self.held_out(row) if self.replay else {}
        self.replay.append(row)
        while sum(len(r[0]) for r in self.replay) > self.replay_rows:
            self.replay.pop(0)
        image, user, item, groups, target, pairs, difference, floored = joined(self.replay)
        self.user_mean.copy_(user.mean(0))
        _, groups = torch.unique(groups, return_inverse=True)
        with torch.enable_grad():
            for _ in range(self.fit_steps):
                looks = self.tower.looks(image) if self.tower is not None else None
                population, relevant, personal = self.terms(image, user, item, looks)
                loss = (centred(population + relevant + personal, groups) - target).pow(2).mean()
                if len(difference):
                    predicted = self.difference(image, user, pairs, personal, looks)
                    loss = loss + (predicted - difference).pow(2).mean()
                for k, model in enumerate(self.floor_models.values()):
                    loss = loss + model.fit_loss(image, item, floored[:, 2 * k])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        return metrics | {"critic/fit_mse": float(loss.detach()), "critic/replay_rows": float(len(target))}

    def difference(self, image, user, pairs: torch.Tensor, personal: torch.Tensor | None = None,
                   looks: torch.Tensor | None = None) -> torch.Tensor:
        """f(φ_c, u_partner, i_c) − f(φ_c, u_c, i_c) for pairs [M, 2] of rows (c, partner): only the user's own term
        moves (the shared part depends on φ alone). `personal` [N]: every row's own user term, when known."""
        own, partner = pairs[:, 0], pairs[:, 1]
        mine = personal[own] if personal is not None else self.user_terms(image[own], user[own])[1]
        return self.user_terms(image[own], user[partner], None if looks is None else looks[own])[1] - mine

    @torch.no_grad()
    def held_out(self, row) -> dict[str, float]:
        """The critic's Pearson correlation with a batch's advantages (group-centred) and, with shown covers, with
        their differences, before fitting on it."""
        image, user, item, groups, advantages, pairs, difference, floored = row
        metrics = {"critic/held_out_corr": pearson(centred(self(image, user, item), groups), advantages)}
        for k, (name, model) in enumerate(self.floor_models.items()):
            known = torch.isfinite(floored[:, 2 * k])
            if int(known.sum()) > 1:
                metrics[f"critic/held_out_{name}_corr"] = pearson(model(image, item)[known], floored[known, 2 * k])
        if len(difference):
            metrics["critic/held_out_user_corr"] = pearson(self.difference(image, user, pairs), difference)
        return metrics


USER_FORMS = ("bilinear", "ideal", "ideal_offset", "tower")


def joined(replay: list[tuple]) -> tuple[torch.Tensor, ...]:
    """The replay's batches as one: rows concatenated, each batch's pair indices moved to its rows' place."""
    offsets = np.cumsum([0] + [len(r[0]) for r in replay[:-1]])
    parts = [(*r[:5], r[5] + int(offset), *r[6:]) for r, offset in zip(replay, offsets)]
    return tuple(torch.cat(column) for column in zip(*parts))


def centred(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """values [N] minus the mean of their group (groups [N] in 0..G−1)."""
    count = torch.bincount(groups).clamp_min(1).to(values.dtype)
    sums = torch.zeros(len(count), dtype=values.dtype, device=values.device).index_add_(0, groups, values)
    return values - (sums / count)[groups]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Pearson correlation of two [N] vectors (0 where either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = a.norm() * b.norm()
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


@torch.no_grad()
def cover_features(pipe, samples, critic: CoverCritic) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the critic reads of a scored batch: (φ [B, D] of its uint8 covers, u [B, D], i [B, 2D])."""
    from icg_rl.models.images import to_float_images

    image = critic.image_features(to_float_images(samples.images, "critic").to(pipe.device))
    return (image, *condition_vectors(pipe, samples, critic))


def condition_vectors(pipe, samples, critic: CoverCritic) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [B, D], i [B, 2D]): each row's pooled history; its item's feature, standardised like the history, beside
    its title's normalised CLIP text embedding (× √D: entries of the history's scale)."""
    history = samples.condition["history"].to(pipe.device, torch.float32)  # (B, L, D), standardised entries
    mask = samples.condition["history_mask"].to(pipe.device, torch.float32)  # (B, L)
    user = (history * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    table = pipe.icg.feature_table()
    item = torch.stack([table[str(i)] for i in samples.extra["item_id"]]).to(pipe.device, torch.float32)
    with torch.no_grad():
        title = F.normalize(critic.embedder.text_embeds([str(t) for t in samples.extra["title"]]), dim=-1)
    return user, torch.cat([item, title.to(item) * item.shape[1] ** 0.5], dim=1)


def shown_differences(trajectory, scores: dict[str, torch.Tensor], mixer, reference: dict, score_shown, shifts: int,
                      seed: int, iteration: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Each cover scored again for `shifts` other users of the batch (rl/relabel.py's partners) by the
    user-dependent rewards -> (own rows, partner rows, differences) [M]: the mix with the partner's scores minus
    the mix with its own user's, in the advantages' units (over the batch's std of the mixed reward, the divisor of
    `advantage_std: batch`). None when no weighted reward depends on the user, or the batch has one group.
    `score_shown(images, inputs, names)` -> {name: [N]}: the reward pools, or the in-process reward models."""
    from icg_rl.rewards.registry import USER_DEPENDENT
    from icg_rl.rl.relabel import partner_rows, relabel_inputs

    personal = sorted(name for name in mixer.mixed if name in USER_DEPENDENT)
    if not personal or shifts < 1:
        return None
    own, _ = mixer(scores, update=False, reference_scores=reference)  # the statistics this batch's mix used
    scale = float(own.std(unbiased=False)) + 1e-6
    parts = []
    for shift in range(1, shifts + 1):
        partner = partner_rows(trajectory.group_key, seed, iteration, shift)
        if partner is None:
            return None
        shown = score_shown(trajectory.images, relabel_inputs(trajectory.extra, partner), personal)
        total, _ = mixer(scores | {n: torch.as_tensor(np.asarray(v)) for n, v in shown.items()}, update=False,
                         reference_scores=reference)
        parts.append((np.arange(len(partner)), partner, ((total - own) / scale).numpy().astype(np.float32)))
    return tuple(np.concatenate(column) for column in zip(*parts))


def build_critic(cfg, pipe) -> CoverCritic | None:
    """The run's critic (`algo.nft_critic_weight` > 0), on the frozen CLIP the catalogue's features came from."""
    from icg_rl.paths import clip_folder

    algo = cfg.algo
    if algo.name != "nft" or algo.nft_critic_weight <= 0:
        return None
    embedder = CLIPEmbedder.from_pretrained(clip_folder(cfg.reward, cfg.world.dir))
    catalogue = F.normalize(pipe.icg.item_features.detach().float().cpu(), dim=-1)
    floors = cfg.reward.floors if algo.nft_critic_floor_weight > 0 else {}
    return CoverCritic(embedder, catalogue, algo.nft_critic_rank, seed=cfg.train.seed,
                       user_form=algo.nft_critic_user_form, weight_decay=algo.nft_critic_decay,
                       floors=floors).to(pipe.device)


def floored_scores(scores: dict, reference: dict, algo) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{floored reward: (the covers' scores [B], their reference covers' [B])} for the critic's floor models, or None
    when `algo.nft_critic_floor_weight` is 0 (the learner then ships nothing more)."""
    if algo.nft_critic_floor_weight <= 0:
        return None
    return {name: (np.asarray(scores[name], np.float32), np.asarray(reference[name], np.float32))
            for name in reference}
