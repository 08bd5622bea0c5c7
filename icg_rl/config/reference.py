"""The configuration reference, generated from the pydantic models: `python -m icg_rl.config.reference --write`
rewrites docs/configuration.md (a test fails when the file is stale)."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from pydantic import BaseModel

from icg_rl.config import Config
from icg_rl.config.serve import ServeSettings

TARGET = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def type_name(annotation) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    return (text.replace("typing.", "").replace("Literal", "one of ").replace("NoneType", "None")
            .replace("<class '", "").replace("'>", ""))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def section_lines(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        is_section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        sub = field.annotation if is_section else None
        if sub is not None:
            nested.append((f"{prefix}{key}", sub, field.description))
            continue
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{key}` | {type_name(field.annotation)} | {default_text(field)} | {meaning} |")
    out = lines if len(lines) > 2 else []
    for path, sub, description in nested:
        doc = description or (sub.__doc__ or "").strip().splitlines()[0]
        out += ["", f"**`{path}`** — {doc}", ""] + section_lines(sub, f"{path}.")
    return out


def reference() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the pydantic models in `icg_rl/config/sections.py` and `icg_rl/config/serve.py` by",
             "`python -m icg_rl.config.reference --write`; do not edit by hand (a test fails when it is stale).", "",
             "Training, evaluation and the preference model read one YAML file (`--config`, default",
             "`configs/coverworld.yaml`) with these sections; any key can be overridden on the command line as",
             "`section.key=value` (parsed as YAML). `extends: other.yaml` at the top of a file starts from another",
             "file and merges this one over it. Unknown keys and bad values are errors that name the key.", ""]
    for name, field in Config.model_fields.items():
        model = typing.get_args(field.annotation)[0] if typing.get_args(field.annotation) else field.annotation
        title = (model.__doc__ or "").strip().splitlines()[0]
        lines += [f"## `{name}` — {title}", ""] + section_lines(model, f"{name}.")
        lines.append("")
    lines += ["## Serve application `args` (configs/serve/*.yaml) — "
              + (ServeSettings.__doc__ or "").strip().splitlines()[0], ""] + section_lines(ServeSettings, "") + [""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m icg_rl.config.reference", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite {TARGET} (default: print)")
    args = parser.parse_args()
    text = reference()
    if args.write:
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
