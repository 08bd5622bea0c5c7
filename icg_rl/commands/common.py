"""What every command shares (docs/architecture.md §11): `--config FILE`, trailing dotted overrides, `--out DIR`,
`--verbose`, a readable summary printed and written to `DIR/summary.json`, and exit codes 0 ok / 2 bad configuration
or input / 1 failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icg_rl.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from icg_rl.data.schema import DataFileError
from icg_rl.distributed.placement import VERBOSE_ENV, ResourceShortfall, verbose_requested
from icg_rl.io import atomic_write_json

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class RunInterrupted(RuntimeError):
    """A run that cannot go on (an actor without restarts died) and stopped cleanly: exit 1 with its message (which
    says where to resume from), no traceback."""


# Ray's driver-side progress bars replace builtins.print with a version that redraws every bar under tqdm's global
# lock. A `python -m icg_rl.preference` run hung for good in that redraw while printing its summary after Ray Train
# (its stack: report -> safe_print -> unhide_bars -> tqdm.refresh waiting on tqdm's lock, next to tqdm's monitor
# thread waiting on the same lock). Our commands print between phases, not during bars, so keep the builtin print.
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")


def base_parser(prog: str, description: str, commands: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The shared arguments; `commands` adds a leading positional verb (e.g. `build`) before the overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if commands:
        parser.add_argument("command", choices=commands, help="what to do")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file (default: %(default)s)")
    parser.add_argument("--out", default=None, help="folder where results are written")
    parser.add_argument("--check-paths", action="store_true", help="check that every local model/data path the "
                        "config names exists, report all missing ones at once, and exit (0 = all there)")
    add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE",
                        help="dotted overrides applied after the file, e.g. world.seed=3 algo.lr=1e-4")
    return parser


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's own output: actors' stdout/stderr, Ray Data and Ray Train progress, "
                             "INFO logs of Ray and other libraries (default: one line per stage and the training "
                             "bar; actor errors are raised either way)")


def set_verbosity(verbose: bool) -> None:
    """Apply `--verbose` (or ICG_RL_VERBOSE=1) to this process's logging, and record it for `placement.connect`,
    which decides what Ray forwards. Quiet keeps icg_rl's INFO lines — one per stage —, our progress bars and other
    libraries' warnings, and drops Hugging Face's per-file loading bars; verbose lets every logger's INFO through."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    verbose = verbose_requested()
    if not verbose:  # read when huggingface_hub is first imported: transformers' "Loading weights" bars and the like
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("icg_rl").setLevel(logging.INFO)
    fallback_notice = logging.getLogger("transformers.utils.import_utils")
    if not verbose and _drop_torchvision_fallback not in fallback_notice.filters:
        fallback_notice.addFilter(_drop_torchvision_fallback)


def _drop_torchvision_fallback(record: logging.LogRecord) -> bool:
    """transformers warns once per image-processor class that torchvision is missing and it uses the PIL one. We
    install no torchvision on purpose (README), so quiet runs drop it; with CI=1 transformers also propagates it to
    the root logger, which printed it twice per class."""
    return "requires torchvision (not installed)" not in record.getMessage()


def parse_config(args: argparse.Namespace) -> Config:
    set_verbosity(getattr(args, "verbose", False))
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "check_paths", False):
        from icg_rl.commands.check_paths import check_paths

        problems, notes = check_paths(cfg)
        for note in notes:
            print(f"note: {note}")
        if problems:
            raise ConfigError(f"{args.config}: {len(problems)} path(s) missing:\n  " + "\n  ".join(problems))
        print(f"{args.config}: every local path exists")
        raise SystemExit(0)
    return cfg


def run_main(body: Callable[[], int | None]) -> int:
    """Run a command body and map failures to exit codes with a message on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return body() or EXIT_OK
    except (ConfigError, DataFileError, FileNotFoundError, ResourceShortfall) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:  # noqa: BLE001 - a command must exit 1 with the traceback, not crash differently
        traceback.print_exc()
        return EXIT_FAILURE


def report(summary: dict[str, Any], out: str | Path, title: str) -> Path:
    """Print the summary readably and write the same numbers to `out/summary.json`; returns that file's absolute
    path (the one printed: a relative one says nothing once a Ray job's working directory is gone)."""
    print(f"\n== {title} ==")
    for line in _flatten(summary):
        print(f"  {line}")
    path = Path(os.path.abspath(Path(out) / "summary.json"))
    atomic_write_json(path, summary)
    print(f"  (written to {path})")
    return path


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += _flatten(value, f"{prefix}{key}.")
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
            lines.append(f"{prefix}{key}: {shown}")
    return lines
