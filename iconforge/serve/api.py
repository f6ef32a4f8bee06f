"""The HTTP API over a JobService (FastAPI). Every input-caused error is a 4xx with one line,
`{"error": "field: reason"}`; job ids are made by the server and no request names a file."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from iconforge.generate import request as limits
from iconforge.generate.generator import Settings
from iconforge.generate.request import GenerateRequest, error_line
from iconforge.serve.client import JOB_ID_PATTERN
from iconforge.serve.jobs import Busy, Job, JobService, State

MAX_BODY_BYTES = 16 * 1024  # a request is a prompt and a few numbers
JOB_ID = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="id the server gave the job")]
INDEX = Annotated[int, Path(ge=0, lt=limits.MAX_IMAGES, description="image number within the job")]
MAX_WAIT_S = 30.0
WAIT = Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False,
                              description="long polling: seconds to wait for the job to finish before answering")]
CLIENT_ID = Annotated[str | None, Header(max_length=64, pattern=r"^[A-Za-z0-9:_.-]+$",
                                         description="end user behind a front end (bot, UI), for the per-client cap")]


class ErrorBody(BaseModel):
    error: str


class ImageView(BaseModel):
    index: int
    seed: int
    png_url: str
    svg_url: str


class JobView(BaseModel):
    id: str
    status: State
    position: int | None  # place in the queue, 1 = next; null once running
    steps_done: int
    steps_total: int
    progress: float  # 0..1
    error: str | None
    settings: Settings  # every setting, defaults filled in: resubmit with this seed to redraw
    images: list[ImageView]
    model: dict  # the model that serves this API (see /v1/model)


class Accepted(BaseModel):
    id: str
    status: State
    position: int
    url: str


class ModelInfo(BaseModel):
    base: str
    revision: str
    commit: str
    experiment: str | None
    adapter_sha256: str
    trigger: str
    device: str
    dtype: str
    defaults: dict  # steps, guidance, size used when a request leaves them unset
    limits: dict


class Health(BaseModel):
    status: str
    queued: int
    running: int


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


ERRORS = {code: {"model": ErrorBody, "description": what} for code, what in (
    (400, "body not decodable (not UTF-8)"), (401, "missing or wrong API key"), (404, "no such job or image (finished jobs expire)"),
    (413, "request body too large"), (422, "invalid request; the message names the field"),
    (429, "queue or per-client cap full; see Retry-After"))}


class BodyLimit:
    """Reads at most `limit` bytes of a request body before the app sees it; more is a 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await _error(413, f"body: larger than {self.limit} bytes")(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(service: JobService, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="iconforge", version="1", summary="Icons in the bioicons style, on demand",
                  responses={401: ERRORS[401]} if api_key else None)

    bearer = HTTPBearer(auto_error=False, description="the API key the server was started with")

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008 (a local)
        if not (creds and secrets.compare_digest(creds.credentials.encode(), api_key.encode())):
            raise HTTPException(401, "authorization: missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)] if api_key else []

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return _error(422, "body: not valid JSON")
        if err.get("loc") == ("body",):
            return _error(422, "body: must be a JSON object (Content-Type: application/json)")
        return _error(422, error_line(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "body: cannot be decoded as UTF-8 JSON" if exc.status_code == 400 else str(exc.detail)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    def view(job: Job) -> JobView:
        base = f"/v1/jobs/{job.id}/images"
        return JobView(id=job.id, status=job.state, position=service.position(job), steps_done=job.steps_done,
                       steps_total=job.steps_total, progress=round(job.steps_done / job.steps_total, 4),
                       error=job.error, settings=job.settings, model=service.generator.model_info(),
                       images=[ImageView(index=i, seed=im.seed, png_url=f"{base}/{i}.png", svg_url=f"{base}/{i}.svg")
                               for i, im in enumerate(job.images)])

    def find(job_id: str) -> Job:
        job = service.get(job_id)
        if job is None:
            raise HTTPException(404, f"job_id: no job {job_id} (unknown or expired)")
        return job

    def image(job_id: str, index: int):
        job = find(job_id)
        if index >= len(job.images):
            raise HTTPException(404, f"index: job {job_id} has {len(job.images)} image(s) ({job.state.value})")
        return job.images[index]

    @app.post("/v1/jobs", status_code=202, response_model=Accepted, dependencies=auth,
              responses={k: ERRORS[k] for k in (400, 413, 422, 429)})
    def submit(req: GenerateRequest, request: Request, x_client_id: CLIENT_ID = None) -> Accepted:
        """Queue a generation; poll the returned url."""
        client = f"{request.client.host if request.client else '?'}/{x_client_id or ''}"
        try:
            job, position = service.submit(req, client)
        except Busy as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        return Accepted(id=job.id, status=job.state, position=position, url=f"/v1/jobs/{job.id}")

    @app.get("/v1/jobs/{job_id}", response_model=JobView, dependencies=auth, responses={k: ERRORS[k] for k in (404, 422)})
    def status(job_id: JOB_ID, wait: WAIT = 0.0) -> JobView:
        """State, queue position, progress; once done, the images with their seeds and URLs."""
        job = find(job_id)
        service.wait(job, wait)
        return view(job)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobView, dependencies=auth,
              responses={k: ERRORS[k] for k in (404, 422)})
    def cancel(job_id: JOB_ID) -> JobView:
        """Cancel: a queued job at once, a running one at its next denoising step."""
        find(job_id)
        return view(service.cancel(job_id))

    @app.get("/v1/jobs/{job_id}/images/{index}.png", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, **{k: ERRORS[k] for k in (404, 422)}})
    def png(job_id: JOB_ID, index: INDEX) -> Response:
        return Response(image(job_id, index).png, media_type="image/png")

    @app.get("/v1/jobs/{job_id}/images/{index}.svg", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/svg+xml": {}}}, **{k: ERRORS[k] for k in (404, 422)}})
    def svg(job_id: JOB_ID, index: INDEX) -> Response:
        return Response(image(job_id, index).svg, media_type="image/svg+xml")

    @app.get("/v1/model", response_model=ModelInfo, dependencies=auth)
    def model() -> ModelInfo:
        """The served base, revision, adapter, trigger and experiment; defaults and limits."""
        d = service.generator
        defaults = d.source.defaults
        lim = {k.lower(): getattr(limits, k) for k in ("MAX_PROMPT_CHARS", "MAX_IMAGES", "MIN_SIZE", "MAX_SIZE",
                                                     "SIZE_STEP", "MAX_STEPS", "MAX_GUIDANCE", "MAX_SEED", "MAX_STRENGTH")}
        return ModelInfo(**d.model_info(), defaults={"steps": defaults.steps, "guidance": defaults.guidance,
                                                     "size": defaults.size},
                         limits={**lim, **vars(service.cfg), "max_body_bytes": MAX_BODY_BYTES})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness for a load balancer (no API key needed)."""
        s = service.stats()
        return Health(status="ok", queued=s["queued"], running=s["running"])

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app
