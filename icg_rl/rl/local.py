"""The in-process reference trainer: the whole ICG RL loop in one process, no Ray. The Ray trainer must match it.

    trainer = LocalTrainer(cfg)
    for it in range(cfg.train.iterations):
        metrics = trainer.step()

One iteration: next batch of P (user, item) pairs × K samples → rollout → rewards → mix → group advantages →
DDPO update (or reward backprop, which samples with gradient itself) — seeded and deterministic on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from icg_rl.data import load_from_config
from icg_rl.data.stream import LoadReferences, build_pairs, epoch_order, expand_groups, frame_to_batch
from icg_rl.models.images import to_float_images
from icg_rl.models.item_features import policy_context
from icg_rl.models.pipeline import pipeline_from_config
from icg_rl.models.trainable import TrainableParameters, weights_loaded
from icg_rl.rewards.mix import RewardMixer
from icg_rl.rewards.registry import build_reward, refuse_for_backprop
from icg_rl.rl.advantages import PerKeyStatTracker, group_advantages
from icg_rl.rl.averaging import TailAverage
from icg_rl.rl.backprop import backprop_update, check_differentiable, reference_scores
from icg_rl.rl.critic import build_critic, floored_scores, shown_differences
from icg_rl.rl.critic_climb import critic_term
from icg_rl.rl.ddpo import apply_gradients, ddpo_update
from icg_rl.rl.nft import nft_update, optimality
from icg_rl.rl.relabel import shown_rows
from icg_rl.rl.sampling import kept_steps, rollout_window, sample_trajectory
from icg_rl.rl.seeding import EVALUATION, group_generators, row_generators, update_generator
from icg_rl.rl.trajectory import Trajectory


@contextmanager
def timed(name: str, timings: dict[str, float]):
    start = time.perf_counter()
    yield
    timings[f"time/{name}"] = time.perf_counter() - start


class LocalTrainer:
    def __init__(self, cfg, split: str = "train"):
        self.cfg = cfg
        torch.manual_seed(cfg.train.seed)
        self.data = load_from_config(cfg)
        users, item_features = policy_context(cfg, self.data)
        torch.manual_seed(cfg.train.seed)  # the ICG init draws from here, as in every learner rank
        self.pipe = pipeline_from_config(cfg, user_ids=users, item_features=item_features)
        self.pipe.set_progress_bar_config(disable=True)
        weights = {k: v for k, v in cfg.reward.weights.items() if v != 0}
        if cfg.algo.name == "backprop":
            refuse_for_backprop(weights)  # by declaration, before any reward model is built
        self.rewards = {name: build_reward(name, cfg.reward, cfg.world.dir) for name in weights}
        if cfg.algo.name == "backprop":
            check_differentiable(self.rewards, weights)
        self.mixer = RewardMixer.from_config(weights, cfg.reward)
        self.tracker = PerKeyStatTracker(max_keys=cfg.train.tracker_max_keys)
        self.critic = build_critic(cfg, self.pipe)  # nft with a learned critic (rl/critic.py), else None
        self.optimizer = torch.optim.AdamW(self.pipe.trainable_parameters(), lr=cfg.algo.lr)
        self.average = TailAverage(TrainableParameters(self.pipe.trainable_named_parameters()), cfg.train.iterations,
                                   cfg.train.average_last) if cfg.train.average_last > 0 else None
        self.pairs = build_pairs(self.data, split, cfg.data.history_len)
        self.load = LoadReferences(cfg.data.reference_size, cfg.data.history_len)
        self.iteration, self.epoch = 0, 0
        self._batches = self._batch_stream()

    def _batch_stream(self) -> Iterator[dict[str, np.ndarray]]:
        """Seeded epochs over the pairs, P pairs per batch, each repeated K times (the Ray stream's contract)."""
        p, k = self.cfg.data.pairs_per_batch, self.cfg.data.samples_per_pair
        while True:
            order = epoch_order(len(self.pairs), self.cfg.train.seed, self.epoch)
            for start in range(0, len(order) - p + 1, p):
                frame = self.load(self.pairs.frame(order[start:start + p]))
                yield expand_groups(frame_to_batch(frame), k)
            self.epoch += 1

    def score(self, images: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {name: reward.score(images, batch) for name, reward in self.rewards.items()}

    def score_for(self, images: np.ndarray, batch: dict, names: list[str]) -> dict[str, np.ndarray]:
        """uint8 covers scored by some of the rewards (cross-user relabelling's scores for other users)."""
        with torch.no_grad():
            x = to_float_images(images, "rollout")
            return {name: self.rewards[name].score(x, batch).numpy() for name in names}

    def scored(self, trajectory) -> tuple[dict[str, torch.Tensor], np.ndarray, dict[str, float]]:
        """A rollout's covers scored by every reward, and their group advantages -> (scores, advantages, metrics)."""
        scores = self.score(to_float_images(trajectory.images, "rollout"), trajectory.extra)
        return scores, *self.mixed_advantages(trajectory, scores)

    def mixed_advantages(self, trajectory, scores: dict[str, torch.Tensor],
                         reference: dict | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Scores (of the uint8 covers a rollout records and ships to reward actors, not the float decode) ->
        the mix, then group advantages -> (advantages [N], metrics). `reference`: the floored rewards' scores of
        the rows' reference covers, when the caller already has them."""
        if reference is None:
            reference = reference_scores(self.rewards, self.mixer.floors, trajectory.extra)
        total, metrics = self.mixer(scores, reference_scores=reference)
        advantages, stats = group_advantages(total.numpy(), trajectory.group_key, self.tracker,
                                             global_std=self.cfg.algo.advantage_std == "batch")
        return advantages, metrics | {f"stats/{k}": v for k, v in stats.items()}

    def step(self) -> dict[str, float]:
        algo, timings, seed = self.cfg.algo, {}, self.cfg.train.seed
        batch = next(self._batches)
        noise = row_generators(seed, self.iteration, range(len(batch["group_key"])))  # see rl/seeding.py
        generator = update_generator(seed, self.iteration)
        if algo.name == "backprop":
            with timed("update", timings):
                metrics, _ = backprop_update(self.pipe, batch, self.rewards, self.mixer, algo, self.optimizer,
                                             generator, noise)
        else:
            with timed("rollout", timings):
                start = group_generators(seed, self.iteration, batch["group_key"]) if algo.shared_start else None
                trajectory, images = sample_trajectory(self.pipe, batch, algo.num_inference_steps, algo.eta,
                                                       algo.guidance_scale, noise, self.iteration,
                                                       sde_window=rollout_window(algo), start_generator=start,
                                                       keep_steps=kept_steps(algo))
            with timed("reward", timings):
                scores = self.score(to_float_images(trajectory.images, "rollout"), trajectory.extra)
            reference = reference_scores(self.rewards, self.mixer.floors, trajectory.extra)  # floored rewards
            advantages, metrics = self.mixed_advantages(trajectory, scores, reference)
            with timed("update", timings):
                if algo.name == "nft":
                    r = optimality(advantages, algo.nft_clip)
                    term = None
                    if self.critic is not None:
                        shown = shown_differences(trajectory, scores, self.mixer, reference, self.score_for,
                                                  algo.nft_critic_shown, seed, self.iteration)
                        term, critic_metrics = critic_term(self.pipe, trajectory, torch.from_numpy(advantages),
                                                           self.critic, algo, seed, self.iteration, shown=shown,
                                                           floored=floored_scores(scores, reference, algo))
                        metrics |= critic_metrics
                    shown = shown_rows(trajectory, {n: s.numpy() for n, s in scores.items()}, self.mixer.weights,
                                       self.score_for, algo.nft_relabel_users, seed, self.iteration)
                    if shown is not None:  # the covers shown to other users too (rl/relabel.py)
                        trajectory = Trajectory.concat([trajectory, shown[0]])
                        r = np.concatenate([r, optimality(shown[1], algo.nft_clip)])
                        metrics |= shown[2]
                    metrics |= nft_update(self.pipe, trajectory, torch.from_numpy(r), algo, seed, self.iteration, 0,
                                          self._apply, term)
                else:
                    metrics |= ddpo_update(self.pipe, trajectory, torch.from_numpy(advantages), self.optimizer, algo,
                                           generator)
        if self.average is not None:
            self.average.after_update(self.iteration)
        self.iteration += 1
        metrics |= timings | {"iteration": self.iteration,
                              "stats/gate": float(self.pipe.icg.adapter.projection.gate.detach())}
        return metrics

    def _apply(self, grads) -> float:
        return apply_gradients(self.pipe.trainable_parameters(), grads, self.optimizer, self.cfg.algo.max_grad_norm)

    def shipped_policy(self):
        """`with trainer.shipped_policy() as pipe:` the pipeline holding the policy that is evaluated and shipped —
        the averaged weights when `train.average_last` > 0 (as the Ray learner), the live ones otherwise."""
        return weights_loaded(self.pipe, self.average.pipeline_arrays(self.pipe) if self.average else None)

    @torch.no_grad()
    def evaluate(self, batch: dict, seed: int = 1234) -> dict[str, float]:
        """Raw reward means of fresh samples of the shipped policy for a fixed batch (same seed each call:
        comparable over training)."""
        algo = self.cfg.algo
        noise = row_generators(seed, 0, range(len(batch["group_key"])), EVALUATION)
        with self.shipped_policy() as pipe:
            _, images = sample_trajectory(pipe, batch, algo.num_inference_steps, algo.eta, algo.guidance_scale,
                                          noise, sde_window=rollout_window(algo))
        scores = self.score(images, batch)
        raw_total = sum(self.mixer.weights[n] * s.mean() for n, s in scores.items())
        return {f"eval/{n}": float(s.mean()) for n, s in scores.items()} | {"eval/weighted_total": float(raw_total)}
