"""Server state, settings and request dependencies (auth) of the speech API."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
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
    max_input_chars: int = 4096
    max_concurrent: int = 8  # generation slots per voice (the engine's batch)
    max_queue: int = 64  # requests waiting for a slot before new ones get 503 at once
    queue_timeout_s: float = 30.0  # a request waiting longer than this for a slot gets 503
    max_frames: int = 1500  # per text segment (120 s of audio)
    generation: dict[str, Any] = Field(default_factory=dict)  # GenerationConfig overrides (temperature, ...)
    segment_chars: int = 300  # long input is spoken segment by segment, split at sentence ends
    max_len: int = 2048  # KV-cache positions per slot
    language: str = "auto"
    capture_graphs: bool = True


class ApiError(Exception):
    """An error the client gets as OpenAI-style JSON with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code


@dataclass
class ServerState:
    config: ServeConfig
    voices: dict[str, Voice] = field(default_factory=dict)
    metrics: Metrics | None = None
    ready: bool = False
    owns_engines: bool = True
    load_error: str | None = None


def get_state(request: Request) -> ServerState:
    return request.app.state.vp


def require_auth(request: Request) -> None:
    """Bearer-token check (constant-time) when the server has an API key."""
    key = get_state(request).config.api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       type="authentication_error", code="invalid_api_key")  # fmt: skip
