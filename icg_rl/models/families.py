"""The base-model families ICG supports, by the `_class_name` of a diffusers folder's model_index.json.

`family_class(base)` is the dispatch `ICGPipeline.from_pretrained` uses; `base_layout_problems(folder)` is what
`--check-paths` reports for a base folder that would not load. The table names each family's class by module and
name and `family_class` imports it on demand (as diffusers' auto pipelines map names to classes): the base class
dispatches to its own subclasses, so naming them is the one way to do it without an import circle; this module is a
leaf of `models/` that the pipelines import, never the other way round.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

# model_index.json `_class_name` -> the ICG family class (module, name)
FAMILIES = {
    "StableDiffusionPipeline": ("icg_rl.models.pipeline", "ICGPipeline"),
    "StableDiffusionXLPipeline": ("icg_rl.models.pipeline_xl", "ICGXLPipeline"),
    "StableDiffusion3Pipeline": ("icg_rl.models.pipeline_sd3", "ICGSD3Pipeline"),
}
DEFAULT_FAMILY = "StableDiffusionPipeline"  # a folder without model_index.json; its class dispatches to every family
NOT_LOADED = {"safety_checker"}  # components the ICG pipelines load as None whatever model_index.json lists


def family_name(base_path) -> str:
    index = Path(base_path) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name", "") if index.is_file() else DEFAULT_FAMILY


def family_class(base_path) -> type:
    """The ICG pipeline class for a base folder, by its model_index.json (a folder without one: the SD1.5 class)."""
    kind = family_name(base_path)
    if kind not in FAMILIES:
        raise NotImplementedError(f"model.base: {base_path} is a {kind} folder; ICG supports "
                                  f"{', '.join(FAMILIES)} layouts")
    module, name = FAMILIES[kind]
    return getattr(importlib.import_module(module), name)


def dispatches_every_family(cls: type) -> bool:
    """True for `ICGPipeline` itself, whose from_pretrained loads any family; a family class loads only its own."""
    return (cls.__module__, cls.__qualname__) == FAMILIES[DEFAULT_FAMILY]


def base_layout_problems(folder: Path) -> list[str]:
    """What keeps a base folder from loading: no model_index.json (diffusers' pipeline folders all have one), a
    family ICG does not support, or a component the index lists (`[library, class]`) without its subfolder."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return [f"model.base: {folder} has no model_index.json; expected a diffusers pipeline folder as "
                f"save_pretrained writes it (or a hub id)"]
    index = json.loads(index_path.read_text())
    kind = index.get("_class_name", "")
    if kind not in FAMILIES:
        return [f"model.base: {folder} is a {kind or 'unnamed'} folder; ICG supports {', '.join(FAMILIES)}"]
    return [f"model.base: {folder} lists {name} ({value[1]}) in model_index.json but has no {name}/ subfolder"
            for name, value in index.items()
            if not name.startswith("_") and name not in NOT_LOADED and isinstance(value, list)
            and None not in value and not (folder / name).is_dir()]


