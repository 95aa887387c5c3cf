"""POST /v1/audio/speech — OpenAI's semantics: audio streams as it is made unless the client asks for a whole file.

- no `stream_format` (OpenAI's default, "audio"): chunked audio bytes as they are generated;
- `stream_format: "sse"`: `speech.audio.delta` events (base64), then `speech.audio.done`, or an `error` event;
- `stream: false` (the Kokoro-FastAPI/vLLM-Omni extension): one whole file with a Content-Length.
FLAC is always sent whole (a streamed FLAC has no length, which libsndfile cannot read; see audio.formats).

Also GET /v1/audio/voices (Kokoro-FastAPI's path: `{"voices": [...]}`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from voicepipe.audio.formats import FORMATS, MEDIA_TYPES, STREAMABLE, StreamEncoder, encode
from voicepipe.serve import mp3
from voicepipe.serve.deps import ApiError, ServerState, get_state, require_auth
from voicepipe.serve.registry import Voice
from voicepipe.serve.schemas import AudioVoicesResponse, ErrorResponse, SpeechRequest
from voicepipe.serve.synth import SpeechJob, check_text, split_text  # noqa: F401 - split_text: public here too

log = logging.getLogger(__name__)
router = APIRouter()


def validate(body: SpeechRequest, st: ServerState) -> tuple[Voice, str, str | None]:
    """Check a request; returns (voice, format, stream mode None|'audio'|'sse') or raises ApiError(400)."""
    cfg = st.config
    check_text(body.input, "input", cfg.max_input_chars)
    if not body.input.strip():
        raise ApiError(400, "input: must not be empty", param="input")
    if body.instructions is not None:
        check_text(body.instructions, "instructions", cfg.max_instructions_chars)
    name = body.voice_name
    voice = st.voices.get(name) or st.voices.get(name.lower())
    if voice is None:
        raise ApiError(400, f"voice {name!r}: unknown (available: {', '.join(sorted(st.voices)) or 'none'})",
                       param="voice", code="unknown_voice")  # fmt: skip
    fmt = body.response_format.lower()
    if fmt not in FORMATS:
        raise ApiError(400, f"response_format {body.response_format!r}: unsupported (use one of {', '.join(FORMATS)})",
                       param="response_format")  # fmt: skip
    if not 0.25 <= body.speed <= 4.0:
        raise ApiError(400, f"speed {body.speed}: must be between 0.25 and 4.0", param="speed")
    if body.stream_format is not None:
        if body.stream_format not in ("audio", "sse"):
            raise ApiError(400, f"stream_format {body.stream_format!r}: use 'audio' or 'sse'", param="stream_format")
        mode: str | None = body.stream_format
    else:
        mode = None if body.stream is False else "audio"  # OpenAI streams by default
    if mode == "audio" and fmt not in STREAMABLE:
        mode = None  # FLAC: whole file
    lang = (body.language or cfg.language).lower()
    if lang not in voice.languages:
        raise ApiError(400, f"language {body.language!r}: not supported by voice {voice.name!r} "
                       f"({', '.join(voice.languages)})", param="language")  # fmt: skip
    return voice, fmt, mode


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class StreamFailed(Exception):
    """Raised out of a raw audio stream that failed after its first byte: the server then cuts the connection
    instead of ending the chunked body, so the client sees an incomplete response rather than a short clip."""


async def _stream(job: SpeechJob, fmt: str, mode: str, body: SpeechRequest) -> AsyncIterator[bytes]:
    """Encode the job's audio as it is generated: raw bytes (`mode` "audio") or SSE events (`mode` "sse")."""
    sse = mode == "sse"

    def out(data: bytes) -> bytes:
        return _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if sse else data

    status, first, failure = "cancelled", True, None
    enc: StreamEncoder | mp3.LameStream | None = None
    try:
        job.marks["stream_start"] = time.perf_counter()
        sr = job.voice.engine.sample_rate
        if fmt == "mp3" and job.st.config.mp3_encoder == "lame" and mp3.available():
            enc = mp3.LameStream(sr)
            await asyncio.to_thread(enc.prime)  # its set-up while the engine makes the first chunk
        else:
            enc = StreamEncoder(fmt, sr)
        job.marks["encoder_ready"] = time.perf_counter()
        async for chunk in job.chunks():
            if isinstance(enc, mp3.LameStream) and not enc.inline(chunk):
                data = await asyncio.to_thread(enc.feed, chunk)  # a long chunk: ms of LAME, off the event loop
            else:
                data = enc.feed(chunk)
            # MP3/AAC: ffmpeg's first frames come a few ms after the audio they need went in (not from a 1-frame
            # first chunk: then the next chunk, one frame step later, is awaited instead of 100 ms of nothing)
            if not data and first and enc.first_output_due:
                data = await asyncio.to_thread(enc.wait_output, 0.1)
            if data:
                if first:
                    job.marks["first_byte"] = time.perf_counter()
                    job.st.metrics.ttfa.observe(job.marks["first_byte"] - job.t0)
                    first = False
                yield out(data)
        tail = enc.close()
        if tail:
            if first:
                job.st.metrics.ttfa.observe(time.perf_counter() - job.t0)
            yield out(tail)
        if sse:
            yield _event({"type": "speech.audio.done", "usage": {"audio_seconds": round(job.audio_s, 3),
                                                                  "input_characters": len(body.input)}})
        status = "ok"
    except (asyncio.CancelledError, GeneratorExit):
        raise  # the client went away: "cancelled"
    except Exception as e:  # noqa: BLE001 - any failure after the 200 is reported in-band and counted
        status, failure = "error", e
        log.error("speech stream failed after the response started: %s: %s", type(e).__name__, e)
    finally:
        job.cancel()
        if status != "ok" and enc is not None:
            enc.abort()
        job.observe(status, fmt, mode)
    if failure is not None:
        if sse:
            yield _event({"type": "error", "error": {"message": f"synthesis failed: {failure}", "type": "server_error",
                                                     "param": None, "code": "synthesis_failed"}})  # fmt: skip
        else:
            raise StreamFailed(str(failure))


_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 408, 413, 500, 503)}


@router.post("/v1/audio/speech", dependencies=[Depends(require_auth)], responses=_ERRORS)
async def speech(body: SpeechRequest, request: Request) -> Response:
    """Speak `input` with `voice`: streamed as it is made (OpenAI's default), as SSE events, or whole (`stream`
    false; FLAC always)."""
    t0 = time.perf_counter()
    st = get_state(request)
    info = request.scope.setdefault("state", {})
    voice, fmt, mode = validate(body, st)
    info["vp_labels"] = (voice.name, fmt, mode or "none")
    lang = (body.language or st.config.language).lower()
    job = SpeechJob(voice, st, body.input, instructions=body.instructions, language=lang, speed=body.speed, t0=t0)
    if "vp_arrived" in info:
        job.marks["arrived"] = info["vp_arrived"]
    await job.start()  # ApiError (400/503) -> the envelope, counted by the gate
    headers = {"X-Voicepipe-Voice": voice.name}
    if mode is not None:
        info["vp_counted"] = True  # the stream counts its own outcome
        media = "text/event-stream" if mode == "sse" else MEDIA_TYPES[fmt]
        return StreamingResponse(_stream(job, fmt, mode, body), media_type=media,
                                 headers={**headers, "Cache-Control": "no-cache"})  # fmt: skip
    parts: list[np.ndarray] = []
    try:
        async for chunk in job.chunks():
            parts.append(chunk)
            if await request.is_disconnected():
                info["vp_counted"] = True
                job.observe("cancelled", fmt, "none")
                return Response(status_code=499)
    except Exception as e:
        raise ApiError(500, f"synthesis failed: {e}", type="server_error", code="synthesis_failed") from e
    finally:
        job.cancel()
    wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    data = await asyncio.to_thread(encode, wav, voice.engine.sample_rate, fmt)
    st.metrics.ttfa.observe(time.perf_counter() - t0)
    info["vp_counted"] = True
    job.observe("ok", fmt, "none")
    return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)


@router.get("/v1/audio/voices", response_model=AudioVoicesResponse, dependencies=[Depends(require_auth)])
def audio_voices(request: Request) -> AudioVoicesResponse:
    """The loaded voice names, at Kokoro-FastAPI's path and shape (`{"voices": [...]}`); /v1/voices has details."""
    return AudioVoicesResponse(voices=sorted(get_state(request).voices))
