"""Server state, settings and request dependencies (auth) of the speech API."""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from voicepipe.serve.metrics import Metrics
from voicepipe.serve.registry import Voice


class ServeConfig(BaseModel):
    """Everything `voicepipe serve` can be told; limits have safe defaults."""

    voices: list[str] = Field(default_factory=list)
    voices_dir: Path | None = None
    store_url: str | None = None  # None: the settings' store (voice registry refs `voices/<name>`)
    cache_dir: Path | None = None  # where store voices are unpacked
    device: str = "auto"
    api_key: str | None = None  # set: every /v1 call needs `Authorization: Bearer <api_key>`
    protect_ops: bool = True  # with an api_key, /metrics, /docs, /redoc and /openapi.json need it too
    max_input_chars: int = 4096
    max_instructions_chars: int = 4096
    max_body_bytes: int = 256 * 1024  # request bodies (JSON) larger than this get 413 before they are read
    header_timeout_s: float = 10.0  # a connection that has not sent a whole request head by then is closed
    body_timeout_s: float = 10.0  # a request whose body has not arrived by then gets 408
    max_concurrent: int = 8  # generation slots per voice (the engine's batch)
    max_queue: int = 64  # requests waiting for a slot (per voice) before new ones get 503 at once
    queue_timeout_s: float = 30.0  # a request waiting longer than this for a slot gets 503
    retry_after_s: float = 2.0  # the Retry-After of a 503
    max_frames: int = 1500  # per text segment (120 s of audio)
    generation: dict[str, Any] = Field(default_factory=dict)  # GenerationConfig overrides (temperature, ...)
    segment_chars: int = 300  # long input is spoken segment by segment, split at sentence ends
    # prompts (tokenizer, prompt layout, text embedding) are prepared on this many threads, first come first served
    # (0: the event loop's default pool, one thread per request in flight, which under the GIL share the CPU so
    # that a burst's prompts all finish together, late, instead of one after the other)
    prepare_threads: int = 1
    max_len: int = 2048  # KV-cache positions per slot
    language: str = "auto"
    capture_graphs: bool = True
    wyoming_uri: str | None = None  # e.g. tcp://0.0.0.0:10200: also speak the Wyoming protocol (Home Assistant)
    wyoming_zeroconf: str | None = None  # a name: announce the Wyoming server over mDNS (needs `zeroconf`)
    # the garbage collector's youngest-generation threshold while serving; None: Python's own (700). 50,000 ran no
    # collection in a 16-client burst and took TTFA p50 at 16 HTTP clients 53.0 -> 51.4 ms on an H200, but young
    # garbage then waits for an idle moment: the CPU load test's RSS grew 66 MB, over its 60 MB bound, in a full run
    # (benchmarks/RESULTS.md, serve, 2026-12-04 18:05-18:45 UTC). Off until that growth is understood.
    gc_gen0_threshold: int | None = None
    # streamed MP3: "lame" encodes in the server's process (`voicepipe.serve.mp3`, when `lameenc` is installed;
    # its first bytes come from the first 80 ms chunk), "ffmpeg" through one ffmpeg process per request (its first
    # bytes need 160 ms of audio: the second frame step)
    mp3_encoder: Literal["lame", "ffmpeg"] = "lame"


class ApiError(Exception):
    """An error the client gets as OpenAI-style JSON with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}} with `status`."""
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


@dataclass
class ServerState:
    config: ServeConfig
    voices: dict[str, Voice] = field(default_factory=dict)
    metrics: Metrics | None = None
    ready: bool = False
    owns_engines: bool = True
    load_error: str | None = None
    waiting: dict[str, int] = field(default_factory=dict)  # per voice: requests not yet holding a slot
    in_flight: int = 0  # HTTP requests being answered (counted by the Gate middleware; idle collections)
    wyoming: Any = None  # the running WyomingServer, when config.wyoming_uri is set
    _prepare_pool: ThreadPoolExecutor | None = None
    _prepare_pool_size: int = 0

    def prepare_pool(self) -> ThreadPoolExecutor | None:
        """The threads prompts are prepared on (`ServeConfig.prepare_threads`); None: the loop's default pool."""
        n = max(0, int(self.config.prepare_threads))
        if n != self._prepare_pool_size:  # a changed setting (benchmarks switch it at run time)
            self.close_prepare_pool()
            if n:
                self._prepare_pool = ThreadPoolExecutor(n, thread_name_prefix="vp-prepare")
            self._prepare_pool_size = n
        return self._prepare_pool

    def close_prepare_pool(self) -> None:
        if self._prepare_pool is not None:
            self._prepare_pool.shutdown(wait=False)
        self._prepare_pool, self._prepare_pool_size = None, 0


def get_state(request: Request) -> ServerState:
    return request.app.state.vp


def authorized(key: str | None, authorization: str | None) -> bool:
    """Whether an `Authorization` header value carries the API key `key` (constant-time); True when no key is set."""
    if not key:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


AUTH_ERROR = "missing or invalid API key (send 'Authorization: Bearer <key>')"


async def require_auth(request: Request) -> None:
    """Bearer-token check for routes (the app's gate has already checked it before the body was read). Async, so
    FastAPI runs it on the event loop: a plain `def` dependency is run in a worker thread, one thread hop (and
    GIL hand-over) per request before the route starts."""
    if not authorized(get_state(request).config.api_key, request.headers.get("authorization")):
        raise ApiError(401, AUTH_ERROR, type="authentication_error", code="invalid_api_key")
