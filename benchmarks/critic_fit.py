"""How well the learned critic (rl/critic.py) generalises: fit it on scored covers, test it on fresh ones.

    python benchmarks/critic_fit.py --config configs/coverworld_nft.yaml --batches 160 [KEY=VALUE ...]

Covers come from the untrained policy (the run's sampler, batches of the run's shape); the reward pools' scores go
through the run's mixer and group advantages, exactly what the learner fits. Each variant is fitted as a run does
(replay of the last rows, `fit_steps` Adam steps per batch) on the first batches and is scored on the last quarter,
held out: the correlation of its group-centred prediction with the advantage, and with the personal reward alone
(`preference_lift`, group-centred) — the part that makes the policy personal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from icg_rl.config import load_config
from icg_rl.rl.backprop import reference_scores
from icg_rl.rl.critic import CoverCritic, build_critic, centred, cover_features, pearson, shown_differences
from icg_rl.rl.local import LocalTrainer
from icg_rl.rl.sampling import rollout_window, sample_trajectory
from icg_rl.rl.seeding import row_generators

VARIANTS = {  # name: (rank, replay rows, fit steps, weight decay, target, with the covers shown to other users,
    #                 the user term's form)
    "advantages only (rank 16, weight decay 1e-4)": (16, 1024, 20, 1e-4, "advantage", False, "bilinear"),
    "+ each cover scored for 2 other users (algo.nft_critic_shown=2)": (16, 1024, 20, 1e-4, "advantage", True,
                                                                         "bilinear"),
    "+ shown, the user term an ideal look (algo.nft_critic_user_form=ideal)": (16, 1024, 20, 1e-4, "advantage", True,
                                                                                "ideal"),
    "+ shown, ideal look, weight decay 0.1": (16, 1024, 20, 0.1, "advantage", True, "ideal"),
    "weight decay 0.1": (16, 1024, 20, 0.1, "advantage", False, "bilinear"),
    "rank 4": (4, 1024, 20, 1e-4, "advantage", False, "bilinear"),
    "40 fit steps": (16, 1024, 40, 1e-4, "advantage", False, "bilinear"),
    "fitted on the lift alone (a bound: how well it can know the personal part)": (16, 1024, 20, 1e-4, "lift", False,
                                                                                    "bilinear"),
}


def collect(trainer: LocalTrainer, batches: int):
    """`batches` scored batches of the untrained policy -> per batch (φ, u, i, group keys, advantages, lift, groups,
    the covers' differences when shown to 2 other users: `shown_differences`)."""
    algo, rows = trainer.cfg.algo, []
    probe = build_critic(trainer.cfg, trainer.pipe)
    for it in range(batches):
        batch = next(trainer._batches)
        noise = row_generators(1000 + it, 0, range(len(batch["group_key"])))
        with torch.no_grad():
            trajectory, _ = sample_trajectory(trainer.pipe, batch, algo.num_inference_steps, algo.eta,
                                              algo.guidance_scale, noise,
                                              sde_window=rollout_window(algo), keep_steps=0)
        scores, advantages, _ = trainer.scored(trajectory)
        image, user, item = cover_features(trainer.pipe, trajectory, probe)
        _, groups = np.unique(trajectory.group_key.astype(str), return_inverse=True)
        groups = torch.as_tensor(groups)
        lift = scores.get("preference_lift", torch.zeros(len(groups))).float()
        shown = shown_differences(trajectory, scores, trainer.mixer, reference_scores(
            trainer.rewards, trainer.mixer.floors, trajectory.extra), trainer.score_for, 2, 1000, it)
        rows.append((image, user, item, trajectory.group_key, torch.from_numpy(advantages),
                     centred(lift, groups), groups, shown))
    return probe, rows


def evaluate(probe: CoverCritic, rows, rank, replay, steps, decay, target, with_shown, user_form,
             seed=0) -> dict[str, float]:
    critic = CoverCritic(probe.embedder, torch.zeros(2, probe.mean.shape[0]), rank, replay_rows=replay,
                         fit_steps=steps, seed=seed, user_form=user_form)
    critic.mean.copy_(probe.mean)
    critic.std.copy_(probe.std)
    for group in critic.optimizer.param_groups:
        group["weight_decay"] = decay
    split = len(rows) * 3 // 4
    start = time.perf_counter()
    scale = float(torch.cat([r[5] for r in rows[:split]]).std())
    for image, user, item, key, advantages, lift, _, shown in rows[:split]:
        critic.observe(image, user, item, key, advantages if target == "advantage" else lift / scale,
                       shown if with_shown else None)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = torch.cat([centred(critic(r[0], r[1], r[2]), r[6]) for r in rows[split:]])
    advantages, lift = torch.cat([r[4] for r in rows[split:]]), torch.cat([r[5] for r in rows[split:]])
    return {"corr(advantage)": pearson(predicted, advantages), "corr(lift)": pearson(predicted, lift),
            "fit s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/coverworld_nft.yaml")
    parser.add_argument("--batches", type=int, default=160)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    trainer = LocalTrainer(cfg)
    start = time.perf_counter()
    probe, rows = collect(trainer, args.batches)
    print(f"collected {args.batches} batches of {len(rows[0][0])} covers in {time.perf_counter() - start:.0f} s")
    advantages, lift = torch.cat([r[4] for r in rows]), torch.cat([r[5] for r in rows])
    print(f"corr(advantage, lift) over all rows: {pearson(advantages, lift):.3f}")
    print("| critic | held-out corr(advantage) | corr(lift) | fit s |\n|---|---|---|---|")
    for name, variant in VARIANTS.items():
        result = evaluate(probe, rows, *variant)
        print(f"| {name} | {result['corr(advantage)']:.3f} | {result['corr(lift)']:.3f} | {result['fit s']:.1f} |")


if __name__ == "__main__":
    main()
