"""`rewards.png` (tracking.plot_curves) from a hand-made history: the held-out oracle CTRs open it in one panel, the
other metrics follow one panel each, and no CTR is drawn twice. Pure: no Ray, no tracker."""

from __future__ import annotations

import numpy as np
from PIL import Image

from icg_rl.distributed.tracking import CTR_OVERLAY, plot_curves

PREFIXES = ("reward/", "eval/", "oracle/", "loss/", "stats/clip", "stats/approx_kl")


def history(with_oracle: bool, iterations: int = 40, eval_every: int = 10) -> list[dict]:
    """Rows as the driver logs them: every iteration's rewards and losses, the held-out numbers every `eval_every`
    (the reference and best-variant CTRs are constants of the fixed held-out batch)."""
    rng = np.random.default_rng(0)
    rows = []
    for step in range(iterations + 1):
        row = {"step": step} if step == 0 else {"step": step, "reward/aesthetic": rng.random(),
                                                "reward/aesthetic_std": 1.0, "reward/clip_t": rng.random(),
                                                "loss/policy": rng.random(), "stats/clip_fraction": rng.random()}
        if step % eval_every == 0:
            row["eval/clip_t"] = 0.2 + step / 1e3
            if with_oracle:
                row |= {"oracle/ctr_icg": 0.30 + step / 1e3, "oracle/ctr_user_zeroed": 0.29 + step / 2e3,
                        "oracle/ctr_reference": 0.281, "oracle/ctr_best_variant": 0.353, "oracle/ab_lift": 0.1}
        rows.append(row)
    return rows


def test_the_first_panel_overlays_the_four_ctrs_and_no_other_panel_repeats_them(tmp_path):
    path = tmp_path / "rewards.png"
    panels = plot_curves(history(with_oracle=True), PREFIXES, path, "ICG grpo on coverworld")
    first, rest = panels[0], panels[1:]
    assert first.keys == tuple(CTR_OVERLAY) == ("oracle/ctr_icg", "oracle/ctr_user_zeroed", "oracle/ctr_reference",
                                                "oracle/ctr_best_variant")
    assert first.constant == ("oracle/ctr_reference", "oracle/ctr_best_variant")  # drawn as horizontal lines
    assert all(len(p.keys) == 1 and p.keys[0] not in CTR_OVERLAY for p in rest)
    drawn = [k for p in rest for k in p.keys]
    assert drawn == sorted({"reward/aesthetic", "reward/clip_t", "loss/policy", "stats/clip_fraction", "eval/clip_t",
                            "oracle/ab_lift"})  # every other metric once, `_std` left out as before
    with Image.open(path) as image:
        assert image.size[0] >= 1200 and image.size[1] > 600  # 3 columns; the overlay row above 2 rows of panels


def test_without_an_oracle_there_is_no_ctr_panel(tmp_path):
    panels = plot_curves(history(with_oracle=False), PREFIXES, tmp_path / "rewards.png", "ICG grpo on movielens")
    assert [p.keys for p in panels] == [(k,) for k in sorted({"reward/aesthetic", "reward/clip_t", "loss/policy",
                                                              "stats/clip_fraction", "eval/clip_t"})]
    assert all(p.constant == () for p in panels)


def test_a_single_evaluation_is_a_point_not_a_line_and_nothing_matching_draws_nothing(tmp_path):
    rows = [{"step": 0, "oracle/ctr_icg": 0.3, "oracle/ctr_reference": 0.28}]
    panels = plot_curves(rows, PREFIXES, tmp_path / "one.png", "one evaluation")
    assert [(p.keys, p.constant) for p in panels] == [(("oracle/ctr_icg", "oracle/ctr_reference"), ())]
    assert plot_curves([{"step": 0, "time/rollout": 1.0}], PREFIXES, tmp_path / "none.png", "nothing") == []
    assert not (tmp_path / "none.png").exists()
