"""The speech server: `create_app(config)` builds the FastAPI app; voices load once, at startup, offline."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicepipe.serve.deps import ApiError, ServeConfig, ServerState
from voicepipe.serve.deps import error_response as _error
from voicepipe.serve.engine import EngineConfig
from voicepipe.serve.metrics import Metrics
from voicepipe.serve.middleware import Gate
from voicepipe.serve.registry import Voice, load_voice, resolve_voice_dir
from voicepipe.serve.routers import meta, speech

log = logging.getLogger(__name__)


def load_voices(config: ServeConfig) -> dict[str, Voice]:
    """Resolve and load every configured voice (local dir first, then the store's voice registry)."""
    store = None
    need_store = config.store_url is not None or not all(
        config.voices_dir and (config.voices_dir / n / "config.json").is_file() for n in config.voices
    )
    if need_store:
        from voicepipe.config import load_settings
        from voicepipe.store import open_store

        store = open_store(config.store_url or load_settings())
    ecfg = EngineConfig(max_batch=config.max_concurrent, max_len=config.max_len)
    voices = {}
    for name in config.voices:
        path, source = resolve_voice_dir(name, config.voices_dir, store, config.cache_dir)
        voices[name] = load_voice(name, path, source, config.device, ecfg)
    return voices


def create_app(config: ServeConfig, voices: dict[str, Voice] | None = None) -> FastAPI:
    """Build the app. With `voices` given (already loaded), the app uses them and leaves their engines running
    at shutdown; otherwise it loads `config.voices` at startup and stops their engines at shutdown."""
    state = ServerState(config=config, voices=dict(voices or {}), owns_engines=voices is None)
    state.metrics = Metrics(
        queue_depth=lambda: sum(state.waiting.values()),
        active=lambda: sum(v.engine.active_count for v in state.voices.values()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if not state.voices:
            state.voices = load_voices(config)
        for v in state.voices.values():
            if config.capture_graphs and v.engine.use_graphs and not v.engine._graphs:
                # minutes with many slots (64 slots: 225 s on an H200, benchmarks/RESULTS.md 2026-12-06): say so first
                log.info("voice %s: capturing CUDA graphs for %d slots; the server answers once they are ready",
                         v.name, v.engine.cfg.max_batch)
                log.info("voice %s: CUDA graphs captured in %.1f s", v.name, v.engine.capture())
            v.engine.start()
        if config.wyoming_uri:
            from voicepipe.serve.wyoming import WyomingServer

            state.wyoming = WyomingServer(state, config.wyoming_uri, zeroconf_name=config.wyoming_zeroconf)
            await state.wyoming.start()
        # What start-up made (models, engines, their graphs and compiled code) lives as long as the server, and a full
        # collection of it stops every thread of the process: 0.56 s for the tiny CPU voice's server (500k tracked
        # objects; benchmarks/RESULTS.md, 2026-12-04 17:10-17:40 UTC). Frozen, the collector no longer scans it.
        gc.collect()
        gc.freeze()
        # Serving allocates ~7,000 net container objects in a burst of 16 requests, nearly all freed by reference
        # counting when the requests end; at Python's threshold of 700 that made ~9 collections of the youngest
        # generation and one of the middle in every such burst (0.2-0.9 and 1-5 ms, every thread stopped), 0.9-5.1 ms
        # of them in its first 60 ms. With `gc_gen0_threshold` 50,000 none ran in 16 bursts (H200, TTFA p50 at 16
        # HTTP clients 53.0 -> 51.4 ms, p95 58.0 -> 54.2: benchmarks/RESULTS.md, 2026-12-04 18:05-18:45 UTC); cyclic
        # garbage is then collected once no HTTP request is in flight (`middleware.collect_when_idle`).
        threshold = gc.get_threshold()
        if config.gc_gen0_threshold:
            gc.set_threshold(config.gc_gen0_threshold, *threshold[1:])
        state.ready = True
        yield
        state.ready = False
        gc.set_threshold(*threshold)
        gc.unfreeze()  # what start-up made is the collector's again (the process may load other things next)
        state.close_prepare_pool()
        if state.wyoming is not None:
            await state.wyoming.stop()
            state.wyoming = None
        if state.owns_engines:
            for v in state.voices.values():
                v.engine.stop()

    app = FastAPI(title="voicepipe speech", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible, streaming, local text-to-speech for voicepipe voices.")
    app.state.vp = state
    app.include_router(speech.router)
    app.include_router(meta.router)
    app.add_middleware(Gate, state=state)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        return _error(400, f"{param or 'body'}: {first.get('msg', 'invalid')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error"}
        return _error(e.status_code, str(e.detail), type=kind.get(e.status_code, "http_error"),
                      headers=dict(e.headers or {}))  # fmt: skip

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(e).__name__}", type="server_error")

    return app
