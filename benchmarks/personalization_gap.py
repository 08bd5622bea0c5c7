"""Gold vs proxy: is the policy or the reward model the limit of personalization? (CoverWorld only)

The same recipe is trained twice in process (rl/local.py, the reference trainer the Ray trainer matches):
- **proxy**: as shipped, the learned preference model as the personal reward;
- **gold**: the world's true P(click) in its place (`icg_rl/evaluation/gold.py`, benchmark only), same weight.
Every `--eval-every` iterations both policies draw covers for the same held-out test pairs with the same noise, and
the oracle scores them: gold CTR, the same policy with the user zeroed, and the proxy reward of the same covers.
- **shuffled** (the control): the proxy, but every batch's covers are scored for another group's user (the user
  fields rolled by one group). Its personal reward is noise to the policy's own user, so it must stay ×1.0 over
  user-zeroed: a recipe that "personalizes" on it measures an artefact, not taste.
A proxy run whose proxy reward climbs while its gold CTR stalls is over-optimising the reward model; a gold run
that personalizes where the proxy run does not says the reward model is the limit.

    python benchmarks/personalization_gap.py --iterations 300 [--algo nft] [--rewards proxy,gold,shuffled]
                                             [--eval-every 50] [--pairs 64] [KEY=VALUE ...]

Prints one table row per evaluation and writes OUT/personalization_gap.json and OUT/personalization_gap.png (gold
CTR against the proxy reward over training, and gold CTR over iterations, reference / best-variant lines).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from icg_rl.config import load_config
from icg_rl.evaluation.gold import GoldLiftReward, GoldReward
from icg_rl.evaluation.heldout import heldout_batch
from icg_rl.evaluation.world_reference import oracle_ctr, taste_correlation
from icg_rl.io import atomic_write_bytes, atomic_write_json
from icg_rl.models.images import to_float_images
from icg_rl.rewards.base import RewardModel
from icg_rl.rewards.registry import USER_DEPENDENT, build_reward
from icg_rl.rl.local import LocalTrainer
from icg_rl.rl.relabel import USER_REWARD_INPUTS
from icg_rl.rl.sampling import rollout_window, sample_trajectory
from icg_rl.rl.seeding import EVALUATION, row_generators


@torch.no_grad()
def held_out_scores(trainer: LocalTrainer, batch: dict, proxy, clip_t) -> dict[str, float]:
    """Gold CTR (policy and user-zeroed), proxy reward and CLIP-T of fresh covers for the fixed held-out pairs."""
    algo, out = trainer.cfg.algo, {}
    for arm, zero_user in (("icg", False), ("user_zeroed", True)):
        noise = row_generators(0, 0, range(len(batch["group_key"])), EVALUATION)  # same noise every evaluation
        with trainer.shipped_policy() as pipe:  # the averaged weights when train.average_last > 0
            trajectory, _ = sample_trajectory(pipe, batch, algo.num_inference_steps, algo.eta,
                                              algo.guidance_scale, noise, zero_user=zero_user,
                                              sde_window=rollout_window(algo))  # as evaluate samples
        truth = oracle_ctr(trainer.cfg.world.dir, batch["user_id"], batch["item_id"], trajectory.images)
        out[f"gold_ctr_{arm}"] = truth["oracle/ctr_generated"]
        if arm == "icg":
            pixels = to_float_images(trajectory.images, "evaluation")
            out["proxy"] = float(proxy.score(pixels, batch).mean())
            out["clip_t"] = float(clip_t.score(pixels, batch).mean())
            references = to_float_images(np.asarray(batch["reference_image"]), "evaluation")
            out["clip_t_reference"] = float(clip_t.score(references, batch).mean())
            out["ctr_reference"], out["ctr_best_variant"] = truth["oracle/ctr_reference"], truth[
                "oracle/ctr_best_variant"]
            taste = taste_correlation(trainer.cfg.world.dir, batch["user_id"], trajectory.images)
            out["taste_corr_mean"] = float(np.nanmean(list(taste.values())))
    return out


class ShuffledUsers(RewardModel):
    """A user-dependent reward that scores each group's covers for the next group's user: the control arm."""

    def __init__(self, reward: RewardModel, group_size: int):
        super().__init__()
        self.reward, self.group_size = reward, group_size
        self.name, self.differentiable = f"shuffled_{reward.name}", reward.differentiable

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        rolled = {k: (np.roll(np.asarray(v), self.group_size, axis=0) if k in USER_REWARD_INPUTS else v)
                  for k, v in batch.items()}
        return self.reward.score(images, rolled)


def run(cfg, reward: str, iterations: int, eval_every: int, batch: dict, proxy, clip_t) -> list[dict]:
    trainer = LocalTrainer(cfg)
    if reward == "gold":  # the truth in place of the learned preference rewards, same weights in the mix
        trainer.rewards["preference"] = GoldReward(cfg.world.dir)
        if "preference_lift" in trainer.rewards:
            trainer.rewards["preference_lift"] = GoldLiftReward(cfg.world.dir)
    if reward == "shuffled":
        for name in [n for n in trainer.rewards if n in USER_DEPENDENT]:
            trainer.rewards[name] = ShuffledUsers(trainer.rewards[name], cfg.data.samples_per_pair)
    curve, start = [], time.perf_counter()
    for it in range(iterations + 1):
        if it % eval_every == 0 or it == iterations:
            row = {"reward": reward, "iteration": it, "seconds": round(time.perf_counter() - start, 1)}
            row |= held_out_scores(trainer, batch, proxy, clip_t)
            curve.append(row)
            print(f"{reward:>6} {it:5d}  gold CTR {row['gold_ctr_icg']:.4f}"
                  f"  user-zeroed {row['gold_ctr_user_zeroed']:.4f}  proxy {row['proxy']:.4f}"
                  f"  CLIP-T {row['clip_t']:.3f}  taste r {row['taste_corr_mean']:+.3f}"
                  f"  ({row['seconds']} s)", flush=True)
        if it < iterations:
            trainer.step()
    return curve


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"proxy": "#c0392b", "gold": "#2e8b57", "shuffled": "#7f8c8d"}
    for reward, curve in curves.items():
        proxy = [r["proxy"] for r in curve]
        gold = [r["gold_ctr_icg"] for r in curve]
        left.plot(proxy, gold, "o-", color=colours.get(reward), label=f"trained on {reward}")
        right.plot([r["iteration"] for r in curve], gold, "o-", color=colours.get(reward), label=f"{reward}: ICG")
        right.plot([r["iteration"] for r in curve], [r["gold_ctr_user_zeroed"] for r in curve], "o--",
                   color=colours.get(reward), alpha=0.5, label=f"{reward}: user zeroed")
    first = next(iter(curves.values()))[0]
    for ax in (left, right):
        ax.axhline(first["ctr_reference"], color="#999999", ls=":", label="reference covers")
        ax.axhline(first["ctr_best_variant"], color="#555555", ls="-.", label="best existing variant")
        ax.set_ylabel("gold CTR (oracle), held-out pairs")
    left.set_xlabel("proxy reward (learned preference model) of the same covers")
    right.set_xlabel("iteration")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="default: configs/coverworld.yaml")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=64, help="held-out test pairs scored by the oracle")
    parser.add_argument("--algo", default=None, help="algo.name (default: the config's)")
    parser.add_argument("--rewards", default="proxy,gold", help="comma-separated subset of proxy,gold,shuffled")
    parser.add_argument("--out", default="runs/personalization_gap")
    parser.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE config overrides")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # the run's length is --iterations: train.average_last's window is the last part of it
    algo = [f"algo.name={args.algo}"] if args.algo else []
    cfg = load_config(args.config, [*algo, f"train.iterations={args.iterations}", *args.overrides])
    if cfg.data.kind != "coverworld" or not cfg.reward.weights.get("preference"):
        raise SystemExit("personalization_gap: needs data.kind=coverworld and a non-zero reward.weights.preference")
    from icg_rl.data import load_from_config

    batch = heldout_batch(cfg, load_from_config(cfg), "test", args.pairs)
    proxy = build_reward("preference", cfg.reward, cfg.world.dir)  # scores both runs' covers
    clip_t = build_reward("clip_t", cfg.reward, cfg.world.dir)
    arms = args.rewards.split(",")
    unknown = sorted(set(arms) - {"proxy", "gold", "shuffled"})
    if unknown:
        raise SystemExit(f"--rewards: unknown arm(s) {unknown}; choose from proxy, gold, shuffled")
    curves = {reward: run(cfg, reward, args.iterations, args.eval_every, batch, proxy, clip_t) for reward in arms}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "personalization_gap.json", {"config": args.overrides, "curves": curves})
    plot(curves, out / "personalization_gap.png")
    print(f"\n{'reward':<8}{'gold CTR':>10}{'zeroed':>10}{'×zeroed':>9}{'reference':>11}{'best var.':>11}"
          f"{'proxy':>8}{'CLIP-T':>8}{'/ ref.':>8}")
    for reward, curve in curves.items():
        last = curve[-1]
        print(f"{reward:<8}{last['gold_ctr_icg']:>10.4f}{last['gold_ctr_user_zeroed']:>10.4f}"
              f"{last['gold_ctr_icg'] / last['gold_ctr_user_zeroed']:>9.3f}{last['ctr_reference']:>11.4f}"
              f"{last['ctr_best_variant']:>11.4f}{last['proxy']:>8.4f}{last['clip_t']:>8.3f}"
              f"{last['clip_t'] / last['clip_t_reference']:>8.3f}")
    print(f"(written to {out}/personalization_gap.json and .png)")


if __name__ == "__main__":
    main()
