"""Speaking one request with a voice's engine, for every front end (the OpenAI HTTP routes and the Wyoming server).

A `SpeechJob` checks its text, splits it into sentence-packed segments, takes a place in the voice's queue (the cap
is checked and the place taken in one step on the event loop, so a burst cannot overshoot it), prepares every
segment's prompt before any audio byte is promised (a segment the model cannot take is a 400, not a cut stream),
and yields float32 24 kHz chunks in order while the engine makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator

import numpy as np
from sentence_stream import stream_to_sentences

from voicepipe.serve.deps import ApiError, ServerState
from voicepipe.serve.engine import EngineError, Event, Prompt, RequestHandle
from voicepipe.serve.registry import Voice

log = logging.getLogger(__name__)

# Runaway guard: a segment may not produce more audio than 0.2 s per character (3x slow speech), at least 5 s.
# A model that never emits EOS (the seed's noisy fine-tunes) then stops instead of holding a slot for minutes.
SECONDS_PER_CHAR, MIN_SEGMENT_SECONDS = 0.2, 5.0


class SynthesisError(RuntimeError):
    """Generation failed after the request was accepted (engine or codec error)."""


def check_text(value: str, field: str, limit: int) -> str:
    """`value` as the model may take it, or ApiError(400) naming `field`: valid Unicode (no lone surrogates, which
    JSON allows but no tokenizer does) and at most `limit` characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = ord(value[e.start])
        raise ApiError(400, f"{field}: not valid Unicode text (lone surrogate U+{bad:04X} at character {e.start})",
                       param=field, code="invalid_text") from None  # fmt: skip
    if len(value) > limit:
        raise ApiError(400, f"{field}: {len(value)} characters, the limit is {limit}", param=field,
                       code=f"{field}_too_long")  # fmt: skip
    return value


def control_tokens(voice: Voice) -> re.Pattern[str] | None:
    """A pattern matching the voice tokenizer's special tokens (`<|im_end|>`, `<|tts_pad|>`, ...). The tokenizer
    turns them into control ids even inside user text, which would let a request rewrite the model's prompt."""
    tok = getattr(getattr(getattr(voice.engine, "tts", None), "processor", None), "tokenizer", None)
    specials = set(getattr(tok, "all_special_tokens", None) or [])
    specials |= {str(t) for t in (getattr(tok, "added_tokens_decoder", None) or {}).values() if getattr(t, "special",
                 False)}  # fmt: skip
    specials = {t for t in specials if t}
    return re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True)))) if specials else None


def split_text(text: str, max_chars: int) -> list[str]:
    """Split `text` into segments of at most ~`max_chars`, each made of whole sentences where it can be.

    Sentences come from `sentence_stream` (Home Assistant's splitter, also used by the Wyoming servers): it keeps
    abbreviations such as "Dr. Smith" together and splits Chinese at 。！？. A sentence longer than `max_chars` is
    cut at the last space before the limit (or at the limit, for scripts without spaces). Short input stays one
    segment."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text] if text else []
    segments: list[str] = []
    cur = ""
    for sent in stream_to_sentences([text]):
        while len(sent) > max_chars:
            cut = sent.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if cur:
                segments.append(cur)
                cur = ""
            segments.append(sent[:cut].strip())
            sent = sent[cut:].strip()
        joiner = "" if cur and not cur[-1].isascii() else " "  # no space between CJK sentences
        if cur and len(cur) + len(joiner) + len(sent) > max_chars:
            segments.append(cur)
            cur = sent
        else:
            cur = f"{cur}{joiner}{sent}".strip()
    if cur:
        segments.append(cur)
    return [s for s in segments if s]


def stretch(wav: np.ndarray, speed: float) -> np.ndarray:
    """Time-stretch without pitch change (speed 2.0 = half the duration)."""
    if speed == 1.0 or len(wav) == 0:
        return wav
    import librosa

    return librosa.effects.time_stretch(wav.astype(np.float32), rate=speed).astype(np.float32)


def busy(message: str, retry_after_s: float, code: str = "server_busy") -> ApiError:
    """A 503 with Retry-After (whole seconds, at least 1)."""
    return ApiError(503, message, type="server_busy", code=code,
                    headers={"Retry-After": str(max(1, round(retry_after_s)))})  # fmt: skip


class SpeechJob:
    """One request: its text segments, spoken one after the other by the voice's engine."""

    def __init__(self, voice: Voice, st: ServerState, text: str, *, instructions: str | None = None,
                 language: str = "auto", speed: float = 1.0, t0: float | None = None):  # fmt: skip
        self.voice, self.st = voice, st
        self.language, self.speed = language, speed
        self.t0 = time.perf_counter() if t0 is None else t0
        controls = control_tokens(voice)
        if controls is not None:  # spoken as text would be wrong too: they are markup, not words
            text = controls.sub(" ", text)
            instructions = controls.sub(" ", instructions) if instructions else instructions
        self.instructions = instructions if instructions and instructions.strip() else None
        self.segments = split_text(text, st.config.segment_chars)
        if not self.segments:
            raise ApiError(400, "input: nothing to speak (empty, or only the model's control tokens)", param="input")
        # the checkpoint's generation_config.json, capped by max_frames, then the server's `generation` overrides
        own = voice.engine.generation
        self.gen = own.with_overrides(**{"max_new_tokens": min(own.max_new_tokens, st.config.max_frames),
                                         **st.config.generation})
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._admission = asyncio.Event()  # set from the engine thread: admitted (or failed before it)
        self.prompts: list[Prompt] = []
        self.current: RequestHandle | None = None
        self.audio_s = 0.0
        self.first_audio_at: float | None = None
        self.marks: dict[str, float] = {}  # perf_counter timestamps of the request's milestones (diagnostics)

    def _on_event(self, ev: Event) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
            if not self._admission.is_set():  # an error before admission wakes the waiter too
                self.loop.call_soon_threadsafe(self._admission.set)
        except RuntimeError:  # the loop is closed (server shut down): nobody is listening
            pass

    def _on_admitted(self) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self._admission.set)
        except RuntimeError:
            pass

    def _prepare(self, text: str) -> Prompt:
        eng = self.voice.engine
        self.marks.setdefault("prepare_start", time.perf_counter())
        try:
            prompt = eng.prepare(text, self.voice.speaker, self.language, self.instructions,
                                 embed=not getattr(getattr(eng, "cfg", None), "embed_at_admit", False))
            self.marks.setdefault("prepared", time.perf_counter())
            return prompt
        except EngineError as e:
            field = "instructions" if self.instructions and "does not fit" in str(e) else "input"
            raise ApiError(400, f"{field}: {e}", param=field, code="prompt_too_long") from e

    async def _prepare_off_loop(self, text: str) -> Prompt:
        """`_prepare` on the server's prepare threads (`ServeConfig.prepare_threads`), queued first come first
        served, or on the loop's default pool."""
        pool = self.st.prepare_pool()
        if pool is None:
            return await asyncio.to_thread(self._prepare, text)
        return await self.loop.run_in_executor(pool, self._prepare, text)

    def _submit(self, i: int, expected: bool = False) -> RequestHandle:
        text = self.segments[i]
        cap = int(12.5 * max(MIN_SEGMENT_SECONDS, SECONDS_PER_CHAR * len(text)))
        gen = dataclasses.replace(self.gen, max_new_tokens=min(self.gen.max_new_tokens, cap))
        try:
            handle = self.voice.engine.submit(self.prompts[i], gen, self._on_event, expected=expected)
        except EngineError as e:  # engine stopped (shutting down)
            raise busy(f"voice {self.voice.name!r}: {e}", self.st.config.retry_after_s, "engine_stopped") from e
        handle.on_admitted = self._on_admitted  # set after submit: `_wait_admitted` also checks the handle
        return handle

    async def start(self) -> None:
        """Take a place in the queue (503 + Retry-After when it is full), prepare every segment (400 when one does
        not fit the model), and wait for a generation slot for the first (503 after `queue_timeout_s`)."""
        cfg, name = self.st.config, self.voice.name
        waiting = self.st.waiting
        if waiting.get(name, 0) >= cfg.max_queue:  # check and take the place with no await in between
            raise busy(f"server busy: {waiting[name]} requests waiting for voice {name!r}", cfg.retry_after_s)
        waiting[name] = waiting.get(name, 0) + 1
        engine, announced = self.voice.engine, True
        engine.expect()  # an idle engine waits for this prompt, so the clients of one burst share one prefill
        try:
            self.prompts.append(await self._prepare_off_loop(self.segments[0]))
            announced = False  # submit() withdraws the announcement as it queues the request
            self.current = self._submit(0, expected=True)
            self.marks["submitted"] = time.perf_counter()
            try:  # the rest are prepared while the first waits for its slot / generates
                for seg in self.segments[1:]:
                    self.prompts.append(await self._prepare_off_loop(seg))
                await self._wait_admitted(cfg.queue_timeout_s)
                self.marks["admitted_seen"] = time.perf_counter()
            except BaseException:
                self.cancel()
                raise
        finally:
            waiting[name] -= 1
            if announced:  # prepare failed: nothing will come
                engine.expect(-1)

    async def _wait_admitted(self, timeout_s: float) -> None:
        """Until the engine admits the first segment: woken by the engine (`RequestHandle.on_admitted`, or an error
        event), not by polling, so a burst's requests leave for their streams as soon as the prefill is done and
        sixteen waiters do not wake the event loop every few ms meanwhile. The handle's flags are read again every
        50 ms in any case (a wake-up missed because the callback was set after the engine had admitted it)."""
        assert self.current is not None
        deadline = time.perf_counter() + timeout_s
        while not self.current.admitted.is_set():
            if self.current.finished.is_set() or not self.events.empty():
                return  # failed before admission; the error event is in the queue
            left = deadline - time.perf_counter()
            if left <= 0:
                raise busy(f"no generation slot free within {timeout_s:g} s, try again", self.st.config.retry_after_s,
                           "queue_timeout")  # fmt: skip
            self._admission.clear()
            if self.current.admitted.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admission.wait(), min(left, 0.05))

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """Audio chunks (float32, 24 kHz, speed applied) in order, across all segments; SynthesisError on failure."""
        for i in range(len(self.segments)):
            if i > 0:
                self.current = self._submit(i)
            while True:
                ev = await self.events.get()
                if ev.kind == "audio":
                    if self.first_audio_at is None:
                        self.first_audio_at = self.marks["first_chunk"] = time.perf_counter()
                    yield stretch(ev.audio, self.speed)
                elif ev.kind == "done":
                    self.audio_s += ev.stats.get("audio_s", 0.0) / self.speed
                    break
                else:
                    raise SynthesisError(ev.message or "generation failed")

    def cancel(self) -> None:
        """Free the engine slot (or queue place) of the segment in flight."""
        if self.current is not None:
            self.current.cancel()

    def observe(self, status: str, fmt: str, stream: str) -> None:
        """Count the request's outcome (and, when it succeeded, its real-time factor and audio)."""
        m = self.st.metrics
        if m is None:
            return
        m.requests.labels(self.voice.name, fmt, stream, status).inc()
        if status == "ok" and self.audio_s > 0:
            m.rtf.observe((time.perf_counter() - self.t0) / self.audio_s)
            m.audio_seconds.labels(self.voice.name).inc(self.audio_s)
