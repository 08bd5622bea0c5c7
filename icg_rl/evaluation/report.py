"""The evaluation's outputs: summary.json (metric → arm → value), report.md, metrics.png and samples.png."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from icg_rl.evaluation.arms import ARMS
from icg_rl.io import atomic_write_bytes, atomic_write_json, atomic_write_png, image_grid

COLUMNS = (*ARMS, "best_variant", "logged")
COLORS = {"reference": "#999999", "base": "#6a8caf", "icg_user_zeroed": "#c9a227", "icg": "#c0392b",
          "best_variant": "#2e8b57", "logged": "#555555"}  # one colour per arm in every panel
ABOUT = {
    "aesthetic": "aesthetic reward (configured head), higher is better",
    "clip_t": "CLIP-T: cover vs title",
    "clip_i": "CLIP-I: cover vs the item's reference cover",
    "diversity": "1 − cos between users' covers of the same item (CLIP), same noise",
    "personal_win_rate": "P(pref(own user) > pref(other user)) on the same cover",
    "lpips_to_reference": "LPIPS distance to the reference cover, lower = closer",
    "judge": "MLLM judge, 1–5",
    "oracle_ctr": "CoverWorld: true P(click) of the pair's cover",
    "oracle_aesthetic": "CoverWorld: true aesthetic, 1–10",
    **{f"taste_corr_{k}": f"CoverWorld: corr(cover {k}, user's true ideal {k}) over pairs; 0 = ignores the user"
       for k in ("brightness", "warmth", "saturation", "contrast", "composition")},
    "downstream_auc": "CTR model fed the arm's covers: AUC on test impressions",
    "downstream_ndcg@10": "CTR model fed the arm's covers: NDCG@10 per user",
}


def cell(value) -> str:
    if isinstance(value, str):
        return "n/a" if value.startswith("unavailable") else value
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"


def markdown(summary: dict) -> str:
    metrics = summary["metrics"]
    columns = [c for c in COLUMNS if any(c in per_arm for per_arm in metrics.values())]
    lines = [f"# Evaluation of `{summary['checkpoint']}`", "",
             f"{datetime.date.today()} · split `{summary['split']}` · {summary['pairs']} (user, item) pairs · "
             f"{summary['sampling']['steps']} steps, CFG {summary['sampling']['guidance_scale']}, eta "
             f"{summary['sampling']['eta']} · {summary['seconds']} s", "",
             "| metric | " + " | ".join(columns) + " | what it measures |",
             "|---|" + "---|" * (len(columns) + 1)]
    for name, per_arm in metrics.items():
        lines.append(f"| {name} | " + " | ".join(cell(per_arm.get(c)) for c in columns)
                     + f" | {ABOUT.get(name, '')} |")
    missing = {name: next(v for v in per_arm.values() if isinstance(v, str) and v.startswith("unavailable"))
               for name, per_arm in metrics.items()
               if any(isinstance(v, str) and v.startswith("unavailable") for v in per_arm.values())}
    if missing:
        lines += ["", "Not available (n/a above):", ""] + [f"- **{n}**: {why.removeprefix('unavailable: ')}"
                                                          for n, why in missing.items()]
    if summary.get("ab_test"):
        control = "reference"
        lines += ["", "## Simulated A/B test (CoverWorld oracle; clicks drawn from the true P(click))", "",
                  "| arm | impressions | clicks | CTR [95% CI] | true CTR | lift vs reference | p vs reference |",
                  "|---|---|---|---|---|---|---|"]
        for arm, row in summary["ab_test"].items():
            lines.append(f"| {arm} | {row['impressions']} | {row['clicks']} | {row['ctr']:.4f} "
                         f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] | {row['true_ctr']:.4f} | "
                         f"{row['lift_vs_' + control]:+.1%} | {row['p_vs_' + control]:.3g} |")
    judge = summary.get("judge") or {}
    if judge:
        counts = ", ".join(f"{arm} {meta['unparseable']}/{meta['answered']}" for arm, meta in judge.items()
                           if isinstance(meta, dict))
        lines += ["", f"Judge: `{judge.get('model')}`; unparseable answers per arm: {counts}.",
                  "", "Judge prompt:", "", "> " + judge.get("prompt", "").replace("\n", "\n> ")]
    lines += ["", "Time per step: " + ", ".join(f"{k} {v} s" for k, v in summary["timings"].items()), "",
              "![metrics](metrics.png)", "", "![samples: rows = users, columns = " + ", ".join(ARMS) + "](samples.png)",
              ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = {name: {arm: v for arm, v in per_arm.items() if isinstance(v, (int, float)) and not np.isnan(v)}
               for name, per_arm in summary["metrics"].items()}
    numeric = {k: v for k, v in numeric.items() if v}
    cols = 4
    rows = max(1, -(-len(numeric) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, per_arm) in zip(axes.flat, numeric.items()):
        arms = list(per_arm)
        errors = None
        if name in summary["intervals"]:
            iv = summary["intervals"][name]
            errors = [[per_arm[a] - iv[a]["ci_low"] for a in arms], [iv[a]["ci_high"] - per_arm[a] for a in arms]]
        ax.bar(range(len(arms)), [per_arm[a] for a in arms], yerr=errors, capsize=3,
               color=[COLORS.get(a, "#555555") for a in arms])
        ax.set_xticks(range(len(arms)), [a.replace("icg_user_zeroed", "zeroed") for a in arms], rotation=30,
                      fontsize=8)
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[len(numeric):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(summary: dict, arms: dict[str, np.ndarray], batch: dict, out: Path, grid_rows: int = 8) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = min(grid_rows, len(batch["title"]))
    size = max(images.shape[1] for images in arms.values())
    cells = [_fit(arms[arm][r], size) for r in range(rows) for arm in ARMS]  # rows = users, columns = arms
    atomic_write_png(out / "samples.png", image_grid(np.stack(cells), len(ARMS)))
    plot(summary, out / "metrics.png")
    atomic_write_bytes(out / "report.md", markdown(summary).encode())
    atomic_write_json(out / "summary.json", summary)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
