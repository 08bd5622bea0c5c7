"""The serving contract (docs/architecture.md §9): application settings, request and response bodies, as pydantic
models.

`ServeSettings` is what `configs/serve/*.yaml` passes as the application's `args` (the same YAML works for `serve run`,
`serve deploy` and a KubeRay RayService). The request/response models are the API; FastAPI turns them into the
OpenAPI schema at `/openapi.json`. Limits live in the settings so an operator can tighten them without code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**63 - 1


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


class Batching(BaseModel):
    """Ray Serve request batching of the generator (`@serve.batch`); also settable live through `user_config`."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, description="requests merged into one pipeline call (1 = no batching)")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, description="how long a batch waits to fill, seconds")


class ServeSettings(BaseModel):
    """The application's arguments (`args:` in configs/serve/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(..., description="folder of ICG weights (`OUT/checkpoint` of a training run, or any "
                            "ICGPipeline.save_pretrained folder); a relative path is resolved where the app is built")
    base: str | None = Field(None, description="base model folder; default: the one the checkpoint was trained on")
    mllm: str | None = Field(None, description="MLLM folder; default: the one the checkpoint was trained on")
    image_size: int | None = Field(None, ge=8, le=2048, description="output side length in pixels (a multiple of "
                                   "the VAE's scale factor); default: the base model's native size")
    default_steps: int = Field(20, ge=1, description="denoising steps when a request names none")
    default_guidance_scale: float = Field(3.0, ge=1.0, description="CFG scale when a request names none")
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    auth_token_env: str | None = Field(None, description="name of an environment variable holding a bearer token; "
                                       "when set, every endpoint but /healthz requires `Authorization: Bearer <token>`")
    torch_threads: int = Field(0, ge=0, description="torch threads per generator replica (0 = torch's default)")


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

    @model_validator(mode="after")
    def _history_items_are_ids(self) -> CoverRequest:
        for i, item in enumerate(self.history or []):
            if not item or len(item) > 128:
                raise ValueError(f"history[{i}]: item ids are 1..128 characters, got {len(item)}")
        return self


class CoverResponse(BaseModel):
    images: list[str] = Field(..., description="base64 PNGs, one per requested image")
    model_version: str = Field(..., description="checkpoint name + hash of its ICG weights")
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
