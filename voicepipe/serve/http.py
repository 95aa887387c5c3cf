"""uvicorn, set up for clients that misbehave: a connection must send its whole request head (request line and
headers) within `header_timeout_s` of its first byte, or it is closed. uvicorn itself has no such limit (its
keep-alive timer stops at the first byte), so 100 half-sent requests would otherwise hold 100 sockets open forever.
The body has its own timeout in `voicepipe.serve.middleware`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def head_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is not complete within `timeout_s`."""

    class HeadTimeoutH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _watch_head(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                    self._head_timer = self.loop.call_later(timeout_s, self._head_expired)
            else:
                self._cancel_head_timer()

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.info("closing a connection that sent no complete request head within %g s", timeout_s)
                self.transport.close()

    return HeadTimeoutH11


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *, header_timeout_s: float = 10.0,
                   log_level: str = "info") -> uvicorn.Config:  # fmt: skip
    """The uvicorn config `voicepipe serve` runs with (also used by the tests' live servers)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=head_timeout_protocol(header_timeout_s),
                          timeout_keep_alive=5)  # fmt: skip
