"""Capturing a missing CUDA graph while requests run must leave them untouched (checked on the CPU path).

`capture()` runs warm-up frame steps before it records a bucket's graph; they go through `_warm_up`, the same code
on every device, so the CPU engine pins the invariant: a warm-up fired between two frame steps of live requests
changes none of their state, cache or random stream, and their codes come out as if nothing had happened.
"""

from __future__ import annotations

import pytest
import torch

from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine


@pytest.fixture(scope="module")
def inline_engine(tiny_custom_voice_dir):
    from voicepipe.models import load_tts

    # decode inline: events (and the warm-up below) run on the engine thread, between two frame steps
    cfg = EngineConfig(max_batch=4, max_len=128, decode_thread=False, first_chunk_frames=2, chunk_frames=4)
    eng = TTSEngine(load_tts(tiny_custom_voice_dir), cfg).start()
    yield eng
    eng.stop()


def _run(eng: TTSEngine, prompts, gen: GenerationConfig, disturb: bool) -> tuple[list[torch.Tensor], list[str]]:
    problems: list[str] = []
    fired: list[bool] = []

    def on_event(ev):
        if not disturb or fired or ev.kind != "audio":
            return
        fired.append(True)
        live = [i for i, r in enumerate(eng._slots) if r is not None]
        state = {n: getattr(eng, n).clone() for n in eng._STEP_STATE}
        pos = eng.pos.clone()
        kv = [(k.clone(), v.clone()) for k, v in zip(eng.kc, eng.vc, strict=True)]
        rng = torch.get_rng_state()
        eng._warm_up(eng.cfg.max_batch, eng.cfg.max_len)  # what capture() runs before recording a bucket
        for n, t in state.items():
            if not torch.equal(getattr(eng, n), t):
                problems.append(f"{n} changed")
        for i, ((k0, v0), k1, v1) in enumerate(zip(kv, eng.kc, eng.vc, strict=True)):
            for s in live:  # every position a live slot has written is intact
                p = int(pos[s])
                if not (torch.equal(k0[s, :, :p], k1[s, :, :p]) and torch.equal(v0[s, :, :p], v1[s, :, :p])):
                    problems.append(f"KV cache of layer {i}, slot {s} changed")
        if not torch.equal(rng, torch.get_rng_state()):
            problems.append("RNG state changed")

    torch.manual_seed(1234)
    with eng._step_lock:  # both requests join at the same step, as in the undisturbed run
        handles = [eng.submit(p, gen, on_event) for p in prompts]
    for h in handles:
        assert h.finished.wait(120)
    assert not disturb or fired, "no audio event came, so the warm-up never ran"
    return [torch.stack(h.frames) for h in handles], problems


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled-same-seed"])
def test_capture_warm_up_mid_request_changes_nothing_live(inline_engine, sampled):
    eng = inline_engine
    prompts = [eng.prepare("A request already running.", speaker="alice"),
               eng.prepare("And another one, a little longer than the first.", speaker="alice")]
    gen = GenerationConfig(max_new_tokens=14, min_new_tokens=14, do_sample=sampled, subtalker_do_sample=sampled)
    ref, _ = _run(eng, prompts, gen, disturb=False)
    out, problems = _run(eng, prompts, gen, disturb=True)
    assert problems == []
    for a, b in zip(ref, out, strict=True):
        assert a.shape == (14, 16)
        assert torch.equal(a, b), "a capture warm-up mid-request changed the request's codes"


def test_a_crashed_loop_fails_its_requests_and_refuses_new_ones(tiny_custom_voice_dir):
    from voicepipe.models import load_tts
    from voicepipe.serve.engine import EngineError

    eng = TTSEngine(load_tts(tiny_custom_voice_dir), EngineConfig(max_batch=2, max_len=128)).start()
    try:
        def broken(*_a, **_k):  # a device fault in the middle of a frame step
            raise RuntimeError("injected device fault")

        eng._run_step = broken
        events = []
        h = eng.submit(eng.prepare("This request meets the fault.", speaker="alice"),
                       GenerationConfig(max_new_tokens=8), events.append)
        assert h.finished.wait(60)
        assert [e.kind for e in events] == ["error"] and "injected device fault" in events[0].message
        with pytest.raises(EngineError, match="not running"):  # before the fix: queued forever, never answered
            eng.submit(eng.prepare("And this one comes after.", speaker="alice"), None, events.append)
    finally:
        eng.stop()
