"""The serving contract (docs/architecture.md §9): application settings, request and response bodies, as pydantic
models.

`ServeSettings` is what `configs/serve/*.yaml` passes as the application's `args` (the same YAML works for `serve run`,
`serve deploy` and a KubeRay RayService). The request/response models are the API; FastAPI turns them into the
OpenAPI schema at `/openapi.json`. Limits live in the settings so an operator can tighten them without code.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**63 - 1
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


class CoverRequest(BaseModel):
    """POST /v1/covers. Give `user_id` for a known user, `history` (item ids, oldest first) for a user the model has
    not seen, or neither for a cold start."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"title": "The Last Lighthouse", "user_id": "u00012", "num_images": 2, "seed": 7}]})

    title: str = Field(..., min_length=1, description="the item's title")
    reference_image: str | None = Field(None, description="the item's reference cover: base64 PNG or JPEG bytes "
                                        "(a `data:image/...;base64,` prefix is allowed); never a path or URL")
    user_id: str | None = Field(None, min_length=1, max_length=128, description="a user id from training")
    history: list[str] | None = Field(None, description="item ids the user clicked, oldest first")
    num_images: int = Field(1, ge=1, description="images to generate")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same request → same bytes; "
                             "default: random (reported in the response)")
    num_inference_steps: int | None = Field(None, ge=1, description="denoising steps")
    guidance_scale: float | None = Field(None, ge=1.0, description="classifier-free guidance scale")
    policy: str | None = Field(None, min_length=1, max_length=64, description="the policy that makes the covers "
                               "(GET /v1/models lists them); default: the first configured")
    experiment: str | None = Field(None, min_length=1, max_length=64, description="an A/B experiment instead of a "
                                   "policy: its arm is chosen by a stable hash of user_id (of the seed without one)")

    @model_validator(mode="after")
    def _history_items_are_ids(self) -> CoverRequest:
        for i, item in enumerate(self.history or []):
            if not item or len(item) > 128:
                raise ValueError(f"history[{i}]: item ids are 1..128 characters, got {len(item)}")
        return self


class CoverResponse(BaseModel):
    images: list[str] = Field(..., description="base64 PNGs, one per requested image")
    model_version: str = Field(..., description="hash of the ICG weights that made the covers")
    policy: str = Field(..., description="the policy that made the covers (the experiment's arm, if one was named)")
    experiment: str | None = Field(None, description="the experiment named by the request, if any")
    user_mode: Literal["known", "history", "cold_start"] = Field(..., description="how the user was represented")
    seed: int = Field(..., description="the seed used (send it back to reproduce the images)")
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    ignored_history_items: int = Field(0, description="history ids the model has no features for (skipped)")


class ErrorBody(BaseModel):
    error: str = Field(..., description="what was wrong, naming the field and what is allowed")
    detail: list | None = Field(None, description="field-level validation errors, when there are several")


class ModelInfo(BaseModel):
    model_version: str
    checkpoint: str
    config: dict
    versions: dict[str, str]
    limits: Limits
    batching: Batching
    image_size: int


class PolicyEntry(BaseModel):
    name: str
    model_version: str = Field(..., description="hash of the policy's ICG weights")
    checkpoint: str


class ModelsList(BaseModel):
    """GET /v1/models: the policies this application serves and its A/B splits."""

    default_policy: str
    policies: list[PolicyEntry]
    experiments: dict[str, dict[str, float]]
    max_policies_per_replica: int


class ReplicaStats(BaseModel):
    """GET /v1/stats: the counters of the generator replica that answered (one of them, when there are several)."""

    replica: str
    base_loads: int = Field(..., description="times this replica loaded a base model and MLLM (1: once, at start)")
    policy_loads: dict[str, int] = Field(..., description="times each policy's ICG weights were read from disk")
    weight_swaps: int = Field(..., description="times the ICG weights in the pipeline were replaced by another "
                              "policy's (from memory)")
    batches: int
    requests: dict[str, int] = Field(..., description="cover requests generated, per policy")
