"""Config files into a raw tree: YAML reading with `extends:`, and `key.path=value` overrides.
`icg_rl/config/sections.py` validates the tree; both raise `ConfigError`, whose every line names a key path, the
value given and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ConfigError(ValueError):
    """Bad configuration: every line names a key path, the value given and what is allowed."""


def read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict. `extends: other.yaml` (relative to the file) starts from that file's tree and merges
    this one over it, section by section — how the placement variants reuse a model config."""
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} does not exist" if not seen else
                          f"{seen[-1]}: extends: file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends: a cycle ({' -> '.join(str(p) for p in (*seen, path))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: got {parent!r}; expected the path of another config file")
    return deep_merge(read_tree(path.parent / parent, (*seen, path.resolve())), raw)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_dicts else value
    return merged


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, bools, lists, null)."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. algo.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    node: Any = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value
