"""Where things are: the one resolver of model folders, and where a run's outputs go.

Model folders: a config names each model by a folder (or a hub id), or by the keyword `coverworld`, which means the
embedded world's tiny model of that kind under `WORLD/models/` (`coverworld_flow` for the flow-matching base,
`coverworld_xl` for the SDXL-layout one). Every
part that loads a model asks here, so the keyword's meaning lives in one place.

`resolve_output`: where a run's outputs go, so that a `ray job submit` run's results outlive Ray's temporary copy
of the working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from icg_rl.config import section_hash

COVERWORLD = "coverworld"
COVERWORLD_FLOW = "coverworld_flow"
COVERWORLD_XL = "coverworld_xl"
COVERWORLD_KEYWORDS = (COVERWORLD, COVERWORLD_FLOW, COVERWORLD_XL)
BASE_FOLDERS = {COVERWORLD: "sd", COVERWORLD_FLOW: "sd3", COVERWORLD_XL: "sdxl"}  # under WORLD/models/


# ------------------------------------------------------------------------------------------------ model folders
def world_models(world_dir: str | Path) -> Path:
    """The world build's model folder: base models, CLIP, aesthetic head, MLLM, preference models."""
    return Path(world_dir) / "models"


def base_folder(cfg) -> str:
    """`model.base` as a loadable path or hub id ('coverworld' → models/sd, 'coverworld_flow' → models/sd3,
    'coverworld_xl' → models/sdxl)."""
    if cfg.model.base in BASE_FOLDERS:
        return str(world_models(cfg.world.dir) / BASE_FOLDERS[cfg.model.base])
    return cfg.model.base


def mllm_folder(cfg) -> str:
    """`model.mllm` as a loadable path or hub id."""
    return str(world_models(cfg.world.dir) / "mllm") if cfg.model.mllm == COVERWORLD else cfg.model.mllm


def clip_folder(reward_cfg, world_dir) -> Path:
    """`reward.clip`: the CLIP folder of the relevance rewards, item features and the preference model."""
    return world_models(world_dir) / "clip" if reward_cfg.clip == COVERWORLD else Path(reward_cfg.clip)


def aesthetic_files(reward_cfg, world_dir) -> tuple[Path, Path]:
    """`reward.aesthetic_head` -> (head weights file, CLIP folder the head was trained on). The world's head names
    its CLIP in its config.json; a real head (LAION's .pth) goes with `reward.clip`."""
    if reward_cfg.aesthetic_head != COVERWORLD:
        return Path(reward_cfg.aesthetic_head), clip_folder(reward_cfg, world_dir)
    folder = world_models(world_dir) / "aesthetic"
    return folder / "head.pth", (folder / json.loads((folder / "config.json").read_text())["clip"]).resolve()


def judge_folder(cfg) -> Path | None:
    """`evaluation.judge.model` (None: no judge configured)."""
    model = cfg.evaluation.judge.model
    if model is None:
        return None
    return world_models(cfg.world.dir) / "mllm" if model == COVERWORLD else Path(model)


def default_preference_dir(cfg) -> Path:
    """Where `python -m icg_rl.preference` writes by default and `reward.preference: coverworld` looks: the world's
    `models/preference` for CoverWorld, else a folder of its own per data source (kind, path, click rule, split), so
    a model of one source is never taken for another's."""
    models = world_models(cfg.world.dir)
    if cfg.data.kind == COVERWORLD:
        return models / "preference"
    d = cfg.data
    source = {"kind": d.kind, "path": str(Path(d.path).resolve()) if d.path else None, "rating": d.positive_rating,
              "posters": d.posters_dir, "split": [d.valid_fraction, d.test_fraction, d.heldout_user_fraction,
                                                  d.split_seed]}
    return models / f"preference-{d.kind}-{section_hash(source)[:10]}"


PREFERENCE_CONFIG = "config.json"  # preference/model.py's CONFIG_FILE (paths is below preference: named here too)
PREFERENCE_RUN_MODEL = "model"  # where `python -m icg_rl.preference --out OUT` saves the model: OUT/model/
SHOWN_NAMES = 10  # names of a folder's content an error lists


def preference_folder(reward_cfg, world_dir) -> Path:
    """`reward.preference` as the config names it ('coverworld': the world's own model folder; other sources get
    theirs through `resolve_preference`); `preference_model_folder` turns a `--out` folder into its model folder."""
    if reward_cfg.preference == COVERWORLD:
        return world_models(world_dir) / "preference" / PREFERENCE_RUN_MODEL
    return Path(reward_cfg.preference)


def preference_model_folder(path: str | Path, field: str = "reward.preference") -> Path:
    """The one rule for a preference folder: the model folder itself (holding config.json), or the `--out` folder
    of `python -m icg_rl.preference` (holding model/config.json) -> the model folder. Raises FileNotFoundError
    naming what the folder holds and what to pass (`field` names the setting)."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / PREFERENCE_RUN_MODEL):
        if (candidate / PREFERENCE_CONFIG).is_file():
            return candidate
    raise FileNotFoundError(preference_folder_problem(folder, field))


def preference_folder_problem(folder: Path, field: str = "reward.preference") -> str:
    """Why `folder` is no preference folder: what it holds (and its model/, if any), and what to pass instead."""
    found = f"{folder} {folder_content(folder)}"
    if (folder / PREFERENCE_RUN_MODEL).is_dir():
        found += f"; its {PREFERENCE_RUN_MODEL}/ {folder_content(folder / PREFERENCE_RUN_MODEL)}"
    return (f"{field}: {found} — no {PREFERENCE_CONFIG} there nor in {PREFERENCE_RUN_MODEL}/. Pass the preference "
            f"model's folder (the one holding {PREFERENCE_CONFIG} and preference.safetensors) or the --out folder of "
            f"`python -m icg_rl.preference --out DIR` (the DIR holding {PREFERENCE_RUN_MODEL}/); train one with that "
            f"command if there is none")


def folder_content(folder: Path) -> str:
    """'holds a, b/, …' (up to SHOWN_NAMES names, folders with a slash), 'is empty', 'is a file' or 'does not
    exist' — for errors that say what was found."""
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is a file, not a folder"
    names = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    if not names:
        return "is empty"
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"holds {', '.join(names[:SHOWN_NAMES])}{more}"


def resolve_preference(cfg):
    """`cfg` with `reward.preference` a folder: the keyword 'coverworld' (the default) means this data source's
    default preference model (`default_preference_dir`/model)."""
    if cfg.reward.preference != COVERWORLD or cfg.data.kind == COVERWORLD:
        return cfg
    folder = str(default_preference_dir(cfg) / PREFERENCE_RUN_MODEL)
    return cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"preference": folder})})


def uses_coverworld_models(cfg) -> bool:
    """Whether the run needs the CoverWorld build: its data, or any of its tiny models (base, MLLM, CLIP, aesthetic
    head) — a MovieLens or PixelRec run on one CPU uses them too."""
    return cfg.data.kind == COVERWORLD or cfg.model.base in COVERWORLD_KEYWORDS or COVERWORLD in (
        cfg.model.mllm, cfg.reward.clip, cfg.reward.aesthetic_head)


# ------------------------------------------------------------------------------------------ outputs of a Ray job
# `ray job submit --working-dir .` runs the entrypoint in Ray's copy of the folder (…/runtime_resources/
# working_dir_files/_ray_pkg_<hash>/), which is deleted with the cluster's session: a relative `--out` written there
# is lost. Ray Train answers the same problem with a default storage_path of ~/ray_results; a job's relative output
# paths go under RUNS_ROOT_ENV, else DEFAULT_JOB_ROOT, the same way.
RUNS_ROOT_ENV = "ICG_RL_RUNS"
DEFAULT_JOB_ROOT = "~/icg_rl_runs"
JOB_MARKER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray's job supervisor hands its entrypoint the job's config here


def inside_ray_job() -> bool:
    """True in the entrypoint of a `ray job submit` (not in a plain `python -m ...`, not in a Ray worker)."""
    return JOB_MARKER_ENV in os.environ


def job_output_root() -> Path:
    """Where a Ray job's relative output paths go: $ICG_RL_RUNS, else ~/icg_rl_runs (on the node running the
    job's driver, the head by default)."""
    return Path(os.path.abspath(Path(os.environ.get(RUNS_ROOT_ENV) or DEFAULT_JOB_ROOT).expanduser()))


def resolve_output(value: str, field: str) -> tuple[str, str | None]:
    """An output location as the run will use it -> (absolute path or URI, warning or None).

    A URI (`s3://…`, any pyarrow filesystem) and an absolute path are kept. A relative path is taken from the
    current directory, except inside a Ray job, where the current directory is Ray's temporary copy: there it goes
    under `job_output_root()` and the warning says so (`field` names the setting, e.g. `--out`)."""
    if "://" in value:
        return value, None
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path), None
    if not inside_ray_job():
        return os.path.abspath(path), None
    resolved = os.path.normpath(job_output_root() / path)
    return str(resolved), (f"{field}: {value!r} is relative and this runs as a Ray job, whose working directory "
                           f"({Path.cwd()}) may be Ray's temporary copy, deleted with the cluster; writing to "
                           f"{resolved} instead (${RUNS_ROOT_ENV} sets the root, default {DEFAULT_JOB_ROOT}; an "
                           f"absolute path or a URI is used as given)")
