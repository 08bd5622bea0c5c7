"""The Serve application's settings (docs/architecture.md §9): what `configs/serve/*.yaml` passes as the app's `args`
(the same YAML works for `serve run`, `serve deploy` and a KubeRay RayService). Limits live here so an operator can
tighten them without code. The HTTP request/response bodies are the API and live in `icg_rl/serve/schema.py`."""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_POLICY = "default"  # the name of the one policy a plain `checkpoint:` serves
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class Limits(BaseModel):
    """What one request may ask for. Every bound is checked before any work is scheduled."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="largest request body accepted (413 above it)")
    max_image_pixels: int = Field(2048 * 2048, ge=64, description="largest reference image, width × height, checked "
                                  "from the header before decoding (decompression-bomb guard)")
    max_title_chars: int = Field(512, ge=1, description="longest title")
    max_history: int = Field(64, ge=0, description="most item ids in a history")
    max_num_images: int = Field(8, ge=1, description="most images per request")
    max_steps: int = Field(100, ge=1, description="most denoising steps per request")
    max_guidance_scale: float = Field(20.0, ge=1.0, description="largest classifier-free guidance scale")
    linger_max_bytes: int = Field(64 * 2**20, ge=0, description="after a 413, body bytes still read and discarded "
                                  "before the connection closes, so a client that writes its whole body before "
                                  "reading (urllib) sees the 413 instead of a reset (lingering close); a body "
                                  "declared larger is not read at all")
    linger_timeout_s: float = Field(10.0, ge=0.0, description="longest time spent discarding a refused body, seconds")


class Batching(BaseModel):
    """Ray Serve request batching of the generator (`@serve.batch`); also settable live through `user_config`."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, description="requests merged into one pipeline call (1 = no batching)")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, description="how long a batch waits to fill, seconds (a "
                                        "request that finds its replica idle does not wait)")


class Recovery(BaseModel):
    """Generator replicas that die (their requests are resent) or wedge (health checks get them replaced).
    Generation is idempotent (the ingress fixes the seed before the first attempt), so a resent request gets the
    response an undisturbed one would have (icg_rl/serve/recovery.py)."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(2, ge=0, description="times the ingress resends a request whose generator replica "
                             "died while holding it (its process killed, its node lost); Serve routes the resend "
                             "to a live replica. After that the client gets a 503 naming the attempts; 0 = no resend")
    retry_backoff_s: float = Field(0.2, ge=0.0, description="wait before the first resend, seconds, doubled for "
                                   "each further one")
    max_batch_s: float = Field(600.0, gt=0.0, description="a pipeline call running longer marks its replica "
                               "wedged: its health check fails and Serve replaces it (its requests are then resent). "
                               "Keep it above the slowest legitimate batch (max_batch_size × num_images × steps)")
    max_failed_batches: int = Field(5, ge=1, description="pipeline calls failing in a row (a broken model or device) "
                                    "that fail the replica's health check, so Serve replaces it")


class ServeSettings(BaseModel):
    """The application's arguments (`args:` in configs/serve/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="one policy: its folder of ICG weights (`OUT/checkpoint` of a "
                                   "training run, or any ICGPipeline.save_pretrained folder), served as the policy "
                                   "'default'; give this or `policies`. Relative paths are resolved where the app is "
                                   "built")
    policies: dict[str, str] = Field(default_factory=dict, description="several policies over one base and MLLM: "
                                     "{name: ICG weights folder}; the first is the default. Give this or `checkpoint`")
    experiments: dict[str, dict[str, float]] = Field(default_factory=dict, description="A/B splits: {experiment: "
                                                     "{policy: weight}}; a request naming the experiment gets an arm "
                                                     "by a stable hash of its user_id (of its seed without one)")
    max_policies_per_replica: int = Field(4, ge=1, description="policies whose ICG weights a generator replica holds "
                                          "(LRU, Ray Serve model multiplexing); base and MLLM are loaded once")
    base: str | None = Field(None, description="base model folder; default: the one the checkpoints were trained on")
    mllm: str | None = Field(None, description="MLLM folder; default: the one the checkpoints were trained on")
    image_size: int | None = Field(None, ge=8, le=2048, description="output side length in pixels (a multiple of "
                                   "the VAE's scale factor); default: the base model's native size")
    default_steps: int = Field(20, ge=1, description="denoising steps when a request names none")
    default_guidance_scale: float = Field(3.0, ge=1.0, description="CFG scale when a request names none")
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    recovery: Recovery = Field(default_factory=Recovery)
    auth_token_env: str | None = Field(None, description="name of an environment variable holding a bearer token; "
                                       "when set, every endpoint but /healthz requires `Authorization: Bearer <token>`")
    torch_threads: int = Field(0, ge=0, description="torch threads per generator replica (0 = torch's default); on "
                               "CPU try 1: the pipeline runs in a worker thread, where OpenMP teams wake slowly")

    @model_validator(mode="after")
    def _policies_and_experiments(self) -> ServeSettings:
        if (self.checkpoint is None) == (not self.policies):
            raise ValueError("checkpoint, policies: give exactly one — `checkpoint: PATH` serves one policy named "
                             f"{DEFAULT_POLICY!r}, `policies: {{name: PATH, ...}}` several over one base")
        for field, names in (("policies", self.policies), ("experiments", self.experiments)):
            for name in names:
                if not NAME_PATTERN.match(name):
                    raise ValueError(f"{field}: {name!r} is not a valid name; use {NAME_RULE}")
        known = list(self.policy_checkpoints())
        for experiment, arms in self.experiments.items():
            if not arms:
                raise ValueError(f"experiments.{experiment}: no arms; give {{policy: weight, ...}}")
            for policy, weight in arms.items():
                if policy not in known:
                    raise ValueError(f"experiments.{experiment}.{policy}: no such policy; policies are {known}")
                if not (math.isfinite(weight) and weight > 0):
                    raise ValueError(f"experiments.{experiment}.{policy}: weight {weight}; weights must be > 0")
        return self

    def policy_checkpoints(self) -> dict[str, str]:
        """name -> ICG weights folder, the default first."""
        return dict(self.policies) if self.policies else {DEFAULT_POLICY: str(self.checkpoint)}

    @property
    def default_policy(self) -> str:
        return next(iter(self.policy_checkpoints()))
