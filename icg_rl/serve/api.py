"""The HTTP API (FastAPI), built per ingress replica from its settings and a handle to the generator.

Routes: `POST /v1/covers`, `GET /v1/model`, `GET /healthz`; the OpenAPI schema at `/openapi.json` comes from the
pydantic models in schema.py. Order of checks on a cover request: body size (middleware) → auth → schema (422) →
limits and reference image (400) → generation. Every refusal is JSON `{"error": "<field>: <what is wrong>"}`.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from icg_rl.serve.generator import CoverJob, random_seed
from icg_rl.serve.images import BadImage, decode_reference_image, encode_image
from icg_rl.serve.limits import BodyLimit
from icg_rl.serve.schema import CoverRequest, CoverResponse, ErrorBody, ModelInfo, ServeSettings

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 422)}


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def refusal(status: int, message: str, detail: list | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content=ErrorBody(error=message, detail=detail).model_dump())


def create_api(settings: ServeSettings, generator, token: str | None) -> FastAPI:
    """`generator`: a DeploymentHandle to CoverGenerator (its `generate` and `info` methods)."""
    api = FastAPI(title="icg_rl covers", version="1",
                  description="Personalized cover images from a trained ICG policy (title + reference image + user).")
    api.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": field_name(e), "problem": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                    for e in exc.errors()]
        first = problems[0] if problems else {"field": "body", "problem": "invalid"}
        return refusal(422, f"{first['field']}: {first['problem']}", problems)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return refusal(exc.status_code, str(exc.detail))

    @api.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return refusal(exc.status, exc.message, headers=exc.headers)

    async def authorized(request: Request) -> None:
        """Dependency: runs before the body is parsed, so unauthenticated clients learn nothing about the schema."""
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Refused(401, "authorization: a valid `Bearer <token>` header is required",
                          headers={"WWW-Authenticate": "Bearer"})

    @api.get("/healthz")
    async def healthz() -> dict:
        """Liveness and readiness (no token: for load balancers and Kubernetes probes)."""
        info = await generator.info.remote()
        return {"status": "ok", "model_version": info["model_version"]}

    @api.get("/v1/model", response_model=ModelInfo, responses=ERRORS, dependencies=[Depends(authorized)])
    async def model() -> ModelInfo:
        info = await generator.info.remote()
        return ModelInfo(model_version=info["model_version"], checkpoint=info["checkpoint"], config=info["config"],
                         versions=info["versions"], limits=settings.limits, batching=info["batching"],
                         image_size=info["image_size"])

    @api.post("/v1/covers", response_model=CoverResponse, responses=ERRORS, dependencies=[Depends(authorized)])
    async def covers(body: CoverRequest) -> CoverResponse:
        job = cover_job(body, settings)
        result = await generator.generate.remote(job)
        height, width = result.images[0].shape[:2]
        return CoverResponse(images=[encode_image(image) for image in result.images],
                             model_version=result.model_version, user_mode=result.user_mode, seed=job.seed,
                             width=width, height=height, num_inference_steps=job.steps,
                             guidance_scale=job.guidance_scale, ignored_history_items=result.ignored_history_items)

    return api


def field_name(error: dict) -> str:
    """pydantic's error location as a dotted field name ('history.2'); 'body' for the body as a whole."""
    loc = list(error.get("loc", ()))
    if loc[:1] == ["body"]:
        loc = loc[1:]
    if error.get("type") == "json_invalid" or not loc:
        return "body"
    return ".".join(str(part) for part in loc)


def cover_job(body: CoverRequest, settings: ServeSettings) -> CoverJob:
    """The limits the schema cannot know (they come from the settings), then the image: Refused(400) otherwise."""
    limits = settings.limits
    steps = body.num_inference_steps or settings.default_steps
    guidance = body.guidance_scale if body.guidance_scale is not None else settings.default_guidance_scale
    history = body.history or []
    checks = [
        (len(body.title) <= limits.max_title_chars,
         f"title: {len(body.title)} characters; at most {limits.max_title_chars} allowed"),
        (body.num_images <= limits.max_num_images,
         f"num_images: {body.num_images}; allowed 1..{limits.max_num_images}"),
        (steps <= limits.max_steps, f"num_inference_steps: {steps}; allowed 1..{limits.max_steps}"),
        (guidance <= limits.max_guidance_scale,
         f"guidance_scale: {guidance}; allowed 1.0..{limits.max_guidance_scale}"),
        (len(history) <= limits.max_history, f"history: {len(history)} items; at most {limits.max_history} allowed"),
    ]
    for ok, message in checks:
        if not ok:
            raise Refused(400, message)
    reference = None
    if body.reference_image is not None:
        try:
            reference = decode_reference_image(body.reference_image, limits.max_image_pixels)
        except BadImage as bad:
            raise Refused(400, str(bad)) from None
    return CoverJob(title=body.title, reference=reference, user_id=body.user_id, history=tuple(history),
                    num_images=body.num_images, seed=body.seed if body.seed is not None else random_seed(),
                    steps=steps, guidance_scale=float(guidance))
