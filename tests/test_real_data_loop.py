"""Real data end to end (issue 19): on a PixelRec-layout folder and on MovieLens-100K layouts with and without
posters, written here, the four commands a user runs — `icg_rl.preference` → `icg_rl.train` → `icg_rl.evaluate` →
the Serve application of `icg_rl.serve` — run with the micro world's tiny base models. The logs have structure a
two-tower model can learn (users in three taste groups click mostly their group's items), so the preference model
must beat popularity on the held-out time split; what only CoverWorld can measure is reported as unavailable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import MICRO_CONFIG

GROUPS = (("Racing", (200, 40, 40), "Action"), ("Forest", (40, 160, 60), "Documentary"),
          ("Concert", (40, 60, 200), "Musical"))
ITEMS_PER_GROUP, USERS, CLICKS_PER_USER = 16, 30, 14


def taste_log(seed: int = 0) -> list[tuple[int, int, int]]:
    """(user, item, time) clicks: user u belongs to group u % 3; 12 of their 14 clicks are their group's items."""
    rng = np.random.default_rng(seed)
    rows, items = [], ITEMS_PER_GROUP * len(GROUPS)
    for user in range(USERS):
        group = user % len(GROUPS)
        own = [group * ITEMS_PER_GROUP + i for i in range(ITEMS_PER_GROUP)]
        others = [i for i in range(items) if i not in own]
        chosen = rng.choice(own, size=CLICKS_PER_USER - 2, replace=False).tolist() + \
            rng.choice(others, size=2, replace=False).tolist()
        rng.shuffle(chosen)  # in time order the off-taste clicks fall anywhere, not all in the latest (test) part
        rows += [(user, int(item), 1_600_000_000 + user * 10_000 + 60 * k) for k, item in enumerate(chosen)]
    return rows


def cover(group: int, item: int) -> Image.Image:
    colour = np.array(GROUPS[group][1]) + (item % 5) * 8
    return Image.new("RGB", (32, 32), tuple(int(c) for c in colour))


def write_pixelrec(root: Path) -> Path:
    """item_info.csv, the interactions CSV and images/<item>.jpg — two items have no image (text-only)."""
    (root / "images").mkdir(parents=True)
    lines = ["item_id,view_number,title,tag,description"]
    for item in range(ITEMS_PER_GROUP * len(GROUPS)):
        group = item // ITEMS_PER_GROUP
        lines.append(f"p{item},{10 + item},{GROUPS[group][0]} episode {item},{GROUPS[group][0].lower()},")
        if item % ITEMS_PER_GROUP != 0:
            cover(group, item).save(root / "images" / f"p{item}.jpg")
    (root / "item_info.csv").write_text("\n".join(lines) + "\n")
    clicks = "".join(f"p{i},v{u},{t}\n" for u, i, t in taste_log())
    (root / "Pixel200K.csv").write_text("item_id,user_id,timestamp\n" + clicks)
    return root


def write_ml100k(root: Path, posters: Path | None = None) -> Path:
    """u.data (4-5 stars for the group's items: clicks; 1-2 stars otherwise), u.item, u.genre, u.user."""
    from icg_rl.data.movielens import ML100K_GENRES

    root.mkdir(parents=True)
    ratings = [(u, i, 5 if i // ITEMS_PER_GROUP == u % len(GROUPS) else 4, t) for u, i, t in taste_log()]
    ratings += [(u, (i + ITEMS_PER_GROUP) % (ITEMS_PER_GROUP * len(GROUPS)), 1, t + 30) for u, i, t in taste_log(1)]
    (root / "u.data").write_text("".join(f"{u + 1}\t{i + 1}\t{r}\t{t}\n" for u, i, r, t in ratings))
    items = []
    for item in range(ITEMS_PER_GROUP * len(GROUPS)):
        name, _, genre = GROUPS[item // ITEMS_PER_GROUP]
        flags = "|".join("1" if g == genre else "0" for g in ML100K_GENRES)
        items.append(f"{item + 1}|{name} story {item} (1995)|01-Jan-1995||http://example.org/{item}|{flags}")
        if posters is not None:
            posters.mkdir(exist_ok=True)
            cover(item // ITEMS_PER_GROUP, item).save(posters / f"{item + 1}.jpg")
    (root / "u.item").write_text("\n".join(items) + "\n")
    (root / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(ML100K_GENRES)) + "\n")
    (root / "u.user").write_text("".join(f"{u + 1}|30|M|other|00000\n" for u in range(USERS)))
    return root


SOURCES = {
    "pixelrec": lambda root: (write_pixelrec(root / "pixelrec"), ["data.kind=pixelrec"]),
    "movielens": lambda root: (write_ml100k(root / "ml-100k"), ["data.kind=movielens"]),
    "movielens_posters": lambda root: (write_ml100k(root / "ml-100k", posters=root / "posters"),
                                       ["data.kind=movielens", f"data.posters_dir={root / 'posters'}"]),
}
SMALL = ["train.iterations=2", "train.eval_every=100", "train.eval_pairs=4", "evaluation.pairs=4",
         "evaluation.num_inference_steps=2", "evaluation.diversity_items=2", "evaluation.diversity_users=2",
         "evaluation.downstream_impressions=40", "evaluation.downstream_epochs=1", "algo.num_inference_steps=4"]


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCES))
def test_preference_train_evaluate_serve_on_real_data_layouts(micro_world, ray_cluster, tmp_path, source):
    from ray import serve

    from icg_rl.commands.evaluate import main as evaluate
    from icg_rl.commands.preference import main as preference
    from icg_rl.commands.train import main as train
    from icg_rl.config import load_config
    from icg_rl.paths import default_preference_dir
    from icg_rl.serve.app import application
    from tests.serve.conftest import free_port, settings, wait_healthy

    cfg, _ = micro_world
    folder, kind = SOURCES[source](tmp_path)
    common = ["--config", str(MICRO_CONFIG), f"world.dir={cfg.world.dir}", f"data.path={folder}", *kind, *SMALL]

    # 1. the preference model, where the training run will find it without being told
    assert preference(common) == 0
    where = default_preference_dir(load_config(MICRO_CONFIG, [a for a in common if "=" in a]))
    assert where != Path(cfg.world.dir) / "models" / "preference"  # never the CoverWorld model's folder
    summary = json.loads((where / "summary.json").read_text())
    parts = summary["impressions"]
    assert all(parts[s] > 0 for s in ("train", "valid", "test")), parts
    assert summary["auc"] > summary["popularity_auc"] and summary["beats_popularity"], summary

    # 2. RL training on the source's train split, held-out pairs from its test split
    run = tmp_path / "run"
    assert train([*common, "--out", str(run)]) == 0
    trained = json.loads((run / "summary.json").read_text())
    assert "CoverWorld" in trained["oracle"]["unavailable"] and np.isfinite(trained["eval"]["clip_t"])
    assert (run / "checkpoint" / "README.md").is_file() and (run / "checkpoint" / "icg.safetensors").is_file()

    # 3. the evaluation suite: what needs the world's truth is unavailable, with the reason
    assert evaluate([*common, "--checkpoint", str(run / "checkpoint"), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]
    assert metrics["oracle_ctr"]["icg"].startswith("unavailable: data.kind=")
    assert np.isfinite(metrics["clip_t"]["icg"]) and np.isfinite(metrics["aesthetic"]["icg"])

    # 4. the Serve application `python -m icg_rl.serve --checkpoint` deploys, over real HTTP
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(settings(run / "checkpoint")), name="icg_real", route_prefix="/")
        wait_healthy(f"http://127.0.0.1:{port}")
        body = {"title": f"{GROUPS[0][0]} episode 3", "num_images": 1, "seed": 3, "num_inference_steps": 4,
                "user_id": "v0" if source == "pixelrec" else "1"}
        reply = requests.post(f"http://127.0.0.1:{port}/v1/covers", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["images"]) == 1
    finally:
        serve.shutdown()
