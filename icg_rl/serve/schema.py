"""The serving contract (docs/architecture.md §9): request and response bodies, as pydantic models. They are the
API; FastAPI turns them into the OpenAPI schema at `/openapi.json`. The application's settings (`ServeSettings`,
limits, batching) are configuration: `icg_rl/config/serve.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icg_rl.config.serve import Batching, Limits

MAX_SEED = 2**63 - 1


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
