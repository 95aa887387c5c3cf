"""POST /v1/audio/speech — OpenAI-compatible, streaming as audio bytes or SSE events, or whole files."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from voicepipe.audio.formats import FORMATS, MEDIA_TYPES, StreamEncoder, encode
from voicepipe.serve.deps import ApiError, ServerState, get_state, require_auth
from voicepipe.serve.engine import EngineError, Event, RequestHandle
from voicepipe.serve.registry import Voice
from voicepipe.serve.schemas import ErrorResponse, SpeechRequest

log = logging.getLogger(__name__)
router = APIRouter()

_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+")
# Runaway guard: a segment may not produce more audio than 0.2 s per character (3x slow speech), at least 5 s.
# A model that never emits EOS (the seed's noisy fine-tunes) then stops instead of holding a slot for minutes.
SECONDS_PER_CHAR, MIN_SEGMENT_SECONDS = 0.2, 5.0


def split_text(text: str, max_chars: int) -> list[str]:
    """Split long input at sentence ends into segments of at most ~`max_chars` (a longer sentence is cut at the
    last space before the limit). Short input stays one segment."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text]
    segments: list[str] = []
    cur = ""
    for sent in _SENTENCE_END.split(text):
        while len(sent) > max_chars:
            cut = sent.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if cur:
                segments.append(cur)
                cur = ""
            segments.append(sent[:cut].strip())
            sent = sent[cut:].strip()
        if cur and len(cur) + 1 + len(sent) > max_chars:
            segments.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur:
        segments.append(cur)
    return [s for s in segments if s]


def validate(body: SpeechRequest, st: ServerState) -> tuple[Voice, str, str | None]:
    """Check a request; returns (voice, format, stream mode None|'audio'|'sse') or raises ApiError(400)."""
    cfg = st.config
    if not body.input or not body.input.strip():
        raise ApiError(400, "input: must not be empty", param="input")
    if len(body.input) > cfg.max_input_chars:
        raise ApiError(400, f"input: {len(body.input)} characters, the limit is {cfg.max_input_chars}",
                       param="input", code="input_too_long")  # fmt: skip
    voice = st.voices.get(body.voice) or st.voices.get(body.voice.lower())
    if voice is None:
        raise ApiError(400, f"voice {body.voice!r}: unknown (available: {', '.join(sorted(st.voices)) or 'none'})",
                       param="voice", code="unknown_voice")  # fmt: skip
    fmt = body.response_format.lower()
    if fmt not in FORMATS:
        raise ApiError(400, f"response_format {body.response_format!r}: unsupported (use one of {', '.join(FORMATS)})",
                       param="response_format")  # fmt: skip
    if not 0.25 <= body.speed <= 4.0:
        raise ApiError(400, f"speed {body.speed}: must be between 0.25 and 4.0", param="speed")
    mode = None
    if body.stream_format is not None:
        if body.stream_format not in ("audio", "sse"):
            raise ApiError(400, f"stream_format {body.stream_format!r}: use 'audio' or 'sse'", param="stream_format")
        mode = body.stream_format
    elif body.stream:
        mode = "audio"
    lang = (body.language or cfg.language).lower()
    if lang not in voice.languages:
        raise ApiError(400, f"language {body.language!r}: not supported by voice {voice.name!r} "
                       f"({', '.join(voice.languages)})", param="language")  # fmt: skip
    return voice, fmt, mode


def _stretch(wav: np.ndarray, speed: float) -> np.ndarray:
    if speed == 1.0 or len(wav) == 0:
        return wav
    import librosa

    return librosa.effects.time_stretch(wav.astype(np.float32), rate=speed).astype(np.float32)


class SpeechJob:
    """One API request: its text segments, spoken one after the other by the voice's engine."""

    def __init__(self, voice: Voice, body: SpeechRequest, st: ServerState, t0: float):
        self.voice, self.body, self.st, self.t0 = voice, body, st, t0
        self.segments = split_text(body.input, st.config.segment_chars)
        # the checkpoint's generation_config.json, capped by max_frames, then the server's `generation` overrides
        own = voice.engine.generation
        self.gen = own.with_overrides(**{"max_new_tokens": min(own.max_new_tokens, st.config.max_frames),
                                         **st.config.generation})
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.current: RequestHandle | None = None
        self.audio_s = 0.0

    def _on_event(self, ev: Event) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, ev)

    async def _submit(self, text: str) -> RequestHandle:
        eng = self.voice.engine
        cap = int(12.5 * max(MIN_SEGMENT_SECONDS, SECONDS_PER_CHAR * len(text)))
        gen = dataclasses.replace(self.gen, max_new_tokens=min(self.gen.max_new_tokens, cap))
        lang = (self.body.language or self.st.config.language).lower()
        try:
            prompt = await asyncio.to_thread(eng.prepare, text, self.voice.speaker, lang, self.body.instructions)
            return eng.submit(prompt, gen, self._on_event)
        except EngineError as e:
            raise ApiError(400, f"input: {e}", param="input") from e

    async def start(self) -> None:
        """Submit the first segment and wait for a generation slot (503 when the queue is full or too slow)."""
        cfg, eng = self.st.config, self.voice.engine
        if eng.queue_depth >= cfg.max_queue:
            raise ApiError(503, f"server busy: {eng.queue_depth} requests queued", type="server_busy")
        self.current = await self._submit(self.segments[0])
        deadline = time.perf_counter() + cfg.queue_timeout_s
        while not self.current.admitted.is_set():
            if self.current.finished.is_set():
                break  # failed before admission; the error event is in the queue
            if time.perf_counter() > deadline:
                self.current.cancel()
                raise ApiError(503, f"no generation slot free within {cfg.queue_timeout_s:g} s, try again",
                               type="server_busy", code="queue_timeout")  # fmt: skip
            await asyncio.sleep(0.005)

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """Audio chunks (float32, 24 kHz, speed applied) in order, across all segments."""
        for i, seg in enumerate(self.segments):
            if i > 0:
                self.current = await self._submit(seg)
            while True:
                ev = await self.events.get()
                if ev.kind == "audio":
                    yield _stretch(ev.audio, self.body.speed)
                elif ev.kind == "done":
                    self.audio_s += ev.stats.get("audio_s", 0.0) / self.body.speed
                    break
                else:
                    raise RuntimeError(ev.message)

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()

    def observe(self, status: str, fmt: str, stream: str) -> None:
        m = self.st.metrics
        m.requests.labels(self.voice.name, fmt, stream, status).inc()
        if status == "ok" and self.audio_s > 0:
            m.rtf.observe((time.perf_counter() - self.t0) / self.audio_s)
            m.audio_seconds.labels(self.voice.name).inc(self.audio_s)


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _stream(job: SpeechJob, fmt: str, mode: str) -> AsyncIterator[bytes]:
    """Encode the job's audio as it is generated: raw bytes (`mode` "audio") or SSE events (`mode` "sse")."""
    sse = mode == "sse"

    def out(data: bytes) -> bytes:
        return _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if sse else data

    enc = StreamEncoder(fmt, job.voice.engine.sample_rate)
    status, first = "cancelled", True
    try:
        async for chunk in job.chunks():
            data = enc.feed(chunk)
            if data:
                if first:
                    job.st.metrics.ttfa.observe(time.perf_counter() - job.t0)
                    first = False
                yield out(data)
        tail = enc.close()
        if tail:
            yield out(tail)
        if sse:
            yield _event({"type": "speech.audio.done", "usage": {"audio_seconds": round(job.audio_s, 3),
                                                                  "input_characters": len(job.body.input)}})
        status = "ok"
    except RuntimeError as e:
        status = "error"
        log.error("stream failed: %s", e)
        if sse:
            yield _event({"type": "error", "error": {"message": str(e), "type": "server_error"}})
    finally:
        job.cancel()
        if status != "ok":
            enc.abort()
        job.observe(status, fmt, mode)


_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 500, 503)}


@router.post("/v1/audio/speech", dependencies=[Depends(require_auth)], responses=_ERRORS)
async def speech(body: SpeechRequest, request: Request) -> Response:
    """Speak `input` with `voice`. With `stream` or `stream_format`, audio leaves as it is generated."""
    t0 = time.perf_counter()
    st = get_state(request)
    voice, fmt, mode = validate(body, st)
    job = SpeechJob(voice, body, st, t0)
    try:
        await job.start()
    except ApiError as e:
        st.metrics.requests.labels(voice.name, fmt, mode or "none", f"{e.status}").inc()
        raise
    headers = {"X-Voicepipe-Voice": voice.name}
    if mode == "audio":
        return StreamingResponse(_stream(job, fmt, "audio"), media_type=MEDIA_TYPES[fmt], headers=headers)
    if mode == "sse":
        return StreamingResponse(_stream(job, fmt, "sse"), media_type="text/event-stream", headers=headers)
    parts: list[np.ndarray] = []
    status = "cancelled"
    try:
        async for chunk in job.chunks():
            parts.append(chunk)
            if await request.is_disconnected():
                return Response(status_code=499)
        status = "ok"
    except RuntimeError as e:
        status = "error"
        raise ApiError(500, f"synthesis failed: {e}", type="server_error") from e
    finally:
        job.cancel()
        job.observe(status, fmt, "none")
    wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    data = await asyncio.to_thread(encode, wav, voice.engine.sample_rate, fmt)
    st.metrics.ttfa.observe(time.perf_counter() - t0)
    return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)
