"""A short in-process ICG run (rl/local.py) with the oracle's verdict before and after, and seconds per iteration.

    python benchmarks/local_run.py --algo {ddpo,grpo,backprop,nft} --iterations 20 [--pairs 48] [KEY=VALUE ...]

Held-out pairs are the test split's (user, item) pairs; each gets one cover per evaluation, same seed before and
after, scored by the CoverWorld oracle (true CTR) next to the reference cover and the best existing variant.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from icg_rl.config import load_config
from icg_rl.data.stream import LoadReferences, build_pairs, frame_to_batch
from icg_rl.evaluation.world_reference import oracle_ctr
from icg_rl.rl.local import LocalTrainer
from icg_rl.rl.sampling import rollout_window, sample_trajectory


@torch.no_grad()
def oracle_eval(trainer: LocalTrainer, pairs, seed: int = 99) -> dict[str, float]:
    frame = LoadReferences(trainer.cfg.data.reference_size, trainer.cfg.data.history_len)(pairs)
    batch = frame_to_batch(frame)
    batch["group_key"] = np.char.add(batch["user_id"].astype(str), batch["item_id"].astype(str))
    algo = trainer.cfg.algo
    out = {}
    for zero_user in (False, True):  # the same covers' seeds with the user zeroed: what personalization adds
        traj, _ = sample_trajectory(trainer.pipe, batch, algo.num_inference_steps, algo.eta, algo.guidance_scale,
                                    torch.Generator().manual_seed(seed), sde_window=rollout_window(algo),
                                    zero_user=zero_user)
        ctr = oracle_ctr(trainer.cfg.world.dir, batch["user_id"], batch["item_id"], traj.images)
        out |= {"oracle/ctr_user_zeroed": ctr["oracle/ctr_generated"]} if zero_user else ctr
        if not zero_user and "clip_t" in trainer.rewards:  # relevance, as a share of the reference covers'
            generated = trainer.score_for(traj.images, batch, ["clip_t"])["clip_t"].mean()
            reference = trainer.score_for(np.asarray(batch["reference_image"]), batch, ["clip_t"])["clip_t"].mean()
            out["eval/clip_t_vs_reference"] = float(generated / reference)
    out["oracle/x_zeroed"] = out["oracle/ctr_generated"] / out["oracle/ctr_user_zeroed"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--algo", choices=["ddpo", "grpo", "backprop", "nft"], default="ddpo")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=48, help="held-out (test) pairs scored by the oracle")
    parser.add_argument("--log-every", type=int, default=1, help="print every n-th iteration's metrics")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, [f"algo.name={args.algo}", *args.overrides])
    trainer = LocalTrainer(cfg)
    held_out = build_pairs(trainer.data, "test", cfg.data.history_len).frame(slice(0, args.pairs))
    before = oracle_eval(trainer, held_out)
    start = time.perf_counter()
    for it in range(args.iterations):
        metrics = trainer.step()
        if (it + 1) % args.log_every == 0:
            print(f"iter {it + 1:3d}  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                   if k.startswith(("reward/", "loss/", "stats/gate", "stats/clip",
                                                                    "critic/"))),
                  flush=True)
    per_iteration = (time.perf_counter() - start) / args.iterations
    after = oracle_eval(trainer, held_out)
    print(f"\nalgo={args.algo} iterations={args.iterations} batch={cfg.data.pairs_per_batch}x"
          f"{cfg.data.samples_per_pair} steps={cfg.algo.num_inference_steps}: {per_iteration:.2f} s/iteration")
    print(f"{'metric':<28}{'before':>10}{'after':>10}")
    for key in before:
        print(f"{key:<28}{before[key]:>10.4f}{after[key]:>10.4f}")


if __name__ == "__main__":
    main()
