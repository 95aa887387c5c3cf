"""What every request meets before its route: the API key (checked before any body byte is read), a body size
limit and a body read timeout, and the count of every speech request's HTTP outcome in the metrics.

Written as plain ASGI (not a Starlette `BaseHTTPMiddleware`) so that it can answer without touching the body and
leaves streamed responses untouched. The request-head timeout lives in `voicepipe.serve.http` (uvicorn's protocol):
an app never sees a request whose head has not arrived.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicepipe.serve.deps import AUTH_ERROR, ServerState, authorized, error_response

SPEECH_PATH = "/v1/audio/speech"
OPS_PATHS = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PATHS = ("/health", "/ready")  # probes stay open


def needs_key(path: str, protect_ops: bool) -> bool:
    """Whether `path` needs the API key (when one is set): the /v1 API, and the ops pages unless opened."""
    if path in OPEN_PATHS:
        return False
    if path.startswith("/v1/"):
        return True
    return protect_ops and path in OPS_PATHS


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


# Python's own threshold for the youngest generation: where the server raises it (`ServeConfig.gc_gen0_threshold`), so
# no collection interrupts a burst of requests, it runs the collection that Python would have run by now once no
# HTTP request is in flight (cyclic garbage, e.g. a failed request's traceback holding its audio, is freed then)
IDLE_COLLECT_COUNT = 700


def collect_when_idle() -> None:
    """No HTTP request in flight: a collection if at least `IDLE_COLLECT_COUNT` net allocations are pending (a full
    one: with start-up's objects frozen it scans only what serving made)."""
    if gc.isenabled() and gc.get_count()[0] >= IDLE_COLLECT_COUNT:
        gc.collect()


class Gate:
    """Auth before the body, body limits, and metrics for every speech response status."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.state.config
        path = scope["path"]
        speech = path == SPEECH_PATH
        status: dict[str, Any] = {"code": None}
        info: dict[str, Any] = scope.setdefault("state", {})
        info["vp_arrived"] = time.perf_counter()  # the request's head is parsed (diagnostics: SpeechJob.marks)

        async def reply(resp_status: int, message: str, **kw: Any) -> None:
            await error_response(resp_status, message, **kw)(scope, receive, send_)

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.state.in_flight += 1
        try:
            if cfg.api_key and needs_key(path, cfg.protect_ops) and not authorized(
                cfg.api_key, _header(scope, b"authorization")
            ):
                await reply(401, AUTH_ERROR, type="authentication_error", code="invalid_api_key")
                return
            length = _header(scope, b"content-length")
            if length is not None and length.strip().isdigit() and int(length) > cfg.max_body_bytes:
                await reply(413, f"request body: {int(length)} bytes, the limit is {cfg.max_body_bytes}",
                            code="body_too_large")  # fmt: skip
                return
            await self.app(scope, self._limited(receive, cfg.max_body_bytes, cfg.body_timeout_s), send_)
        except Exception:
            if status["code"] is None:
                status["code"] = 500  # the server's error handler answers it
            raise
        finally:
            m = self.state.metrics
            if speech and m is not None and not info.get("vp_counted") and status["code"] is not None:
                voice, fmt, stream = info.get("vp_labels") or ("-", "-", "-")
                code = status["code"]
                m.requests.labels(voice, fmt, stream, "ok" if code == 200 else str(code)).inc()
            self.state.in_flight -= 1
            if self.state.in_flight == 0 and cfg.gc_gen0_threshold:  # (at Python's own threshold it collects)
                collect_when_idle()

    @staticmethod
    def _limited(receive: Receive, max_bytes: int, timeout_s: float) -> Receive:
        """`receive` that raises 413 past `max_bytes` of body and 408 when the body takes longer than `timeout_s`;
        after the body it is the plain `receive` (a streaming response waits on it for the disconnect)."""
        seen = 0
        done = False
        deadline = time.monotonic() + timeout_s

        async def wrapped() -> Message:
            nonlocal seen, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HTTPException(408, f"request body: not received within {timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise HTTPException(413, f"request body: over the limit of {max_bytes} bytes")
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return wrapped
