"""uvicorn, set up for clients that misbehave: a connection must send its whole request head (request line and
headers) within `header_timeout_s` of its first byte, or it is closed. uvicorn itself has no such limit (its
keep-alive timer stops at the first byte), so 100 half-sent requests would otherwise hold 100 sockets open forever.
The body has its own timeout in `voicepipe.serve.middleware`.

The HTTP parser is httptools (C, llhttp) where it is installed, as `uvicorn[standard]` sets up, else h11 (pure
Python); the event loop uvloop where installed (uvicorn's "auto"). Both are declared dependencies: a burst of
requests is parsed on the one event loop thread before the engine can batch it (benchmarks/RESULTS.md, serve).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HTTP_IMPLS = ("auto", "httptools", "h11")


class _HeadTimer:
    """The request-head timer of both protocols below: armed by `_arm`, disarmed by `_disarm`; when it fires, the
    connection is closed if it is still waiting on a request head (`_headless`, the parser's own view)."""

    timeout_s: float
    _head_timer: asyncio.TimerHandle | None = None

    def _headless(self) -> bool:
        raise NotImplementedError

    def _arm(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():  # type: ignore[attr-defined]
            self._head_timer = self.loop.call_later(self.timeout_s, self._head_expired)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._headless() and not self.transport.is_closing():  # type: ignore[attr-defined]
            self.logger.info(  # type: ignore[attr-defined]
                "closing a connection that sent no complete request head within %g s", self.timeout_s)
            self.transport.close()  # type: ignore[attr-defined]


def head_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is not complete within `timeout_s`."""

    class HeadTimeoutH11(_HeadTimer, H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def on_response_complete(self) -> None:  # a next request's head may already be buffered, half of it
            super().on_response_complete()
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headless(self) -> bool:
            return self.conn.their_state is h11.IDLE

        def _watch_head(self) -> None:
            if self._headless() and not self.transport.is_closing():
                if self.cycle is None or self.cycle.response_complete:
                    self._arm()
            else:
                self._disarm()

    HeadTimeoutH11.timeout_s = timeout_s
    return HeadTimeoutH11


def head_timeout_httptools(timeout_s: float) -> type:
    """uvicorn's httptools protocol with the same head timeout as `head_timeout_protocol`: armed when the
    connection opens and when the first byte of a later request head arrives, disarmed once the head is parsed."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadTimeoutHttpTools(_HeadTimer, HttpToolsProtocol):
        _head_done = True  # no request head in progress (none begun yet, or the last one complete)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_done = False
            self._arm()

        def on_headers_complete(self) -> None:
            self._head_done = True
            self._disarm()
            super().on_headers_complete()

        def _headless(self) -> bool:  # a head begun and not complete, or nothing sent on the connection yet
            return not self._head_done or self.cycle is None

    HeadTimeoutHttpTools.timeout_s = timeout_s
    return HeadTimeoutHttpTools


def http_impl(choice: str = "auto") -> str:
    """"httptools" or "h11": `choice`, with auto meaning httptools where it imports."""
    if choice not in HTTP_IMPLS:
        raise ValueError(f"http implementation {choice!r}: expected one of {', '.join(HTTP_IMPLS)}")
    if choice != "auto":
        return choice
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *, header_timeout_s: float = 10.0,
                   log_level: str = "info", http: str = "auto") -> uvicorn.Config:  # fmt: skip
    """The uvicorn config `voicepipe serve` runs with (also used by the tests' live servers): `http` picks the
    parser (`http_impl`), the loop is uvicorn's auto (uvloop where installed)."""
    proto = (head_timeout_httptools if http_impl(http) == "httptools" else head_timeout_protocol)(header_timeout_s)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=proto, timeout_keep_alive=5)
