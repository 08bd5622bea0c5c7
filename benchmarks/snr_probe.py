"""How much of a batch's gradient is signal: NFT (and AWM) against GRPO on the same covers.

    python benchmarks/snr_probe.py [--config configs/coverworld.yaml] [--batches 16] [--gate 0.5] [KEY=VALUE ...]

At the policy's initial weights (the adapter gate set to `--gate`, so every ICG parameter has a gradient), each of
`--batches` independent batches of groups is sampled once (GRPO's stochastic sampler: `algo.eta`, `algo.sde_window`),
scored by the run's rewards and turned into group advantages; then the same covers give a GRPO gradient
(`ddpo_gradients`, score function over the window's steps) and an NFT gradient (`nft_gradients` on their clean
latents). The table is the mean cosine between the gradients of two different batches (0: pure noise; a gradient
that points the same way whatever the batch has found the direction), and the mean norm. The same for the gate
alone, the one scalar that opens the ICG path, and for the user path (the user encoder and the FiLM refiner: the
parameters only personalization moves). `nft+shown` adds each cover shown to another user of the batch
(rl/relabel.py); `pairs` is those pairs alone. Reward backprop's gradient on the same batch is the reference:
`cos(bp)` is the cosine between an objective's mean gradient and backprop's mean gradient on the user path (does it
point where the reward's own gradient points?). `critic` is the learned critic's term (rl/critic.py, the gradient
`algo.nft_critic_weight` adds to NFT's), fitted first on `--critic-warmup` batches of the same policy's covers.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from icg_rl.config import load_config
from icg_rl.rl.backprop import backprop_loss, reference_scores
from icg_rl.rl.critic import build_critic, condition_vectors, cover_features, shown_differences
from icg_rl.rl.critic_climb import critic_gradients
from icg_rl.rl.ddpo import ddpo_gradients
from icg_rl.rl.local import LocalTrainer
from icg_rl.rl.nft import draw_noising, nft_gradients, optimality
from icg_rl.rl.relabel import shown_rows
from icg_rl.rl.sampling import sample_trajectory
from icg_rl.rl.seeding import row_generators, update_generator
from icg_rl.rl.trajectory import Trajectory


def flat(grads: list[torch.Tensor | None], params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def mean_cosine(vectors: list[torch.Tensor]) -> float:
    pairs = itertools.combinations(range(len(vectors)), 2)
    return float(np.mean([torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0) for i, j in pairs]))


def scored_batch(trainer: LocalTrainer, iteration: int):
    """A fresh batch sampled with the run's sampler -> (batch, trajectory, scores, advantages)."""
    cfg, algo = trainer.cfg, trainer.cfg.algo
    batch = next(trainer._batches)
    noise = row_generators(cfg.train.seed, iteration, range(len(batch["group_key"])))
    trajectory, _ = sample_trajectory(trainer.pipe, batch, algo.num_inference_steps, algo.eta, algo.guidance_scale,
                                      noise, sde_window=algo.sde_window)
    scores, advantages, _ = trainer.scored(trajectory)
    return batch, trajectory, scores, advantages


def fitted_critics(trainer: LocalTrainer, batches: int) -> dict:
    """The run's critic (rl/critic.py), fitted on `batches` fresh batches of the policy's covers -> {"critic": on
    the advantages, "critic+shown": on them and on each cover scored for 2 other users (`algo.nft_critic_shown`)}."""
    cfg = trainer.cfg
    nft = cfg.model_copy(update={"algo": cfg.algo.model_copy(update={"name": "nft", "nft_critic_weight": 1.0})})
    critics = {"critic": build_critic(nft, trainer.pipe), "critic+shown": build_critic(nft, trainer.pipe)}
    for b in range(batches):
        _, trajectory, scores, advantages = scored_batch(trainer, 30_000 + b)
        shown = shown_differences(trajectory, scores, trainer.mixer, reference_scores(
            trainer.rewards, trainer.mixer.floors, trajectory.extra), trainer.score_for, 2, cfg.train.seed, b)
        for name, critic in critics.items():
            metrics = critic.observe(*cover_features(trainer.pipe, trajectory, critic), trajectory.group_key,
                                     torch.from_numpy(advantages), shown if name == "critic+shown" else None)
            if b == batches - 1:
                held_out = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "held_out" in k)
                print(f"{name} fitted on {batches} batches, held out on the last: {held_out}")
    return critics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/coverworld.yaml")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--gate", type=float, default=0.5)
    parser.add_argument("--critic-warmup", type=int, default=40, help="batches the critic is fitted on first")
    parser.add_argument("overrides", nargs="*", help="e.g. algo.sde_window=[0,4] data.pairs_per_batch=4")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, ["algo.name=grpo", "algo.eta=1.0", "algo.sde_window=[0,4]",
                                    "data.pairs_per_batch=4", "data.samples_per_pair=4", "algo.nft_critic_weight=0.0",
                                    *args.overrides])  # the critic row builds its own (a critic is nft's only)
    trainer = LocalTrainer(cfg)
    pipe, algo = trainer.pipe, cfg.algo
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(args.gate)
    params = pipe.trainable_parameters()
    gate_index = next(i for i, p in enumerate(params) if p is pipe.icg.adapter.projection.gate)
    user_mask = torch.cat([torch.full((p.numel(),), name.startswith(("icg.user_encoder", "icg.refiner")))
                           for name, p in pipe.trainable_named_parameters().items()])
    critics = fitted_critics(trainer, args.critic_warmup)
    objectives = {"grpo": [], "nft": [], "awm": [], "nft+shown": [], "pairs": [], **{n: [] for n in critics},
                  "backprop": []}
    backprop_algo = cfg.algo.model_copy(update={"name": "backprop", "eta": 1.0, "sde_window": None,
                                                "backprop_steps": 5})
    started = time.perf_counter()
    for b in range(args.batches):
        batch, trajectory, scores, advantages = scored_batch(trainer, 10_000 + b)
        grads, _ = ddpo_gradients(pipe, trajectory, torch.from_numpy(advantages), algo, update_generator(0, b))
        objectives["grpo"].append(flat(grads, params))
        r = torch.from_numpy(optimality(advantages, algo.nft_clip))
        draws = draw_noising(pipe.scheduler, algo.num_inference_steps, trajectory.latents[:, -1],
                             trajectory.group_key, 0, algo.nft_draws, algo.nft_shared_draws, cfg.train.seed, b)
        for name in ("nft", "awm"):
            grads, _ = nft_gradients(pipe, trajectory, r, algo.model_copy(update={"nft_objective": name}), draws)
            objectives[name].append(flat(grads, params))
        shown = shown_rows(trajectory, {n: s.numpy() for n, s in scores.items()}, trainer.mixer.weights,
                           trainer.score_for, 1, cfg.train.seed, b)
        both = Trajectory.concat([trajectory, shown[0]])
        both_draws = draw_noising(pipe.scheduler, algo.num_inference_steps, both.latents[:, -1], both.group_key, 0,
                                  algo.nft_draws, algo.nft_shared_draws, cfg.train.seed, b)
        r_both = torch.cat([r, torch.from_numpy(optimality(shown[1], algo.nft_clip))])
        grads, _ = nft_gradients(pipe, both, r_both, algo.model_copy(update={"nft_objective": "nft"}), both_draws)
        objectives["nft+shown"].append(flat(grads, params))
        grads, _ = nft_gradients(pipe, shown[0], torch.from_numpy(optimality(shown[1], algo.nft_clip)),
                                 algo.model_copy(update={"nft_objective": "nft"}),
                                 draw_noising(pipe.scheduler, algo.num_inference_steps, shown[0].latents[:, -1],
                                              shown[0].group_key, 0, algo.nft_draws, True, cfg.train.seed, b))
        objectives["pairs"].append(flat(grads, params))
        for name, critic in critics.items():
            user, item = condition_vectors(pipe, trajectory, critic)
            grads, _ = critic_gradients(pipe, trajectory, critic, user, item, 1.0, algo, update_generator(2, b))
            objectives[name].append(flat(grads, params))
        loss, _, _ = backprop_loss(pipe, batch, trainer.rewards, trainer.mixer, backprop_algo,
                                   update_generator(1, b), row_generators(cfg.train.seed, 20_000 + b,
                                                                          range(len(batch["group_key"]))))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        objectives["backprop"].append(flat(list(grads), params))
    sizes = [p.numel() for p in params]
    gate_at = sum(sizes[:gate_index])
    print(f"\n{args.batches} batches of {len(batch['group_key'])} covers at gate {args.gate} "
          f"({time.perf_counter() - started:.0f} s); {sum(sizes):,} trainable parameters")
    reference = torch.stack(objectives["backprop"]).mean(0)[user_mask]
    print(f"{'objective':<11}{'cos(all)':>10}{'cos(gate)':>11}{'cos(user)':>11}{'cos(bp)':>9}{'|grad|':>11}"
          f"  (cos: mean over batch pairs)")
    for name, vectors in objectives.items():
        gate = [v[gate_at:gate_at + 1] for v in vectors]
        gate_agreement = float(np.mean([float(torch.sign(a) == torch.sign(g)) for a, g in
                                        itertools.combinations(gate, 2)]))
        to_backprop = torch.nn.functional.cosine_similarity(torch.stack(vectors).mean(0)[user_mask], reference, dim=0)
        print(f"{name:<11}{mean_cosine(vectors):>10.3f}{2 * gate_agreement - 1:>11.3f}"
              f"{mean_cosine([v[user_mask] for v in vectors]):>11.3f}{float(to_backprop):>9.3f}"
              f"{float(torch.stack([v.norm() for v in vectors]).mean()):>11.3g}")


if __name__ == "__main__":
    main()
