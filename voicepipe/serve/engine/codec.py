"""Streaming codec decode: windows of new frames (with left context) decoded on their own thread and CUDA stream.

A mixin of `TTSEngine`; `_handle` also delivers each request's final 'done' event after its last audio.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from voicepipe.serve.engine.core import Event, RequestHandle

log = logging.getLogger("voicepipe.serve.engine")

SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz
SAMPLE_RATE = 24000


class CodecStreaming:
    """Device->host copies that keep the GIL free, and the decode thread's jobs."""

    def _to_host(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Device -> host copy that waits by polling an event with short sleeps, so the GIL stays free for the
        other engine thread (a blocking copy would stall it for the whole wait)."""
        if x.device.type != "cuda":
            return x.clone() if out is None else out.copy_(x)
        if out is None:
            out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        out.copy_(x, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        while not ev.query():
            time.sleep(0.0002)
        return out

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, 16] -> waveform [B, n*1920] (float32, CPU)."""
        dec = self.model.speech_tokenizer.model.decoder
        wav = dec(codes.to(next(dec.parameters()).device).clamp(min=0).transpose(1, 2))
        return self._to_host(wav[:, 0].float())

    def _emit_audio(self, due: list[RequestHandle]) -> None:
        """Hand the due windows (left context + new frames) to the decode thread, batched by shape."""
        ctx = self.cfg.left_context_frames
        groups: dict[tuple[int, int], list[RequestHandle]] = collections.defaultdict(list)
        for req in due:
            start = max(0, req.emitted - ctx)
            groups[(len(req.frames) - start, req.emitted - start)].append(req)
        now = time.perf_counter()
        for (_, n_ctx), reqs in groups.items():
            batch = torch.stack([torch.stack(r.frames[max(0, r.emitted - ctx) :]) for r in reqs])
            for r in reqs:
                if r.emitted == 0:
                    r.marks["first_enqueue"] = now
                r.emitted = len(r.frames)
            self._queue_job(("audio", reqs, batch, n_ctx))

    def _decode_loop(self) -> None:
        """Codec decoding on its own thread (and CUDA stream), overlapping the next frame steps."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            while True:
                job = self._dq.get()
                if job is None:
                    return
                self._handle(job)

    def _queue_job(self, job: tuple) -> None:
        if self.cfg.decode_thread:
            self._dq.put(job)
        else:
            self._handle(job)

    def _handle(self, job: tuple) -> None:
        """Run one decode-side job: ('audio', reqs, codes, n_ctx) or ('done', req, event)."""
        from voicepipe.serve.engine.core import Event

        if job[0] == "done":
            _, req, ev = job
            if req.first_audio_at is not None:
                ev.stats["ttfa_s"] = req.first_audio_at - req.submitted
            ev.stats["marks_ms"] = {k: round(1000 * (v - req.submitted), 2) for k, v in req.marks.items()}
            ev.stats["wall_s"] = time.perf_counter() - req.submitted
            if not req.cancelled or ev.kind == "error":
                self._send(req, ev)
            req.finished.set()
            return
        _, reqs, batch, n_ctx = job
        t_start = time.perf_counter()
        live = [i for i, r in enumerate(reqs) if not r.cancelled]
        if not live:
            return
        try:
            wav = self._decode(batch[live])[:, n_ctx * SAMPLES_PER_FRAME :].numpy()
        except Exception as e:  # noqa: BLE001 - fail these requests, keep the engine up
            log.exception("codec decode failed")
            for i in live:
                self._send(reqs[i], Event("error", message=f"codec decode failed: {e}"))
                reqs[i].cancel()
            return
        now = time.perf_counter()
        for i, w in zip(live, wav, strict=True):
            r = reqs[i]
            if r.first_audio_at is None:
                r.first_audio_at = now
                r.marks.update(first_decode_start=t_start, first_decode_end=now)
            self._send(r, Event("audio", audio=w.copy()))

    def _send(self, req: RequestHandle, ev: Event) -> None:
        try:
            req.on_event(ev)
        except Exception:  # a broken consumer must not take the engine down
            log.exception("event consumer of request %s failed; cancelling it", req.id)
            req.cancelled = True
