"""The HTTP API (FastAPI), built per ingress replica from its settings and a handle to the generator.

Routes: `POST /v1/covers`, `GET /v1/models` (policies and experiments), `GET /v1/model` (the default policy in
detail), `GET /v1/stats` (a generator replica's counters), `GET /healthz`; the OpenAPI schema at `/openapi.json`
comes from the pydantic models in schema.py. Order of checks on a cover request: body size (middleware) → auth →
schema (422) → limits, policy or experiment, reference image (400) → generation, on the generator handle for the
request's policy (Serve's `multiplexed_model_id`: routed to a replica holding that policy), resent when the replica
dies under it (recovery.py; 503 once `recovery.max_retries` resends also died). Every refusal is JSON
`{"error": "<field>: <what is wrong>"}`; every cover response names its policy and model version and carries a
`Server-Timing` header (where its time went: ingress work, generator round trip, weight swap, pipeline, encoding;
`attempts`: generator calls made).
"""

from __future__ import annotations

import hmac
import time

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from icg_rl.config.serve import ServeSettings
from icg_rl.serve.experiments import choose_arm, split_key
from icg_rl.serve.generator import CoverJob, CoverResult, random_seed
from icg_rl.serve.images import BadImage, decode_reference_image, encode_image
from icg_rl.serve.limits import BodyLimit
from icg_rl.serve.metrics import PolicyMetrics
from icg_rl.serve.recovery import ReplicaLost, with_retries
from icg_rl.serve.schema import (
    CoverRequest,
    CoverResponse,
    ErrorBody,
    ModelInfo,
    ModelsList,
    ReplicaStats,
)

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 422)} | {
    503: {"model": ErrorBody, "description": "the generator replica died under the request on every attempt "
                                             "(recovery.max_retries)"}}


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def refusal(status: int, message: str, detail: list | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content=ErrorBody(error=message, detail=detail).model_dump())


def create_api(settings: ServeSettings, generator, token: str | None) -> FastAPI:
    """`generator`: a DeploymentHandle to CoverGenerator (its `generate`, `info` and `stats` methods)."""
    api = FastAPI(title="icg_rl covers", version="1",
                  description="Personalized cover images from trained ICG policies (title + reference image + user).")
    limits = settings.limits
    api.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, linger_bytes=limits.linger_max_bytes,
                       linger_s=limits.linger_timeout_s)
    handles = {name: generator.options(multiplexed_model_id=name) for name in settings.policy_checkpoints()}
    metrics = PolicyMetrics()

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

    @api.exception_handler(ReplicaLost)
    async def replica_lost(_: Request, exc: ReplicaLost) -> JSONResponse:
        return refusal(503, str(exc), headers={"Retry-After": "1"})

    async def ask(method: str) -> dict:
        """A generator method without arguments (`info`, `stats`), resent like a cover request if its replica dies
        (so /healthz stays 200 while a replica is lost and another lives)."""
        result, _ = await with_retries(lambda: getattr(generator, method).remote(), settings.recovery,
                                       f"generator.{method}")
        return result

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
        info = await ask("info")
        return {"status": "ok", "model_version": info["model_version"]}

    @api.get("/v1/model", response_model=ModelInfo, responses=ERRORS, dependencies=[Depends(authorized)])
    async def model() -> ModelInfo:
        info = await ask("info")
        return ModelInfo(model_version=info["model_version"], checkpoint=info["checkpoint"], config=info["config"],
                         versions=info["versions"], limits=settings.limits, batching=info["batching"],
                         image_size=info["image_size"])

    @api.get("/v1/models", response_model=ModelsList, responses=ERRORS, dependencies=[Depends(authorized)])
    async def models() -> ModelsList:
        info = await ask("info")
        return ModelsList(default_policy=info["default_policy"], policies=info["policies"],
                          experiments=settings.experiments, max_policies_per_replica=settings.max_policies_per_replica)

    @api.get("/v1/stats", response_model=ReplicaStats, responses=ERRORS, dependencies=[Depends(authorized)])
    async def stats() -> ReplicaStats:
        return ReplicaStats.model_validate(await ask("stats"))

    @api.post("/v1/covers", response_model=CoverResponse, responses=ERRORS, dependencies=[Depends(authorized)])
    async def covers(body: CoverRequest, response: Response) -> CoverResponse:
        started = time.perf_counter()
        job = cover_job(body, settings)
        policy, experiment = choose_policy(body, job.seed, settings)
        sent = time.perf_counter()
        try:  # the job is complete, seed included: a resend after a replica death makes the same images
            result, attempts = await with_retries(lambda: handles[policy].generate.remote(job), settings.recovery,
                                                  f"cover request (policy {policy}, seed {job.seed})")
        except Exception:  # ReplicaLost included: its handler answers 503
            metrics.record(policy, experiment, ok=False, seconds=time.perf_counter() - sent)
            raise
        returned = time.perf_counter()
        images = [encode_image(image) for image in result.images]
        metrics.record(policy, experiment, ok=True, seconds=time.perf_counter() - sent)
        response.headers["Server-Timing"] = server_timing(result, started, sent, returned, time.perf_counter(),
                                                          attempts)
        height, width = result.images[0].shape[:2]
        return CoverResponse(images=images, model_version=result.model_version, policy=result.policy,
                             experiment=experiment, user_mode=result.user_mode, seed=job.seed, width=width,
                             height=height, num_inference_steps=job.steps, guidance_scale=job.guidance_scale,
                             ignored_history_items=result.ignored_history_items)

    return api


def choose_policy(body: CoverRequest, seed: int, settings: ServeSettings) -> tuple[str, str | None]:
    """-> (policy, experiment): the named policy, an experiment's arm for this user (or seed), or the default."""
    if body.policy is not None and body.experiment is not None:
        raise Refused(400, "policy, experiment: give one or neither; an experiment chooses the policy itself")
    if body.experiment is not None:
        arms = settings.experiments.get(body.experiment)
        if arms is None:
            raise Refused(400, f"experiment: {body.experiment!r} is not configured here; experiments are "
                               f"{list(settings.experiments)}")
        return choose_arm(body.experiment, arms, split_key(body.user_id, seed)), body.experiment
    known = list(settings.policy_checkpoints())
    if body.policy is not None and body.policy not in known:
        raise Refused(400, f"policy: {body.policy!r} is not served here; policies are {known}")
    return body.policy or known[0], None


def server_timing(result: CoverResult, started: float, sent: float, returned: float, encoded: float,
                  attempts: int = 1) -> str:
    """The W3C Server-Timing header (ms): `ingress` (validation, image decoding), `generator` (the handle's round
    trip: routing, batch wait, weight swap, pipeline; every attempt's), `swap` and `pipeline` (inside it, for the
    whole batch of `batch` requests, the last attempt's), `encode` (PNG + base64); `attempts`: generator calls made
    (more than 1: a replica died under the request and it was resent)."""
    timings = result.timings
    parts = [("ingress", sent - started), ("generator", returned - sent), ("swap", timings.get("swap", 0.0)),
             ("pipeline", timings.get("pipeline", 0.0)), ("encode", encoded - returned)]
    return ", ".join([f"{name};dur={seconds * 1000.0:.2f}" for name, seconds in parts]
                     + [f'batch;desc="{int(timings.get("batch_size", 1))}"', f'attempts;desc="{attempts}"'])


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
