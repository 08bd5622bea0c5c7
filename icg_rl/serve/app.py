"""The Serve application: a FastAPI ingress in front of the generator deployment.

    client ──HTTP──▶ CoverAPI (api.py: size limit, auth, validation, image decoding, policy or experiment arm)
                        └──handle, multiplexed_model_id=policy──▶ CoverGenerator (generator.py: one base + MLLM,
                                                                  policies' ICG weights LRU, @serve.batch)

`build_app(args)` is the application builder `configs/serve/*.yaml` names (`import_path:
icg_rl.serve.app:build_app`), so `serve run`, `serve deploy` and a KubeRay RayService start the same thing.
The ingress builds its FastAPI app in the replica (`__serve_build_asgi_app__`), after its settings and secrets are
known there, so limits and the token are per deployment rather than baked into a module-level app.
"""

from __future__ import annotations

import os
from pathlib import Path

from ray import serve

from icg_rl.config.serve import ServeSettings
from icg_rl.serve.api import create_api
from icg_rl.serve.generator import CoverGenerator


@serve.deployment(name="CoverAPI", max_ongoing_requests=64)
@serve.ingress()
class CoverAPI:
    def __init__(self, generator, settings: dict):
        self.generator = generator
        self.settings = ServeSettings.model_validate(settings)
        self.token = None
        if self.settings.auth_token_env:
            self.token = os.environ.get(self.settings.auth_token_env) or None
            if self.token is None:
                raise RuntimeError(f"auth_token_env: the environment variable {self.settings.auth_token_env} is "
                                   f"not set (or empty) in the ingress replica; set it (runtime_env env_vars, a "
                                   f"Kubernetes secret) or remove auth_token_env to serve without auth")

    def __serve_build_asgi_app__(self):
        return create_api(self.settings, self.generator, self.token)


def build_app(args: ServeSettings) -> serve.Application:
    """The application builder `configs/serve/*.yaml` names; Serve validates `args:` against ServeSettings."""
    return application(args)


def application(args: ServeSettings | dict, deployment_options: dict[str, dict] | None = None) -> serve.Application:
    """The bound application. `deployment_options` (name → `.options()` keywords: the YAML's `deployments:`
    entries) is for callers outside `serve run`/`serve deploy`, which apply that section themselves."""
    settings = ServeSettings.model_validate(args if isinstance(args, dict) else args.model_dump())
    if settings.checkpoint is not None:  # paths relative to where the app is built, not to a replica's directory
        settings.checkpoint = resolved(settings.checkpoint)
    settings.policies = {name: resolved(path) for name, path in settings.policies.items()}
    payload, options = settings.model_dump(), deployment_options or {}
    generator = CoverGenerator.options(**({"user_config": settings.batching.model_dump()}
                                          | options.get("CoverGenerator", {}))).bind(payload)
    return CoverAPI.options(**options.get("CoverAPI", {})).bind(generator, payload)


def resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())
