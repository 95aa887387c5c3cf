"""The engine launches frame step n+1 before it reads step n's codes (`EngineConfig.overlap_host`): the host's
per-step work (reading codes, emitting audio, retiring requests) then overlaps the GPU's. The lag must change no
request's codes: a request that ends while the next step is in flight has one extra frame computed for its slot,
which nobody reads, and its slot is handed to the next request only after that."""

from __future__ import annotations

import pytest
import torch

from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine

GREEDY = dict(do_sample=False, subtalker_do_sample=False)


@pytest.fixture(scope="module")
def tts(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    return load_tts(tiny_custom_voice_dir)


def _codes(eng: TTSEngine, jobs: list[tuple[str, int]]) -> list[torch.Tensor]:
    """Submit every job at once (text, frames) and return each one's codes."""
    import queue

    outs, handles = [], []
    for text, n in jobs:
        q: queue.Queue = queue.Queue()
        gen = GenerationConfig(max_new_tokens=n, min_new_tokens=n, **GREEDY)
        handles.append(eng.submit(eng.prepare(text, speaker="alice"), gen, q.put))
        outs.append(q)
    for q in outs:
        while (ev := q.get(timeout=120)).kind != "done":
            assert ev.kind == "audio", ev
    return [torch.stack(h.frames) for h in handles]


JOBS = [("The first request, short.", 5), ("A second one that runs longer than the first.", 11),
        ("Third in line: it waits for a free slot.", 7), ("And a fourth, the last.", 3)]


@pytest.mark.parametrize("max_batch", [1, 2])
def test_overlapped_steps_give_every_request_the_codes_it_gets_alone(tts, max_batch):
    alone = []
    for job in JOBS:
        eng = TTSEngine(tts, EngineConfig(max_batch=max_batch, max_len=128, overlap_host=False)).start()
        try:
            alone.append(_codes(eng, [job])[0])
        finally:
            eng.stop()
    for overlap in (False, True):
        eng = TTSEngine(tts, EngineConfig(max_batch=max_batch, max_len=128, overlap_host=overlap)).start()
        try:
            got = _codes(eng, JOBS)
            launched, read = eng.launched, eng.steps
        finally:
            eng.stop()
        for (_, n), a, g in zip(JOBS, alone, got, strict=True):
            assert g.shape == (n, 16)
            assert torch.equal(a, g), f"overlap_host={overlap}: codes changed when requests share the engine"
        # with the overlap, the host read every launched step's codes, or all but the last: one step ahead at most
        assert launched - read in ((0,) if not overlap else (0, 1))


def _audio(eng: TTSEngine, jobs: list[tuple[str, int]]) -> list[list]:
    """Submit every job at once (greedy) and return each one's audio chunks."""
    import queue

    qs = []
    with eng._step_lock:  # queued together: one prefill, one first step for all
        for text, n in jobs:
            q: queue.Queue = queue.Queue()
            eng.submit(eng.prepare(text, speaker="alice"), GenerationConfig(max_new_tokens=n, min_new_tokens=n,
                                                                            **GREEDY), q.put)
            qs.append(q)
    out = []
    for q in qs:
        chunks = []
        while (ev := q.get(timeout=120)).kind != "done":
            assert ev.kind == "audio", ev
            chunks.append(ev.audio)
        out.append(chunks)
    return out


def test_first_windows_decoded_by_the_engine_thread_give_the_same_audio(tts, monkeypatch):
    """`first_decode_alone`: a burst's first windows are decoded from the engine thread (on CUDA: on its stream,
    ahead of the second frame step), the rest on the decode thread; every chunk is what the decode thread alone
    makes, and the step holding the first frames is read before the next one is launched."""
    import threading

    import numpy as np

    jobs = JOBS[:2]
    where: list[tuple[str, int]] = []
    in_flight: list[int] = []  # frame steps launched and not yet read, when the engine thread decodes
    real = TTSEngine._decode_launch

    def spy(self, codes):
        where.append((threading.current_thread().name, codes.shape[1]))
        if threading.current_thread().name == "tts-engine":
            in_flight.append(self.launched - self.steps)
        return real(self, codes)

    monkeypatch.setattr(TTSEngine, "_decode_launch", spy)
    got = {}
    for alone in (False, True):
        where.clear()
        eng = TTSEngine(tts, EngineConfig(max_batch=2, max_len=128, first_decode_alone=alone)).start()
        try:
            got[alone] = _audio(eng, jobs)
        finally:
            eng.stop()
        first = [w for w in where if w[1] == 1]  # the first windows: one frame each, both requests in one call
        assert first == [("tts-engine" if alone else "tts-codec", 1)], where
        assert all(name == "tts-codec" for name, n in where if n > 1), where
    assert in_flight == [0]  # the second step is launched after the first windows' decode
    for a, b in zip(got[False], got[True], strict=True):
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
