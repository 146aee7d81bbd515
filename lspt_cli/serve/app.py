"""The HTTP API of `lspt serve` (FastAPI on uvicorn; docs/serve.md).

    POST /v1/predict   JSON {"task": NAME, "images": [BASE64, ...], "top_k": K}
                       or multipart/form-data: fields task, top_k; files images
                       -> {"task", "fingerprint", "predictions": [[{"label", "index", "probability"}, ...], ...],
                           "latency_ms": {"queue", "model", "total"}, "batch_images"}
    GET  /v1/tasks     each task's classes, strategy, backbone, metrics (from its bundle)
    GET  /healthz      {"status": "ok", "tasks": N}  (no token needed)
    GET  /metrics      Prometheus text format

Every error is a 4xx/5xx with `{"error": "<one line>"}`. Limits: the body (--max-body-mb, counted
while it is read, so a lying Content-Length does not help), images per request (--max-images),
pixels per image (--max-pixels, checked from the image header before decoding), top_k, and the time
a client may take to send its body (--read-timeout). Clients name tasks, never files: nothing a
client sends is used as a path. With --token, every endpoint but /healthz needs
`Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DataError
from .batcher import Batcher, QueueFull
from .metrics import Metrics
from .registry import Registry


@dataclass
class Limits:
    max_body_bytes: int = 16 * 2**20
    max_images: int = 64
    max_pixels: int = 4096 * 4096
    max_top_k: int = 100
    read_timeout_s: float = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())  # one line, always


def create_app(registry: Registry, batcher: Batcher, metrics: Metrics, limits: Limits | None = None,
               token: str | None = None, lifespan=None):
    limits = limits or Limits()
    app = FastAPI(title="lspt serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        message = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())[:300]
        return JSONResponse({"error": message}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse({"error": "invalid request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse({"error": " ".join(str(exc.detail).split())}, status_code=exc.status_code)

    def check_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            raise ApiError(401, "invalid bearer token")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "tasks": len(registry.tasks)}

    @app.get("/metrics")
    async def metrics_endpoint(request: Request):
        check_token(request)
        metrics.tasks.set(len(registry.tasks))
        metrics.backbones.set(registry.num_backbones)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/tasks")
    async def tasks(request: Request):
        check_token(request)
        return {"tasks": [{"name": t.name, **{k: v for k, v in t.info.items() if k != "tokens"}}
                          for t in sorted(registry.tasks.values(), key=lambda t: t.name)]}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limits.max_body_bytes:
                    raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit of {limits.max_body_bytes:,} (--max-body-mb)")
            except ValueError:
                raise ApiError(400, "invalid Content-Length header") from None
        chunks, size = [], 0

        async def collect():
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise ApiError(413, f"request body is over the limit of {limits.max_body_bytes:,} bytes (--max-body-mb)")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), timeout=limits.read_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"request body not received within {limits.read_timeout_s:g} s (--read-timeout)") from None
        return b"".join(chunks)

    def parse_top_k(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_top_k:
            raise ApiError(400, f"top_k must be an integer from 1 to {limits.max_top_k}, got {value!r}"[:300])
        return value

    async def parse_request(request: Request) -> tuple[str, list[bytes], int]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            raise ApiError(415, f"unsupported content type {ctype or 'none'!r}: send application/json or multipart/form-data"[:300])
        body = await read_body(request)
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):
                raise ApiError(400, "body is not valid JSON") from None
            if not isinstance(doc, dict):
                raise ApiError(400, "body must be a JSON object {\"task\": ..., \"images\": [...]}")
            unknown = sorted(set(doc) - {"task", "images", "top_k"})
            if unknown:
                raise ApiError(400, f"unknown field {unknown[0]!r}; fields: task, images, top_k"[:300])
            task, images, top_k = doc.get("task"), doc.get("images"), doc.get("top_k", 5)
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise ApiError(400, "'images' must be a list of base64-encoded image files")
            check_count(len(images))
            raw = []
            for i, text in enumerate(images):
                try:
                    raw.append(base64.b64decode("".join(text.split()), validate=True))  # line-wrapped base64 is fine
                except (binascii.Error, ValueError):
                    raise ApiError(400, f"image {i} is not valid base64") from None
        else:
            request._body = body  # the form parser reads the body already received (and bounded) above
            try:
                form = await request.form(max_files=limits.max_images + 1, max_fields=16)
            except Exception as exc:  # malformed multipart, too many parts
                raise ApiError(400, f"malformed multipart body: {getattr(exc, 'detail', exc)}"[:300]) from None
            unknown = sorted(set(form.keys()) - {"task", "images", "top_k"})
            if unknown:
                raise ApiError(400, f"unknown field {unknown[0]!r}; fields: task, top_k, images"[:300])
            task, top_k = form.get("task"), form.get("top_k", "5")
            files = form.getlist("images")
            if any(isinstance(f, str) for f in files):
                raise ApiError(400, "'images' must be file parts (multipart uploads), not text fields")
            check_count(len(files))
            raw = [await f.read() for f in files]
        if not isinstance(task, str) or not task:
            raise ApiError(400, "'task' must name a served task (GET /v1/tasks lists them)")
        return task, raw, parse_top_k(top_k)

    def check_count(n: int) -> None:
        if n == 0:
            raise ApiError(400, "no images: send at least one")
        if n > limits.max_images:
            raise ApiError(413, f"{n} images in one request; at most {limits.max_images} (--max-images)")

    def preprocess(task, raw: list[bytes]):
        import torch

        from ..data.images import decode_image

        tensors = []
        for i, data in enumerate(raw):
            try:
                image = decode_image(data, f"image {i}", max_pixels=limits.max_pixels)
            except DataError as exc:
                status = 413 if "too large" in exc.message else 400
                raise ApiError(status, exc.message) from None
            tensors.append(task.transform(image))
        return torch.stack(tensors)

    @app.post("/v1/predict")
    async def predict(request: Request):
        from ..engine.restore import top_predictions

        start = time.perf_counter()
        check_token(request)
        name = "?"
        code = 500
        try:
            name, raw, top_k = await parse_request(request)
            task = registry.tasks.get(name)
            if task is None:
                name = "?"  # unknown names never become metric labels
                raise ApiError(404, "unknown task; GET /v1/tasks lists the served tasks")
            images = await run_in_threadpool(preprocess, task, raw)
            try:
                future = batcher.submit(task, images)
            except QueueFull as exc:
                raise ApiError(503, str(exc)) from None
            logits = await asyncio.wrap_future(future)
            predictions = top_predictions(logits, task.classes, top_k)
            code = 200
            metrics.images.inc(len(raw), task=name)
            total = time.perf_counter() - start
            metrics.request_latency.observe(total)
            doc = {"task": name, "fingerprint": task.fingerprint, "predictions": predictions,
                   "latency_ms": {"total": round(total * 1000, 3)}}
            timing = getattr(future, "timing", None)
            if timing is not None:
                doc["latency_ms"].update(queue=round(timing[0] * 1000, 3), model=round(timing[1] * 1000, 3))
                doc["batch_images"] = timing[2]
            return doc
        except ApiError as exc:
            code = exc.status
            raise
        finally:
            metrics.requests.inc(task=name, code=str(code))

    return app
