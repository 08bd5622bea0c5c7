"""Last iterate vs averaged checkpoints: does a weight average of a run's last checkpoints land a steadier policy?

Between two held-out evaluations 100 iterations apart, a CoverWorld run's personalization (× over the same policy
with the user zeroed) moves by 0.03-0.06 (benchmarks/RESULTS.md, issue 18), so whether the *last* iterate meets a
target is partly chance. This scores, for one finished `python -m icg_rl.train --out RUN` directory:
- the last checkpoint (what `RUN/checkpoint` holds), and
- the uniform average of the ICG weights of its last 2, 3, … checkpoints (`RUN/checkpoints/iter_*`, Polyak / SWA
  averaging, as fairseq's checkpoint averaging does),
on the held-out test pairs with the evaluation noise stream the trainer uses (`rl/seeding.EVALUATION`), so the last
checkpoint's row reproduces `RUN/summary.json`'s oracle numbers. CoverWorld only (the oracle scores the covers).

    python benchmarks/checkpoint_average.py RUN [KEY=VALUE ...]   # the run's overrides, e.g. world.seed=2 world.dir=...
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import personalization_gap  # noqa: E402  (benchmarks/ is not a package)

from icg_rl.config import load_config  # noqa: E402
from icg_rl.evaluation.heldout import heldout_batch  # noqa: E402
from icg_rl.io import atomic_write_json  # noqa: E402
from icg_rl.rewards.registry import build_reward  # noqa: E402
from icg_rl.rl.local import LocalTrainer  # noqa: E402

WEIGHTS = Path("icg") / "icg.safetensors"


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of state dicts with the same keys (in float64, cast back); non-float tensors (ids, counts)
    must agree and are kept as they are."""
    if not states:
        raise ValueError("average_states: no state dicts given")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            raise ValueError(f"average_states: state {i} has keys {sorted(set(state) ^ keys)[:4]} that state 0 "
                             f"does not share; average checkpoints of one model only")
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        elif all(torch.equal(s[key], first) for s in states):
            averaged[key] = first
        else:
            raise ValueError(f"average_states: non-float tensor {key!r} differs between checkpoints")
    return averaged


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoint folders holding ICG weights, oldest first."""
    found = sorted(p for p in (run / "checkpoints").glob("iter_*") if (p / WEIGHTS).is_file())
    if not found:
        raise SystemExit(f"checkpoint_average: no {run}/checkpoints/iter_*/{WEIGHTS}; give a train --out folder")
    return found


def load_average(trainer: LocalTrainer, folders: list[Path]) -> None:
    """Load the average of the folders' ICG weights into the trainer's pipeline (through the loader users use)."""
    averaged = average_states([load_file(str(f / WEIGHTS)) for f in folders])
    with tempfile.TemporaryDirectory() as tmp:
        save_file(averaged, str(Path(tmp) / WEIGHTS.name))
        shutil.copy(folders[-1] / "icg" / "icg_config.json", tmp)
        trainer.pipe.load_icg_weights(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a `python -m icg_rl.train --out` folder")
    parser.add_argument("--config", default=None, help="the run's config (default: configs/coverworld.yaml)")
    parser.add_argument("overrides", nargs="*", help="the run's KEY.PATH=VALUE overrides (world.seed, world.dir, ...)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    if cfg.data.kind != "coverworld":
        raise SystemExit("checkpoint_average: needs data.kind=coverworld (the oracle scores the covers)")
    from icg_rl.data import load_from_config

    folders = checkpoints(args.run)
    batch = heldout_batch(cfg, load_from_config(cfg), "test")
    proxy = build_reward("preference", cfg.reward, cfg.world.dir)
    clip_t = build_reward("clip_t", cfg.reward, cfg.world.dir)
    trainer = LocalTrainer(cfg)
    rows = []
    print(f"{'weights':<34}{'CTR':>8}{'zeroed':>9}{'×zeroed':>9}{'÷best':>7}{'CLIP-T/ref':>12}")
    for last in range(1, len(folders) + 1):
        chosen = folders[-last:]
        load_average(trainer, chosen)
        scores = personalization_gap.held_out_scores(trainer, batch, proxy, clip_t)
        name = " + ".join(f.name.removeprefix("iter_").lstrip("0") for f in chosen)
        row = {"checkpoints": [f.name for f in chosen], "ctr_icg": scores["gold_ctr_icg"],
               "ctr_user_zeroed": scores["gold_ctr_user_zeroed"], "ctr_best_variant": scores["ctr_best_variant"],
               "relevance_ratio": scores["clip_t"] / scores["clip_t_reference"]}
        rows.append(row)
        print(f"{('last ' if last == 1 else 'mean ') + name:<34}{row['ctr_icg']:8.4f}{row['ctr_user_zeroed']:9.4f}"
              f"{row['ctr_icg'] / row['ctr_user_zeroed']:9.3f}{row['ctr_icg'] / row['ctr_best_variant']:7.2f}"
              f"{row['relevance_ratio']:12.3f}", flush=True)
    atomic_write_json(args.run / "checkpoint_average.json", {"overrides": args.overrides, "rows": rows})
    print(json.dumps({"written": str(args.run / "checkpoint_average.json")}))


if __name__ == "__main__":
    main()
