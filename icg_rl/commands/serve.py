"""`python -m icg_rl.serve --checkpoint PATH`: serve a trained policy on this machine, quickly.

Reads the serve config (default configs/serve/coverworld.yaml — the file `serve run`/`serve deploy` use), replaces
its policies by --checkpoint (one policy, "default") or --policy NAME=PATH flags (several over one base; the first
is the default), starts (or joins) a Ray cluster and serves until Ctrl-C. Then:

    curl -s localhost:8000/v1/covers -H 'content-type: application/json' -d '{"title": "Night Harbour", "seed": 1}'
    curl -s localhost:8000/v1/models          # the policies, their model versions, the A/B experiments
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from icg_rl.commands.common import add_verbose_flag, run_main, set_verbosity

log = logging.getLogger("icg_rl.serve")
DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve" / "coverworld.yaml"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m icg_rl.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="ICG weights folder (a training run's OUT/checkpoint), "
                        "served as the one policy 'default'")
    source.add_argument("--policy", action="append", default=None, metavar="NAME=PATH",
                        help="a named policy (repeat for several over one base; the first is the default); the "
                        "config's experiments must name only these")
    p.add_argument("--config", default=str(DEFAULT_SERVE_CONFIG), help="Ray Serve config YAML (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a new local one)")
    p.add_argument("--max-batch-size", type=int, default=None, help="override @serve.batch's max_batch_size")
    add_verbose_flag(p)  # quiet by default: replicas' logs (access lines included) stay in Ray's log files
    return p


def load_serve_config(path: str | Path) -> dict:
    """The YAML, validated by Ray's own schema for `serve deploy` files; returns its single application."""
    from ray.serve.schema import ServeDeploySchema

    from icg_rl.config import ConfigError

    try:
        raw = yaml.safe_load(Path(path).read_text())
        schema = ServeDeploySchema.model_validate(raw)
    except FileNotFoundError:
        raise
    except Exception as error:  # pydantic / YAML: name the file
        raise ConfigError(f"{path}: not a valid Ray Serve config ({error})") from None
    if len(schema.applications) != 1:
        raise ConfigError(f"{path}: applications: expected exactly one, found {len(schema.applications)}")
    return raw["applications"][0]


def policy_flags(values: list[str]) -> dict[str, str]:
    """--policy NAME=PATH flags -> {name: path}; ConfigError names a malformed or repeated one."""
    from icg_rl.config import ConfigError

    policies: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--policy: {value!r} is not NAME=PATH")
        if name in policies:
            raise ConfigError(f"--policy: {name!r} given twice")
        policies[name] = path
    return policies


def app_args(app_config: dict, checkpoint: str | None = None, policies: dict[str, str] | None = None) -> dict:
    """The YAML's `args`, its policies replaced by `checkpoint` (one policy: the YAML's experiments go too) or by
    `policies` when given."""
    args = dict(app_config.get("args") or {})
    if checkpoint is not None or policies:
        for key in ("checkpoint", "policies") + (("experiments",) if checkpoint is not None else ()):
            args.pop(key, None)
        args |= {"checkpoint": checkpoint} if checkpoint is not None else {"policies": policies}
    return args


def application(app_config: dict, checkpoint: str | None = None, max_batch_size: int | None = None,
                policies: dict[str, str] | None = None):
    """build_app with the YAML's per-deployment options applied, as `serve run` would apply them; `checkpoint` or
    `policies` replace the YAML's policies."""
    from icg_rl.serve.app import application as bound_application

    args = app_args(app_config, checkpoint, policies)
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app_config.get("deployments", [])}
    if max_batch_size is not None:
        generator = options.setdefault("CoverGenerator", {})
        generator["user_config"] = dict(generator.get("user_config") or {}, max_batch_size=max_batch_size)
    return bound_application(args, options)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        import pydantic
        from ray import serve

        from icg_rl.config import ConfigError
        from icg_rl.config.serve import ServeSettings
        from icg_rl.distributed.placement import connect

        set_verbosity(args.verbose)
        app_config = load_serve_config(args.config)
        policies = policy_flags(args.policy or [])
        try:
            settings = ServeSettings.model_validate(app_args(app_config, args.checkpoint, policies))
        except pydantic.ValidationError as error:
            raise ConfigError(f"{args.config}: args: {error}") from None
        for name, folder in settings.policy_checkpoints().items():
            if not Path(folder).is_dir():
                where = ("--checkpoint" if args.checkpoint else f"--policy {name}" if policies
                         else f"{args.config}: args.{'checkpoint' if settings.checkpoint else 'policies.' + name}")
                raise FileNotFoundError(f"{where}: {folder} is not a folder; train one with `python -m icg_rl.train` "
                                        f"(it writes OUT/checkpoint)")
        app = application(app_config, args.checkpoint, args.max_batch_size, policies)
        log.info("Ray: %s", connect(args.address))
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=app_config["name"], route_prefix=app_config.get("route_prefix", "/"))
        log.info("serving %s at http://%s:%d (POST /v1/covers, GET /v1/models, GET /healthz, /docs); Ctrl-C stops",
                 settings.policy_checkpoints(), args.host, args.port)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()

    return run_main(body)
