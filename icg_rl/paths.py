"""`--check-paths`: every model and data location a config names, checked before a long job starts.

A value is checked as a local path when it exists, or looks like one (absolute, `./`, `../`, `~`, a file suffix). A
value of the form `org/name` that does not exist here is taken as a Hugging Face hub id (downloaded at run time, so
not checked); write `./org/name` to force a local check. `coverworld` values name the embedded world's models.
A local `model.base` is also checked as the pipeline folder its family loads: a model_index.json naming a family
ICG supports (SD1.x/2.x, SDXL, SD3), and a subfolder for every component it lists.

`resolve_output`: where a run's outputs go, so that a `ray job submit` run's results outlive Ray's temporary copy
of the working directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_HINT = re.compile(r"^(/|\./|\.\./|~)|\.(pth|pt|bin|safetensors|json|yaml|csv|parquet)$")
NOT_LOADED = {"safety_checker"}  # components the ICG pipelines load as None whatever model_index.json lists


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
        if value is None or value in ("coverworld", "coverworld_flow"):
            continue
        path = Path(value).expanduser()
        if path.exists():
            problems += base_layout_problems(path) if key == "model.base" else []
            continue
        if HUB_ID.match(value) and not LOCAL_HINT.search(value):
            notes.append(f"{key}: {value!r} is not a local path here; taken as a hub id (not checked)")
        else:
            problems.append(f"{key}: {value} does not exist")
    return problems, notes


def base_layout_problems(folder: Path) -> list[str]:
    """What keeps a base folder from loading: no model_index.json (diffusers' pipeline folders all have one), a
    family ICG does not support, or a component the index lists (`[library, class]`) without its subfolder."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return [f"model.base: {folder} has no model_index.json; expected a diffusers pipeline folder as "
                f"save_pretrained writes it (or a hub id)"]
    from icg_rl.models.pipeline import FAMILIES

    index = json.loads(index_path.read_text())
    kind = index.get("_class_name", "")
    if kind not in FAMILIES:
        return [f"model.base: {folder} is a {kind or 'unnamed'} folder; ICG supports {', '.join(FAMILIES)}"]
    return [f"model.base: {folder} lists {name} ({value[1]}) in model_index.json but has no {name}/ subfolder"
            for name, value in index.items()
            if not name.startswith("_") and name not in NOT_LOADED and isinstance(value, list)
            and None not in value and not (folder / name).is_dir()]


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
