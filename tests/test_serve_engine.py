"""The generation engine against the package's own generate, on the tiny real-architecture custom-voice model."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine

GREEDY = dict(do_sample=False, subtalker_do_sample=False)
PKG_GREEDY = dict(do_sample=False, subtalker_dosample=False)  # the package's spelling


@pytest.fixture(scope="module")
def engine(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    eng = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=256)).start()
    yield eng
    eng.stop()


def _package_codes(eng: TTSEngine, text: str, n_frames: int, non_streaming: bool, instruct: str | None
                   ) -> torch.Tensor:  # fmt: skip
    """The package's own generate (greedy). It returns max_new_tokens - 1 frames when no EOS comes."""
    tts = eng.tts
    ids = tts._tokenize_texts([tts._build_assistant_text(text)])
    ins = [tts._tokenize_texts([tts._build_instruct_text(instruct)])[0] if instruct else None]
    with torch.inference_mode():
        codes, _ = tts.model.generate(input_ids=ids, instruct_ids=ins, languages=["english"], speakers=["alice"],
                                      non_streaming_mode=non_streaming, max_new_tokens=n_frames + 1, **PKG_GREEDY)
    return codes[0]


@pytest.mark.parametrize(
    ("non_streaming", "instruct"),
    [(True, None), (False, None), (True, "Speak slowly and warmly.")],
    ids=["text-in-prompt", "text-streamed", "with-instruction"],
)
def test_engine_greedy_codes_equal_package_generate(engine, non_streaming, instruct):
    text = "Hello, this is a test of the voice pipeline."
    ref = _package_codes(engine, text, 24, non_streaming, instruct)
    prompt = engine.prepare(text, speaker="alice", language="english", instruct=instruct,
                            non_streaming_text=non_streaming)
    ours = engine.generate_codes(prompt, GenerationConfig(max_new_tokens=24, **GREEDY))
    assert ref.shape[1] == 16 and len(ref) > 0
    assert torch.equal(ours[: len(ref)], ref), "engine codes differ from qwen_tts generate"
    assert len(ours) in (len(ref), len(ref) + 1)  # the package drops the frame of its last sampled token


def test_concurrent_requests_batch_and_match_solo(engine):
    gen = GenerationConfig(max_new_tokens=15, min_new_tokens=15, **GREEDY)
    texts = ["Hi.", "A much longer sentence, with quite a few more words in it.", "Thank you for listening!"]
    prompts = [engine.prepare(t, speaker="alice") for t in texts]
    assert len({p.embeds.shape[0] for p in prompts}) == 3  # different prompt lengths share one batched prefill
    solo = [engine.generate_codes(p, gen) for p in prompts]
    steps0 = engine.steps
    handles = [engine.submit(p, gen, lambda ev: None) for p in prompts]
    for h in handles:
        assert h.finished.wait(60)
    for h, s in zip(handles, solo, strict=True):
        assert torch.equal(torch.stack(h.frames), s)
    assert engine.steps - steps0 < 3 * 15  # the three ran in shared frame steps, not one after another


def test_stream_delivers_chunks_before_the_end(engine):
    prompt = engine.prepare("Streaming test.", speaker="alice")
    q: queue.Queue = queue.Queue()
    engine.submit(prompt, GenerationConfig(max_new_tokens=30, min_new_tokens=30), q.put)
    arrivals, sizes = [], []
    while True:
        ev = q.get(timeout=60)
        arrivals.append(time.perf_counter())
        if ev.kind == "done":
            break
        assert ev.kind == "audio"
        sizes.append(len(ev.audio))
    assert len(sizes) >= 3
    assert sizes[0] == engine.cfg.first_chunk_frames * 1920 == 1920  # one frame, for a short time to first audio
    assert sum(sizes) == 30 * 1920
    assert ev.stats["ttfa_s"] < ev.stats["wall_s"]
    assert arrivals[0] < arrivals[-2]


def test_staggered_requests_decode_together_once_their_chunks_are_on_the_cadence(engine):
    """Requests admitted at different steps (clients arrive one by one) share codec decode calls after their first
    chunks; each decode per request at its own phase made the GPU decode 16 windows where one batched call does."""
    calls: list[int] = []
    real = engine._decode

    def counting(codes):
        calls.append(int(codes.shape[0]))
        return real(codes)

    engine._decode = counting
    try:
        gen = GenerationConfig(max_new_tokens=150, min_new_tokens=150)
        prompt = engine.prepare("Staggered.", speaker="alice")
        got: dict[int, int] = {}
        handles = []
        for i, lead in enumerate((0, 3, 7)):  # each joins `lead` frames after the previous one
            if handles:
                deadline = time.time() + 60
                while len(handles[-1].frames) < lead and time.time() < deadline:
                    time.sleep(0.002)

            def on(ev, i=i):
                if ev.kind == "audio":
                    got[i] = got.get(i, 0) + len(ev.audio)

            handles.append(engine.submit(prompt, gen, on))
        for h in handles:
            assert h.finished.wait(120)
    finally:
        del engine._decode
    assert got == {0: 150 * 1920, 1: 150 * 1920, 2: 150 * 1920}  # every frame decoded once, in order of arrival
    starts = [h.admitted_at for h in handles]
    assert starts[0] < starts[1] < starts[2]
    # on the shared cadence one call decodes all three (at their own phases: one call each, ~3x the calls): every
    # cadence tick from the last one's ramp (~40 frames in) to the first one's end (measured: 4 at 24 frames, 6+ at 12)
    ticks = (150 - 40) // engine.cfg.chunk_frames
    assert sum(n == 3 for n in calls) >= ticks - 1, (calls, ticks)


def test_cancel_frees_the_slot(engine):
    prompt = engine.prepare("Cancel me.", speaker="alice")
    h = engine.submit(prompt, GenerationConfig(max_new_tokens=500, min_new_tokens=500), lambda ev: None)
    assert h.admitted.wait(30)
    h.cancel()
    assert h.finished.wait(30)
    deadline = time.time() + 10
    while engine.active_count and time.time() < deadline:
        time.sleep(0.02)
    assert engine.active_count == 0
    assert len(h.frames) < 500


def test_prepare_rejects_unknown_speaker_and_language(engine):
    from voicepipe.serve.engine import EngineError

    with pytest.raises(EngineError, match="speaker 'bob'"):
        engine.prepare("x", speaker="bob")
    with pytest.raises(EngineError, match="language 'klingon'"):
        engine.prepare("x", speaker="alice", language="klingon")


def test_a_burst_announced_with_expect_is_admitted_in_one_prefill(engine):
    """HTTP clients of one burst reach the engine some ms apart (each prompt is prepared in its own thread). Each
    is announced (`expect`) before it is prepared; an idle engine given the first waits for the announced rest,
    so they share one prefill (without announcements the first is prefilled alone). Same codes either way; an
    announced request that never comes delays the others by `admit_wait_ms` at most."""
    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6, **GREEDY)
    prompts = [engine.prepare(t, speaker="alice") for t in ("One.", "Two words.", "Three more words.")]
    solo = [engine.generate_codes(p, gen) for p in prompts]

    def burst(announce: bool) -> tuple[int, list]:
        before = engine.prefills
        if announce:
            engine.expect(len(prompts))
        handles = []
        for p in prompts:
            handles.append(engine.submit(p, gen, lambda ev: None, expected=announce))
            time.sleep(0.01)  # 10 ms apart
        for h in handles:
            assert h.finished.wait(60)
        return engine.prefills - before, handles

    n, handles = burst(announce=True)
    assert n == 1, n
    for h, s in zip(handles, solo, strict=True):
        assert torch.equal(torch.stack(h.frames), s)
    n, _ = burst(announce=False)
    assert n >= 2, n  # the first one alone, the others at the next step(s)

    engine.expect(1)  # announced, never submitted (e.g. its client went away during prepare)
    try:
        t0 = time.perf_counter()
        h = engine.submit(prompts[0], gen, lambda ev: None)
        assert h.finished.wait(60)
        waited = h.admitted_at - t0
        assert 0.8 * engine.cfg.admit_wait_ms / 1e3 <= waited < engine.cfg.admit_wait_ms / 1e3 + 1.0, waited
    finally:
        engine.expect(-1)


def test_a_quiet_gap_keeps_a_burst_whose_first_prompts_are_ready_in_one_prefill(engine, monkeypatch):
    """With `admit_gap_ms`, an idle engine holding a queued request also waits until no request has been announced
    for that long: a burst whose first requests are already queued while the rest are still arriving (prompts that
    are quick to prepare, `embed_at_admit`) shares one prefill. A lone announced request waits the gap, not
    `admit_wait_ms`; requests never announced (in-process) do not wait."""
    gen = GenerationConfig(max_new_tokens=4, min_new_tokens=4, **GREEDY)
    prompts = [engine.prepare(t, speaker="alice") for t in ("One.", "Two words.")]
    monkeypatch.setattr(engine.cfg, "admit_wait_ms", 5000.0)

    def burst(gap_ms: float) -> int:
        monkeypatch.setattr(engine.cfg, "admit_gap_ms", gap_ms)
        before = engine.prefills
        handles = []
        for p in prompts:  # each announced, then queued at once; the second 30 ms after the first
            engine.expect()
            handles.append(engine.submit(p, gen, lambda ev: None, expected=True))
            time.sleep(0.03)
        for h in handles:
            assert h.finished.wait(60)
        return engine.prefills - before

    assert burst(0.0) == 2  # no gap: the first is admitted alone as soon as it is queued
    assert burst(400.0) == 1

    engine.expect()  # a lone announced request: admitted once the gap has passed, long before admit_wait_ms
    t0 = time.perf_counter()
    h = engine.submit(prompts[0], gen, lambda ev: None, expected=True)
    assert h.finished.wait(60)
    assert 0.3 <= h.admitted_at - t0 < 2.0, h.admitted_at - t0
    time.sleep(0.45)  # the gap since the last announcement has passed
    t0 = time.perf_counter()
    h = engine.submit(prompts[0], gen, lambda ev: None)  # never announced: no wait
    assert h.finished.wait(60)
    assert h.admitted_at - t0 < 0.3, h.admitted_at - t0


def test_admission_writes_every_slots_sampling_state_in_one_batch(tiny_custom_voice_dir):
    """`_arm_many` (the batched writes at admission) leaves each slot's sampling state as one write per field and
    slot would: the slot's own settings, the others untouched."""
    from voicepipe.models import load_tts

    eng = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=4, max_len=128))
    gens = [GenerationConfig(temperature=0.7, subtalker_temperature=0.0, repetition_penalty=1.3, min_new_tokens=5),
            GenerationConfig(do_sample=False, subtalker_do_sample=False, repetition_penalty=1.0, min_new_tokens=0)]
    eng.seen[3, :7] = True
    eng.n_sampled[3] = 9
    eng._arm_many([3, 1], gens)
    for slot, g in zip([3, 1], gens, strict=True):
        assert not eng.seen[slot].any() and eng.n_sampled[slot] == 0 and eng.active[slot] == 1
        assert eng.min_new[slot] == g.min_new_tokens
        assert eng.temp[slot, 0] == torch.tensor(max(g.temperature, 1e-5), dtype=torch.float32)
        assert eng.sub_temp[slot, 0] == torch.tensor(max(g.subtalker_temperature, 1e-5), dtype=torch.float32)
        assert eng.rep_pen[slot, 0] == torch.tensor(g.repetition_penalty, dtype=torch.float32)
        assert bool(eng.greedy[slot]) == (not g.do_sample) and bool(eng.sub_greedy[slot]) == (not g.subtalker_do_sample)
    for slot in (0, 2):  # not admitted: as allocated
        assert eng.active[slot] == 0 and eng.temp[slot, 0] == 1 and eng.min_new[slot] == 0


def test_one_slot_engine_queues_requests_and_gives_the_batched_engines_codes(engine):
    """`voicepipe serve --max-concurrent 1` (a single-user assistant) and a one-text evaluation build an engine of one
    slot: a second request waits for the first's slot, and each gets the codes the batched engine gives it."""
    one = TTSEngine(engine.tts, EngineConfig(max_batch=1, max_len=256)).start()
    try:
        gen = GenerationConfig(max_new_tokens=10, min_new_tokens=10, **GREEDY)
        texts = ["Hello there.", "A second request, somewhat longer than the first one."]
        handles = [one.submit(one.prepare(t, speaker="alice"), gen, lambda ev: None) for t in texts]
        for h in handles:
            assert h.finished.wait(60)
        steps = one.steps
    finally:
        one.stop()
    want = [engine.generate_codes(engine.prepare(t, speaker="alice"), gen) for t in texts]
    for h, w in zip(handles, want, strict=True):
        assert w.shape == (10, 16) and torch.equal(torch.stack(h.frames), w)
    assert steps >= 2 * 10  # one slot: the second ran after the first, not beside it


def test_a_prefill_into_slots_the_engine_does_not_have_is_refused_before_any_write(engine):
    """A slot past the engine's caches (two prompts into a one-slot engine, as a benchmark once did) is refused on the
    host with the slots it has, before anything is written: on CUDA it would be a device-side assert."""
    one = TTSEngine(engine.tts, EngineConfig(max_batch=1, max_len=256))
    prompts = [one.prepare(t, speaker="alice") for t in ("Hello there.", "A second prompt.")]
    before = [c.clone() for c in one.kc]
    with pytest.raises(ValueError, match=r"slots \[0, 1\] for 2 prompts; this engine has slots 0-0"):
        one._prefill([0, 1], prompts)
    with pytest.raises(ValueError, match="1 prompts"):
        one._prefill([0, 0], prompts[:1])  # a slot list that does not match the prompts
    assert all(torch.equal(a, b) for a, b in zip(before, one.kc, strict=True)) and int(one.pos[0]) == 0
    one._prefill([0], prompts[:1])  # its one slot takes a prompt
    assert int(one.pos[0]) == prompts[0].embeds.shape[0] - 1
