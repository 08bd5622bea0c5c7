"""`python -m icg_rl.evaluate --checkpoint PATH`: the evaluation suite of a trained policy (docs/architecture.md §10).

Scores held-out (user, item) pairs under four arms — the items' reference covers, the base model, ICG with the user
embedding zeroed, ICG — on: the configured aesthetic and relevance rewards (CLIP-T, CLIP-I), diversity across users
for the same item, the personal win rate under the preference model, LPIPS to the reference cover, an MLLM judge's
1-5 score, downstream recommendation (AUC, NDCG@10 of a CTR model fed each arm's covers) and, on CoverWorld, the
oracle: true CTR per arm beside the best existing variant (a perfect selector), a simulated A/B test with
confidence intervals, and the true aesthetic. A metric that cannot be computed is reported as "unavailable: <why>",
never replaced by something else under its name.

Writes OUT/report.md, OUT/summary.json (metric → arm → value), OUT/metrics.png and OUT/samples.png (rows = users,
columns = arms). OUT defaults to the checkpoint's run folder + /evaluation.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch

from icg_rl.commands.common import base_parser, parse_config, run_main

log = logging.getLogger("icg_rl.evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m icg_rl.evaluate", __doc__)
    parser.add_argument("--checkpoint", required=True, help="ICG weights folder (a training run's OUT/checkpoint)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: evaluation.split, 'test')")
    args = parser.parse_intermixed_args(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        cfg = parse_config(args)
        if args.split:
            cfg.evaluation.split = args.split
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"--checkpoint: {checkpoint} is not a folder; train one with "
                                    f"`python -m icg_rl.train` (it writes OUT/checkpoint)")
        out = Path(args.out) if args.out else checkpoint.resolve().parent / "evaluation"
        summary = evaluate(cfg, checkpoint, out)
        print((out / "report.md").read_text())
        print(f"written: {summary['report']}, {out / 'summary.json'}, {summary['plots']}, {summary['grid']}")
        return 0

    return run_main(body)


def evaluate(cfg, checkpoint: Path, out: Path, progress: bool = True) -> dict:
    from icg_rl.data import load_from_config
    from icg_rl.evaluation import suite
    from icg_rl.evaluation.arms import ARMS, all_arms
    from icg_rl.evaluation.heldout import heldout_batch
    from icg_rl.evaluation.report import write_report
    from icg_rl.models.pipeline import load_checkpoint
    from icg_rl.paths import resolve_preference
    from icg_rl.rl.sampling import rollout_window

    start = time.perf_counter()
    torch.set_num_threads(cfg.ray.threads("rollout") or os.cpu_count() or 1)  # one process does all the work
    cfg = resolve_preference(cfg)  # MovieLens / PixelRec: the preference model `python -m icg_rl.preference` wrote
    e = cfg.evaluation
    data = load_from_config(cfg)
    pipe = load_checkpoint(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    # the sampler training's rollouts used (the trained SDE window of GRPO, nft's deterministic steps)
    sampling = {"steps": e.num_inference_steps or cfg.algo.num_inference_steps, "eta": cfg.algo.eta,
                "sde_window": rollout_window(cfg.algo), "guidance_scale": cfg.algo.guidance_scale,
                "seed": cfg.train.seed, "batch_size": e.batch_size}
    steps = suite.Steps(progress)

    with steps("held-out pairs, 4 arms"):
        batch = heldout_batch(cfg, data, e.split, e.pairs)
        arms = all_arms(pipe, batch, **sampling)
    metrics: dict[str, dict] = {}
    intervals: dict[str, dict] = {}
    with steps("rewards (aesthetic, relevance)"):
        rewards = suite.build_rewards(cfg)
        for name, reward in rewards.items():
            if name == "preference":
                continue
            intervals[name] = {arm: suite.mean_ci_of(reward, arms[arm], batch) for arm in ARMS}
    with steps("diversity across users"):
        metrics["diversity"] = suite.diversity_by_arm(cfg, data, pipe, rewards, sampling)
    with steps("personal win rate"):
        metrics["personal_win_rate"] = suite.win_rate_by_arm(rewards, arms, batch)
    with steps("LPIPS to the reference cover"):
        metrics["lpips_to_reference"] = suite.lpips_by_arm(e.lpips, arms)
    with steps("MLLM judge"):
        metrics["judge"], judge_meta = suite.judge_by_arm(cfg, arms, batch)
    ab_test = None
    if suite.is_coverworld(cfg):
        with steps("CoverWorld oracle: CTR, A/B test, aesthetic"):
            oracle_metrics, ab_test = suite.oracle_by_arm(cfg, arms, batch)
            intervals |= oracle_metrics
            metrics |= suite.taste_by_arm(cfg, arms, batch)
    else:
        for name in ("oracle_ctr", "oracle_aesthetic"):
            metrics[name] = suite.unavailable(f"data.kind={cfg.data.kind} has no ground truth: the click and "
                                              f"aesthetic oracles exist only in CoverWorld")
    with steps("downstream recommendation"):
        downstream = suite.downstream_by_arm(cfg, data, pipe, rewards, sampling)
    for name, per_arm in intervals.items():
        metrics[name] = {arm: (v["mean"] if isinstance(v, dict) else v) for arm, v in per_arm.items()}
    for name in ("auc", "ndcg@10"):
        metrics[f"downstream_{name}"] = {arm: v[name] if isinstance(v, dict) else v for arm, v in downstream.items()}
    summary = {"metrics": metrics, "intervals": intervals, "ab_test": ab_test, "judge": judge_meta,
               "checkpoint": str(checkpoint), "split": e.split, "pairs": int(len(batch["title"])),
               "sampling": sampling, "seconds": round(time.perf_counter() - start, 1), "timings": steps.seconds}
    write_report(summary, arms, batch, out)
    summary |= {"report": str(out / "report.md"), "plots": str(out / "metrics.png"), "grid": str(out / "samples.png")}
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
