"""`python -m icg_rl.world build`: generate CoverWorld and train its tiny base models (cached by config hash)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from icg_rl.commands.common import base_parser, parse_config, report, run_main


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m icg_rl.world", "Build CoverWorld: tables + covers, then its tiny base models "
                         "under OUT/models/. Reuses a build whose config hash matches.", commands=("build",))
    parser.add_argument("--force", action="store_true", help="rebuild even when a matching build exists")
    parser.add_argument("--skip-models", action="store_true", help="only the world (tables + covers)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_intermixed_args(argv if argv is not None else sys.argv[1:])  # overrides anywhere

    def body() -> int:
        cfg = parse_config(args)
        out = Path(args.out or cfg.world.dir)
        summary = build(cfg, out, force=args.force, models=not args.skip_models, progress=not args.quiet)
        report(summary, out, f"CoverWorld at {out}")
        return 0

    return run_main(body)


def build(cfg, out: Path, force: bool = False, models: bool = True, progress: bool = True) -> dict:
    from icg_rl.world.generate import generate_world, world_is_current, write_world
    from icg_rl.world.stats import world_stats

    start = time.perf_counter()
    if force or not world_is_current(out, cfg.world):
        world = generate_world(cfg.world, progress=progress)
        write_world(world, out, progress=progress)
        summary = {"world": world.summary | {"cached": False}}
    else:
        summary = {"world": {"cached": True}}
    summary["world"] |= world_stats(out)
    if models:
        from icg_rl.models.build import build_base_models

        summary["models"] = build_base_models(out, cfg.world, cfg.zoo, progress=progress, force=force)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if not summary["world"]["cached"]:  # `train` / `preference` rebuild a world too: its summary must follow
        from icg_rl.io import atomic_write_json

        atomic_write_json(out / "summary.json", summary)
    return summary
