"""The cloud side of telepathology: an HTTP service that receives a slide and returns a diagnosis.

Uploads are streamed to a private folder under a random name (the client's file name is never a path),
refused with 413 as soon as they pass the size limit (from Content-Length before anything is stored, or
while streaming), refused with 408 when the sender stalls mid-body (`body_timeout_s` per chunk), and removed
once analysed or abandoned. Analyses run in worker threads, one at a time per model
(`max_concurrent`), so a slow or failing slide never blocks the event loop or other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.concurrency import run_in_threadpool

from maga_core.errors import MagaError

log = logging.getLogger("maga.telepath")
ALLOWED_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".png", ".jpg", ".jpeg"}


class Analyzer(Protocol):
    def analyze(self, path: Path, magnification: float) -> dict: ...


@dataclass
class ServeConfig:
    token: str = ""  # generated when empty
    max_upload_bytes: int = 2 * 1024**3
    upload_dir: str = ""  # a private temporary folder when empty
    max_concurrent: int = 1
    keep_results: int = 64  # heatmaps kept in memory for GET /v1/results/<id>/heatmap.png
    body_timeout_s: float = 60.0  # longest wait for the next chunk of an upload before answering 408


def _suffix(name: str | None) -> str:
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix in ALLOWED_SUFFIXES else ".bin"


def declared_length(value: str | None) -> int | None:
    """Content-Length as an int; a value that is not one non-negative decimal number is a 400, never a 500
    (an ASGI server or proxy in front may pass headers its own parser would refuse)."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise HTTPException(400, "malformed Content-Length header")
    return int(value)


async def _chunks(request: Request, timeout_s: float):
    """The body's chunks; a sender that stalls longer than `timeout_s` between two chunks gets a 408."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise HTTPException(408, f"upload stalled: no data for {timeout_s:g} s") from None
        yield chunk


def create_app(analyzer: Analyzer, config: ServeConfig) -> FastAPI:
    config.token = config.token or secrets.token_urlsafe(24)
    upload_dir = Path(config.upload_dir or tempfile.mkdtemp(prefix="maga-uploads-"))
    upload_dir.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(config.max_concurrent)
    heatmaps: OrderedDict[str, bytes] = OrderedDict()
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if not config.upload_dir:  # the private folder we made
            shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="MAGA telepathology", version="1", lifespan=lifespan)
    app.state.config, app.state.upload_dir = config, upload_dir

    def check_token(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/diagnose")
    async def diagnose(request: Request, magnification: float = 5.0) -> JSONResponse:
        check_token(request)
        declared = declared_length(request.headers.get("content-length"))
        if declared is not None and declared > config.max_upload_bytes:
            raise HTTPException(413, f"upload of {declared} bytes exceeds the limit of {config.max_upload_bytes}")
        job = uuid.uuid4().hex
        path = upload_dir / f"{job}{_suffix(request.headers.get('x-filename'))}"
        t0 = time.perf_counter()
        size = 0
        try:
            with open(path, "wb") as fh:
                async for chunk in _chunks(request, config.body_timeout_s):
                    size += len(chunk)
                    if size > config.max_upload_bytes:
                        raise HTTPException(413, f"upload exceeds the limit of {config.max_upload_bytes} bytes")
                    fh.write(chunk)
            if size == 0:
                raise HTTPException(422, "empty upload")
            receive_s = time.perf_counter() - t0
            async with gate:
                result = await run_in_threadpool(analyzer.analyze, path, magnification)
        except MagaError as exc:
            raise HTTPException(422, str(exc).replace(str(path), "upload")) from None
        except (HTTPException, asyncio.CancelledError):
            raise
        except ClientDisconnect:  # nobody to answer; the partial upload goes (finally)
            log.info("upload %s: client left after %d bytes", job, size)
            raise HTTPException(400, "client disconnected mid-upload") from None
        except Exception as exc:  # a bug or a slide that breaks a library: logged, other requests go on
            log.exception("analysis of upload %s failed", job)
            raise HTTPException(500, f"analysis failed: {type(exc).__name__}: {exc}") from None
        finally:
            path.unlink(missing_ok=True)
        heatmap = result.pop("heatmap_png", None)
        if heatmap is not None:
            heatmaps[job] = heatmap
            while len(heatmaps) > config.keep_results:
                heatmaps.popitem(last=False)
        result["timings"] = {"receive_s": receive_s, **result.get("timings", {})}
        return JSONResponse({"id": job, "bytes": size, **result,
                             "heatmap_url": f"/v1/results/{job}/heatmap.png" if heatmap else None})

    @app.get("/v1/results/{job}/heatmap.png")
    async def heatmap(job: str, request: Request) -> Response:
        check_token(request)
        if job not in heatmaps:
            raise HTTPException(404, "no such result")
        return Response(heatmaps[job], media_type="image/png")

    return app


class ServerThread:
    """Run an app with uvicorn on a loopback port in a background thread (tests and the timing study)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
