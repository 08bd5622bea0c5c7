"""`--check-paths`: every model and data location a config names, checked before a long job starts.

A value is checked as a local path when it exists, or looks like one (absolute, `./`, `../`, `~`, a file suffix). A
value of the form `org/name` that does not exist here is taken as a Hugging Face hub id (downloaded at run time, so
not checked); write `./org/name` to force a local check. `coverworld` values name the embedded world's models.
A local `model.base` is also checked as the pipeline folder its family loads (`models/families.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

from icg_rl.models.families import base_layout_problems
from icg_rl.paths import COVERWORLD_KEYWORDS, preference_model_folder

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_HINT = re.compile(r"^(/|\./|\.\./|~)|\.(pth|pt|bin|safetensors|json|yaml|csv|parquet)$")


def named_paths(cfg) -> dict[str, str | None]:
    """Every config key that names a model, weight file or dataset, with its value."""
    e = cfg.evaluation
    return {"model.base": cfg.model.base, "model.mllm": cfg.model.mllm, "reward.clip": cfg.reward.clip,
            "reward.aesthetic_head": cfg.reward.aesthetic_head, "reward.pickscore": cfg.reward.pickscore,
            "reward.preference": cfg.reward.preference, "data.path": cfg.data.path,
            "ray.deepspeed_config": cfg.ray.deepspeed_config,
            "evaluation.lpips.backbone_weights": e.lpips.backbone_weights,
            "evaluation.lpips.linear_weights": e.lpips.linear_weights, "evaluation.judge.model": e.judge.model}


def check_paths(cfg) -> tuple[list[str], list[str]]:
    """-> (problems: one line per missing local path, notes: what was not checked and why)."""
    problems, notes = [], []
    for key, value in named_paths(cfg).items():
        if value is None or value in COVERWORLD_KEYWORDS:
            continue
        path = Path(value).expanduser()
        if path.exists():
            problems += base_layout_problems(path) if key == "model.base" else []
            problems += preference_layout_problems(path) if key == "reward.preference" else []
            continue
        if HUB_ID.match(value) and not LOCAL_HINT.search(value):
            notes.append(f"{key}: {value!r} is not a local path here; taken as a hub id (not checked)")
        else:
            problems.append(f"{key}: {value} does not exist")
    return problems, notes


def preference_layout_problems(folder: Path) -> list[str]:
    """What keeps `reward.preference` from loading: neither a model folder nor a `--out` folder holding model/."""
    try:
        preference_model_folder(folder)
    except FileNotFoundError as error:
        return [str(error)]
    return []
