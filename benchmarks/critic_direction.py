"""Does the critic's climb point where the rewards do? (rl/critic.py, CoverWorld's default rewards)

    python benchmarks/critic_direction.py --config configs/coverworld_nft.yaml --batches 120 [KEY=VALUE ...]
    python benchmarks/critic_direction.py --checkpoint runs/nft/checkpoint ...    (a trained policy's covers)

The policy climbs the learned critic, not the rewards; what moves a cover is the critic's gradient. On CoverWorld
every mixed reward is a function of the cover's CLIP image embedding e (the preference model and its lift read it,
CLIP-T is its cosine with the title's), so the exact gradient of the mix in e is known here, where a run never
needs it. Covers come from the untrained policy, or the one `--checkpoint` names (batches of the run's shape,
scored by the run's rewards and mixer); each critic form is fitted as a run fits it (replay, `fit_steps` per
batch, covers shown to 2 other users) on the first three quarters and then, per held-out cover, its gradient
in the unit-norm embedding ê is compared with the exact one (both projected on the sphere's tangent plane,
where ê can move):

- CTR part: the critic's looks every user likes plus its user term, against w_pref·pref/σ + w_lift·lift/σ;
- relevance part: its item terms, against the CLIP-T floor's −w·shortfall/σ (0 on covers above the floor);
- user term alone against the lift's; and the whole critic against the whole mix;
- the CTR part against CLIP-T's own gradient (the title's direction): negative where climbing the critic's CTR
  part lowers relevance; the exact CTR gradient's value is printed beside it.

Prints the mean cosine per form (random directions in this space give ~0).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from icg_rl.config import load_config
from icg_rl.models.images import to_float_images
from icg_rl.rl.backprop import reference_scores
from icg_rl.rl.critic import CoverCritic, build_critic, cover_features, shown_differences
from icg_rl.rl.local import LocalTrainer
from icg_rl.rl.sampling import rollout_window, sample_trajectory
from icg_rl.rl.seeding import row_generators

FORMS = {"bilinear ⟨Pφ, Qu⟩": "bilinear", "ideal look, offsets weighed (ideal_offset)": "ideal_offset",
         "the preference model's shape, ⟨Hu, MLP(φ)⟩ (tower)": "tower"}


def collect(trainer: LocalTrainer, critic: CoverCritic, batches: int) -> list[dict]:
    """`batches` scored batches of the policy's covers, with what the critic reads and the exact gradients need."""
    algo, rows = trainer.cfg.algo, []
    for it in range(batches):
        batch = next(trainer._batches)
        noise = row_generators(1000 + it, 0, range(len(batch["group_key"])))
        with torch.no_grad():
            trajectory, _ = sample_trajectory(trainer.pipe, batch, algo.num_inference_steps, algo.eta,
                                              algo.guidance_scale, noise, sde_window=rollout_window(algo),
                                              keep_steps=0)
            embeds = critic.embedder.image_embeds(to_float_images(trajectory.images, "covers"))
        scores, advantages, _ = trainer.scored(trajectory)
        image, user, item = cover_features(trainer.pipe, trajectory, critic)
        reference = reference_scores(trainer.rewards, trainer.mixer.floors, trajectory.extra)
        shown = shown_differences(trajectory, scores, trainer.mixer, reference, trainer.score_for, 2, 1000, it)
        rows.append(dict(image=image, user=user, item=item, keys=trajectory.group_key, shown=shown,
                         advantages=torch.from_numpy(advantages), extra=trajectory.extra, reference=reference,
                         unit=F.normalize(embeds, dim=-1)))
    return rows


def exact_gradients(trainer: LocalTrainer, row: dict) -> dict[str, torch.Tensor]:
    """d(mix part)/dê per cover [B, D]: the CTR part, the lift alone and the relevance floor, at the mixer's stats."""
    mixer, weights, stats = trainer.mixer, trainer.mixer.weights, trainer.mixer.stats
    preference, lift_reward = trainer.rewards["preference"], trainer.rewards["preference_lift"]
    unit = row["unit"].clone().requires_grad_(True)
    user_index, history_index, _, item_index = preference._inputs(unit.new_zeros(len(unit), 3, 4, 4), row["extra"])
    click = torch.sigmoid(preference.model(user_index, history_index, unit, item_index))
    user, image = lift_reward.model.towers(user_index, history_index, unit, item_index)
    head = lift_reward.model.user_head(user)
    _, user_of_row = torch.unique(torch.cat([user_index[:, None], history_index], 1), dim=0, return_inverse=True)
    users = int(user_of_row.max()) + 1
    per_user = head.new_zeros(users, head.shape[1]).index_add_(0, user_of_row, head)
    audience = (per_user / torch.bincount(user_of_row, minlength=users)[:, None]).mean(0)
    lift = ((head - audience) * image).sum(-1)  # PreferenceLiftReward's score, on ê
    title = F.normalize(trainer.rewards["clip_t"].embedder.text_embeds([str(t) for t in row["extra"]["title"]]), dim=-1)
    floor = mixer.floors["clip_t"] * row["reference"]["clip_t"].float()
    shortfall = torch.nan_to_num(torch.relu(floor - (unit * title).sum(-1)), nan=0.0)
    parts = {"preference": weights["preference"] * click / stats["preference"].std,
             "lift": weights["preference_lift"] * lift / stats["preference_lift"].std,
             "relevance": -weights["clip_t"] * shortfall / stats["clip_t"].std}
    grads = {name: torch.autograd.grad(part.sum(), unit, retain_graph=True)[0] for name, part in parts.items()}
    return {"ctr": grads["preference"] + grads["lift"], "lift": grads["lift"], "relevance": grads["relevance"],
            "title": title}  # d CLIP-T / dê: the direction that raises relevance


def critic_gradients(critic: CoverCritic, row: dict) -> dict[str, torch.Tensor]:
    """d(critic part)/dê per cover, through the critic's standardisation φ = (ê − mean) / std."""
    phi = ((row["unit"] - critic.mean) / critic.std).requires_grad_(True)
    population, relevant, personal = critic.terms(phi, row["user"], row["item"])
    parts = {"ctr": population + personal, "lift": personal, "relevance": relevant}
    return {name: torch.autograd.grad(part.sum(), phi, retain_graph=True)[0] / critic.std
            for name, part in parts.items()}


def tangent_cosine(a: torch.Tensor, b: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Per-row cosine of a and b projected on the tangent plane of the unit sphere at `unit` (0 where one is 0)."""
    a, b = (v - (v * unit).sum(-1, keepdim=True) * unit for v in (a, b))
    return torch.nan_to_num(F.cosine_similarity(a, b, dim=-1, eps=1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/coverworld_nft.yaml")
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--checkpoint", help="a training run's OUT/checkpoint: measure on its policy's covers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    trainer = LocalTrainer(cfg)
    if args.checkpoint:
        trainer.pipe.load_icg_weights(args.checkpoint)
    probe = build_critic(cfg, trainer.pipe)
    if probe is None:
        raise SystemExit(f"{args.config}: algo.nft_critic_weight is 0, so there is no critic to measure")
    start = time.perf_counter()
    rows = collect(trainer, probe, args.batches)
    split = len(rows) * 3 // 4
    exact = [exact_gradients(trainer, row) for row in rows[split:]]
    print(f"collected {args.batches} batches of {len(rows[0]['keys'])} covers in {time.perf_counter() - start:.0f} s;"
          f" fitted on {split}, measured on {len(rows) - split}")
    title_ctr = float(torch.cat([tangent_cosine(t["ctr"], t["title"], row["unit"])
                                 for row, t in zip(rows[split:], exact)]).mean())
    print(f"exact CTR gradient against the title's direction: {title_ctr:.3f}")
    print("| critic user term | CTR part | user term vs lift | relevance part | whole | CTR part vs title |\n"
          "|---|---|---|---|---|---|")
    for label, form in FORMS.items():
        critic = CoverCritic(probe.embedder, torch.zeros(2, probe.mean.shape[0]), cfg.algo.nft_critic_rank,
                             seed=cfg.train.seed, user_form=form, weight_decay=cfg.algo.nft_critic_decay)
        critic.mean.copy_(probe.mean), critic.std.copy_(probe.std)
        for row in rows[:split]:
            critic.observe(row["image"], row["user"], row["item"], row["keys"], row["advantages"], row["shown"])
        cosines = {name: [] for name in ("ctr", "lift", "relevance", "whole", "title")}
        for row, truth in zip(rows[split:], exact):
            learned = critic_gradients(critic, row)
            for name in ("ctr", "lift", "relevance"):
                cosines[name].append(tangent_cosine(learned[name], truth[name], row["unit"]))
            cosines["whole"].append(tangent_cosine(learned["ctr"] + learned["relevance"],
                                                   truth["ctr"] + truth["relevance"], row["unit"]))
            cosines["title"].append(tangent_cosine(learned["ctr"], truth["title"], row["unit"]))
        mean = {name: float(torch.cat(values).mean()) for name, values in cosines.items()}
        relevant = torch.cat([t["relevance"].norm(dim=-1) > 0 for t in exact])  # covers below their floor
        below = float(torch.cat(cosines["relevance"])[relevant].mean())
        print(f"| {label} | {mean['ctr']:.3f} | {mean['lift']:.3f} | {below:.3f} (covers below the floor) "
              f"| {mean['whole']:.3f} | {mean['title']:.3f} |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
