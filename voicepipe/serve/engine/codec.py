"""Streaming codec decode: windows of new frames (with left context) decoded on their own thread and CUDA stream.

A mixin of `TTSEngine`; `_handle` also delivers each request's final 'done' event after its last audio.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from voicepipe.serve.engine.core import Event, RequestHandle

log = logging.getLogger("voicepipe.serve.engine")

SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz
SAMPLE_RATE = 24000


def codec_frame_bucket(n: int) -> int:
    """Frames a codec graph decodes for a window of n: the next power of two up to 8, then the next multiple of 8."""
    return 1 << max(0, (n - 1).bit_length()) if n <= 8 else -(-n // 8) * 8


def wait_event(ev: torch.cuda.Event) -> None:
    """Wait for a recorded CUDA event by polling it with short sleeps: the GIL stays free for the engine's other
    thread (a blocking wait would hold it for the whole wait)."""
    while not ev.query():
        time.sleep(0.0002)


class CodecStreaming:
    """Device->host copies that keep the GIL free, and the decode thread's jobs."""

    decode_calls = 0  # codec decode calls so far (one per batch of windows of one shape)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, 16] -> waveform [B, n*1920] (float32, CPU). The copy to the host is waited for by polling an
        event with short sleeps, so the GIL stays free for the engine's other thread (a blocking copy would hold it
        for the whole wait)."""
        wav, ev = self._decode_launch(codes)
        if ev is not None:
            wait_event(ev)
        return wav

    def _decode_launch(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue the decode of codes [B, n, 16] on the current stream, and its copy into pinned host memory:
        (waveform [B, n*1920] float32 on the host, the event after which it holds the audio; None: it already
        does, off CUDA)."""
        dec = self.model.speech_tokenizer.model.decoder
        dev = next(dec.parameters()).device
        x = (codes.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else codes.to(dev))
        x = x.clamp(min=0).transpose(1, 2)
        wav = self._decode_graphed(dec, x) if self._codec_graphed else None
        if wav is None:
            wav = dec(x)
        wav = wav[:, 0].float()
        if wav.device.type != "cuda":
            return wav.clone(), None
        out = torch.empty(wav.shape, dtype=wav.dtype, pin_memory=True)
        out.copy_(wav, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return out, ev

    def _fuse_codec(self) -> bool:
        """Rewrite the codec decoder's activations as `engine.snake`'s kernel when `EngineConfig.codec_fused` says so
        (None: on CUDA with Triton); returns whether it did."""
        from voicepipe.serve.engine import snake

        st = getattr(self.model, "speech_tokenizer", None)
        if st is None:  # codes only (no codec: e.g. the benchmarks' fp32 reference engine)
            return False
        dec = st.model.decoder
        dev = next(dec.parameters()).device
        on = self.cfg.codec_fused
        if on is None:
            on = dev.type == "cuda" and snake.available(dev)
        snake.fuse_codec(dec, bool(on))  # off: the package's forwards (an earlier engine may have fused them)
        return bool(on)

    @property
    def _codec_graphed(self) -> bool:
        """Whether codec decodes replay CUDA graphs (`EngineConfig.codec_graphs`; default: with CUDA graphs)."""
        c = self.cfg.codec_graphs
        return (self.use_graphs if c is None else bool(c)) and self.device.type == "cuda" and not self._codec_broken

    _codec_broken = False

    def _decode_graphed(self, dec: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Decode through a CUDA graph of the padded shape (batch to its bucket, frames to `codec_frame_bucket`).

        The codec is causal, so frames padded on the right change none of the samples kept. Graphs are captured on
        first use of a shape, on the decode thread's stream; a capture that fails turns codec graphs off (eager)."""
        from voicepipe.serve.engine.step import _bucket_sizes

        B, _, n = x.shape
        bb = next((s for s in _bucket_sizes(self.cfg.max_batch) if s >= B), B)
        key = (bb, codec_frame_bucket(n))
        graphs = self.__dict__.setdefault("_codec_graphs", {})
        # Under the step lock: while any CUDA graph is being captured, PyTorch marks the (shared) CUDA RNG as
        # capturing, and a replay of another graph in another thread then fails ("Offset increment outside graph
        # capture"). So codec captures and replays never overlap frame-step captures and replays. The lock is held
        # only while work is queued (microseconds for a replay), not while it runs.
        with self._step_lock:
            entry = graphs.get(key) or self._capture_or_break(graphs, dec, key, x)
            if entry is None:
                return None
            g, inp, out = entry
            inp.zero_()
            inp[:B, :, :n] = x
            g.replay()
        return out[:B, :, : n * SAMPLES_PER_FRAME]

    def _codec_keys(self) -> list[tuple[int, int]]:
        """Every (batch bucket, frame bucket) a decode call can take: up to `max_batch` windows of at most a chunk
        plus its left context (the ramp's chunks are never longer than `chunk_frames`, nor are the cadence's)."""
        from voicepipe.serve.engine.step import _bucket_sizes

        n_max = max(self.cfg.chunk_frames, self.cfg.first_chunk_frames) + self.cfg.left_context_frames
        frames = sorted({codec_frame_bucket(n) for n in range(1, n_max + 1)})
        return [(b, f) for b in _bucket_sizes(self.cfg.max_batch) for f in frames]

    def capture_codec(self) -> float:
        """Capture the decode graph of every window shape (`_codec_keys`) now; returns seconds spent.

        Otherwise a shape is captured the first time a decode needs it, inside that request's time and under the
        step lock (frame steps wait): 1 + 15 requests admitted a step apart make windows an unsplit burst never
        makes. No-op without codec graphs."""
        if not self._codec_graphed:
            return 0.0
        t0 = time.perf_counter()
        dec = self.model.speech_tokenizer.model.decoder
        like = torch.zeros(1, self.n_groups, 1, dtype=torch.long, device=next(dec.parameters()).device)
        graphs = self.__dict__.setdefault("_codec_graphs", {})
        with torch.inference_mode(), self._step_lock:
            for key in self._codec_keys():
                if key not in graphs and self._capture_or_break(graphs, dec, key, like) is None:
                    break
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def _capture_or_break(self, graphs: dict, dec: torch.nn.Module, key: tuple[int, int], like: torch.Tensor
                          ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None:  # fmt: skip
        """Capture the graph of `key` into `graphs` (the caller holds the step lock); a capture that fails turns
        codec graphs off (eager decoding from then on, serving goes on) and gives None."""
        try:
            entry = graphs[key] = self._capture_codec(dec, key, like)
        except Exception:  # noqa: BLE001 - fall back to eager decoding, keep serving
            log.exception("codec graph capture failed for shape %s; decoding eagerly from now on", key)
            self._codec_broken = True
            return None
        return entry

    codec_captures = 0  # codec graphs captured so far (at start-up by `capture_codec`, or on a decode's first use)

    def _capture_codec(self, dec: torch.nn.Module, key: tuple[int, int], like: torch.Tensor
                       ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:  # fmt: skip
        t0 = time.perf_counter()
        inp = torch.zeros(key[0], like.shape[1], key[1], dtype=like.dtype, device=like.device)
        bench = self.cfg.codec_cudnn_benchmark
        # cuDNN's flag is process-wide; only the codec runs convolutions, and it is set back right after
        prev, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, bench is None or bool(bench)
        try:
            dec(inp)  # warm-up: lazy initialisation and algorithm choice (timed with the flag) outside the capture
            stream = self.__dict__.setdefault("_codec_stream", torch.cuda.Stream(like.device))
            pool = self.__dict__.setdefault("_codec_pool", torch.cuda.graph_pool_handle())
            stream.wait_stream(torch.cuda.current_stream())
            g = torch.cuda.CUDAGraph()
            # own pool and stream: the frame-step graphs may be captured on the engine thread at the same time
            with torch.cuda.graph(g, pool=pool, stream=stream, capture_error_mode="thread_local"):
                out = dec(inp)
            torch.cuda.current_stream().wait_stream(stream)
        finally:
            torch.backends.cudnn.benchmark = prev
        self.codec_captures += 1
        ms = 1000 * (time.perf_counter() - t0)
        self.__dict__.setdefault("codec_capture_ms", []).append(ms)
        log.info("codec graph %s captured in %.0f ms", key, ms)
        return g, inp, out

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
            first = all(r.emitted == 0 for r in reqs)
            for r in reqs:
                if r.emitted == 0:
                    r.marks["first_enqueue"] = now
                r.emitted = len(r.frames)
            if first and self._first_decode_here:
                self._decode_first(reqs, batch)
            else:
                self._queue_job(("audio", reqs, batch, n_ctx))

    @property
    def _first_decode_here(self) -> bool:
        """Whether first windows are decoded from the engine thread (CUDA: on its stream, ahead of the next frame
        step; `EngineConfig.first_decode_alone`): only while the decode thread has every job it was given done (a
        burst reaching an idle engine), since a request joining running streams would make them wait."""
        st = self.__dict__.get("_decode_stream")
        return (bool(self.cfg.first_decode_alone) and self._decoder is not None and self._dq.unfinished_tasks == 0
                and (st is None or st.query()))

    def _decode_first(self, reqs: list[RequestHandle], batch: torch.Tensor) -> None:
        """First windows: their decode queued on the engine's stream ahead of the next frame step, so that it has the
        GPU to itself (H200: 16 one-frame windows beside a 16-row frame step took ~6 ms, alone ~4); the decode
        thread waits for its copy to the host and hands the audio out (off CUDA: decoded here, handed out there).
        The codec graphs share one memory pool, so no two may run at once: the engine's stream waits for the decode
        stream's work, and the decode stream for this decode."""
        live = [i for i, r in enumerate(reqs) if not r.cancelled]
        if not live:
            return
        t_start = time.perf_counter()
        self.decode_calls += 1
        dstream = self.__dict__.get("_decode_stream")
        try:
            with self._step_lock:  # the decode thread launches its replays under it too
                if dstream is not None:
                    torch.cuda.current_stream().wait_stream(dstream)
                wav, ev = self._decode_launch(batch[live])
                if dstream is not None and ev is not None:
                    dstream.wait_event(ev)
        except Exception as e:  # noqa: BLE001 - fail these requests, keep the engine up
            self._decode_failed([reqs[i] for i in live], e)
            return
        self._queue_job(("ready", [reqs[i] for i in live], wav, ev, t_start))

    @staticmethod
    def _gpu_marks_to_host(req: RequestHandle) -> None:
        """The request's GPU timing events as `marks` (perf_counter seconds): the prefill's start event is taken to
        have run when it was recorded (`prefill_start`: the engine admits bursts when idle), the others by the
        GPU's elapsed time from it. Called once its events have all run (at its end)."""
        if not req.gpu_marks or "prefill_start" not in req.marks:
            return
        t0, (_, ev0) = req.marks["prefill_start"], req.gpu_marks[0]
        try:
            for name, ev in req.gpu_marks:
                req.marks[name] = t0 + ev0.elapsed_time(ev) / 1e3
        except RuntimeError:  # an event not recorded or not run: no GPU marks, nothing else depends on them
            log.debug("GPU marks of request %s unavailable", req.id)
        req.gpu_marks = []

    def _decode_loop(self) -> None:
        """Codec decoding on its own thread (and CUDA stream), overlapping the next frame steps."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._decode_stream = stream
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            while True:
                job = self._dq.get()
                try:
                    if job is None:
                        return
                    self._handle(job)
                finally:  # counted down only once handled (`_first_decode_here` reads the count)
                    self._dq.task_done()

    def _queue_job(self, job: tuple) -> None:
        if self.cfg.decode_thread:
            self._dq.put(job)
        else:
            self._handle(job)

    def _handle(self, job: tuple) -> None:
        """Run one decode-side job: ('audio', reqs, codes, n_ctx), ('ready', reqs, host wav, event, t_start) (a
        decode already queued, `_decode_first`) or ('done', req, event)."""
        if job[0] == "done":
            _, req, ev = job
            if req.first_audio_at is not None:
                ev.stats["ttfa_s"] = req.first_audio_at - req.submitted
            self._gpu_marks_to_host(req)
            ev.stats["marks_ms"] = {k: round(1000 * (v - req.submitted), 2) for k, v in req.marks.items()}
            ev.stats["wall_s"] = time.perf_counter() - req.submitted
            if not req.cancelled or ev.kind == "error":
                self._send(req, ev)
            req.finished.set()
            return
        if job[0] == "ready":  # a decode already queued on the engine's stream (`_decode_first`)
            _, out, wav_host, ev, t_start = job
            if ev is not None:
                wait_event(ev)
            self._deliver(out, wav_host.numpy(), t_start)
            return
        _, reqs, batch, n_ctx = job
        t_start = time.perf_counter()
        live = [i for i, r in enumerate(reqs) if not r.cancelled]
        if not live:
            return
        self.decode_calls += 1
        try:
            wav = self._decode(batch[live])[:, n_ctx * SAMPLES_PER_FRAME :].numpy()
        except Exception as e:  # noqa: BLE001 - fail these requests, keep the engine up
            self._decode_failed([reqs[i] for i in live], e)
            return
        self._deliver([reqs[i] for i in live], wav, t_start)

    def _deliver(self, reqs: list[RequestHandle], wav: np.ndarray, t_start: float) -> None:
        """Each request's decoded window (wav [len(reqs), samples]) as its next audio event."""
        from voicepipe.serve.engine.core import Event

        now = time.perf_counter()
        for r, w in zip(reqs, wav, strict=True):
            if r.first_audio_at is None:
                r.first_audio_at = now
                r.marks.update(first_decode_start=t_start, first_decode_end=now)
            self._send(r, Event("audio", audio=w.copy()))

    def _decode_failed(self, reqs: list[RequestHandle], e: Exception) -> None:
        from voicepipe.serve.engine.core import Event

        log.exception("codec decode failed")
        for r in reqs:
            self._send(r, Event("error", message=f"codec decode failed: {e}"))
            r.cancel()

    def _send(self, req: RequestHandle, ev: Event) -> None:
        try:
            req.on_event(ev)
        except Exception:  # a broken consumer must not take the engine down
            log.exception("event consumer of request %s failed; cancelling it", req.id)
            req.cancelled = True
