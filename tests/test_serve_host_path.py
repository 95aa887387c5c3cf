"""What a speech request costs the server's host side before the engine sees it (issue 17, TTFA at 16 clients):
the auth dependency runs on the event loop (no worker-thread hop), prompts are tokenized through the tokenizer's
backend (same ids as the processor), prepared first come first served on the server's prepare thread, and a request
waiting for its slot is woken by the engine's admission instead of polling. Tiny custom voice on CPU, real HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.fixtures.serve import LiveServer
from voicepipe.models import prompt as prompt_mod
from voicepipe.serve import deps
from voicepipe.serve.app import create_app
from voicepipe.serve.deps import ServeConfig
from voicepipe.serve.engine import GenerationConfig
from voicepipe.serve.routers import speech as speech_router

FRAMES = 4
KEY = "k3y"


@pytest.fixture(scope="module")
def config(serve_voices_dir):
    return ServeConfig(voices=["alice"], voices_dir=serve_voices_dir, device="cpu", max_concurrent=8,
                       max_frames=FRAMES, max_len=512, queue_timeout_s=60,
                       generation={"min_new_tokens": FRAMES})  # fmt: skip


def _speak(url: str, text: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/audio/speech", json={"voice": "alice", "input": text, "response_format": "pcm"},
                      headers=headers, timeout=120)  # fmt: skip


TEXTS = ["Hello.", "  spaced   out \n text\t", "Ünïcödé café — naïve", "中文句子。还有一句！", "emoji 🎉👍",
         "<|im_end|> injected <|tts_pad|>", "", "a" * 500, "Dr. Smith's 3.5% rate; e.g. x=y?"]  # fmt: skip


@pytest.mark.parametrize("text", TEXTS)
def test_backend_tokenizer_gives_the_processors_ids(voices, text):
    proc = voices["alice"].engine.tts.processor
    fast = prompt_mod.assistant_ids_fast(proc, text)
    assert fast is not None and torch.equal(fast, prompt_mod.assistant_ids(proc, text))


def test_engine_keeps_the_processor_path_when_the_backend_differs(voices, monkeypatch):
    eng = voices["alice"].engine
    saved = eng.__dict__.pop("_fast_tokens", None)
    try:
        eng.prepare("First text.", speaker="alice")  # the first call compares both paths
        assert eng._fast_tokens is True
        eng.__dict__.pop("_fast_tokens")
        monkeypatch.setattr(prompt_mod, "assistant_ids_fast", lambda proc, text: torch.tensor([1, 2, 3]))
        p = eng.prepare("Second text.", speaker="alice")
        assert eng._fast_tokens is False
        want = eng.prepare("Second text.", speaker="alice")  # processor path again, same layout
        assert torch.equal(p.layout.text_ids, want.layout.text_ids)
        assert len(p.layout.text_ids) > 3
    finally:
        eng.__dict__.pop("_fast_tokens", None)
        if saved is not None:
            eng._fast_tokens = saved


def test_auth_dependency_runs_on_the_event_loop(config, voices, monkeypatch):
    """A plain `def` dependency is run by FastAPI in a worker thread; `require_auth` runs where the route does."""
    seen: dict[str, set[int]] = {"auth": set(), "route": set()}
    real_auth, real_validate = deps.authorized, speech_router.validate

    def authorized(key, header):
        seen["auth"].add(threading.get_ident())
        return real_auth(key, header)

    def validate(body, st):
        seen["route"].add(threading.get_ident())
        return real_validate(body, st)

    monkeypatch.setattr(deps, "authorized", authorized)
    monkeypatch.setattr(speech_router, "validate", validate)
    srv = LiveServer(create_app(config.model_copy(update={"api_key": KEY}), voices))
    try:
        assert _speak(srv.url, "Hello there.", KEY).status_code == 200
        assert _speak(srv.url, "Hello there.").status_code == 401
    finally:
        srv.stop()
    assert len(seen["route"]) == 1 and seen["auth"] == seen["route"], seen


@pytest.mark.parametrize("threads", [1, 0])
def test_prompts_are_prepared_one_after_the_other_on_the_prepare_thread(config, voices, monkeypatch, threads):
    """`prepare_threads` 1: a burst's prompts are prepared on one thread, one at a time (each done as soon as its
    turn comes, rather than all sharing the GIL and finishing together); 0: on the loop's default pool."""
    eng = voices["alice"].engine
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    real = type(eng).prepare

    def prepare(self, *a, **kw):
        t0 = time.perf_counter()
        time.sleep(0.05)  # long enough that a pool of threads would overlap them
        try:
            return real(self, *a, **kw)
        finally:
            with lock:
                spans.append((threading.current_thread().name, t0, time.perf_counter()))

    monkeypatch.setattr(type(eng), "prepare", prepare)
    srv = LiveServer(create_app(config.model_copy(update={"prepare_threads": threads}), voices))
    try:
        with ThreadPoolExecutor(6) as ex:
            codes = list(ex.map(lambda i: _speak(srv.url, f"Request number {i}.").status_code, range(6)))
    finally:
        srv.stop()
    assert codes == [200] * 6 and len(spans) == 6
    names = {n for n, _, _ in spans}
    spans.sort(key=lambda s: s[1])
    overlaps = sum(b[1] < a[2] for a, b in zip(spans, spans[1:], strict=False))
    if threads == 1:
        assert len(names) == 1 and next(iter(names)).startswith("vp-prepare"), names
        assert overlaps == 0, spans
    else:
        assert not any(n.startswith("vp-prepare") for n in names), names
        assert len(names) > 1 and overlaps > 0, spans


def test_the_engine_calls_on_admitted_once_it_holds_a_slot(voices):
    eng = voices["alice"].engine
    p = eng.prepare("Wake me.", speaker="alice")
    calls: list[bool] = []
    got = threading.Event()
    eng.expect(1)  # one more announced: the idle engine waits (admit_wait_ms) before admitting this one
    req = eng.submit(p, GenerationConfig(max_new_tokens=2, min_new_tokens=2), lambda ev: None)
    req.on_admitted = lambda: (calls.append(req.admitted.is_set()), got.set())
    assert not req.admitted.is_set()
    eng.expect(-1)  # nothing else comes: admit it now
    assert got.wait(30) and req.finished.wait(30)
    assert calls == [True]


def test_prompts_embedded_at_admission_equal_those_embedded_at_prepare(voices):
    """`prepare(embed=False)` checks and lays the prompt out; the engine embeds a prefill's prompts in one batch
    when it admits them (`EngineConfig.embed_at_admit`): the same embeddings, the same greedy codes."""
    eng = voices["alice"].engine
    texts = ["One.", "Two words here.", "And three, with more words than the others."]
    eager = [eng.prepare(t, speaker="alice", instruct="Calm." if i == 1 else None) for i, t in enumerate(texts)]
    lazy = [eng.prepare(t, speaker="alice", instruct="Calm." if i == 1 else None, embed=False)
            for i, t in enumerate(texts)]  # fmt: skip
    assert all(p.embeds is None and p.trailing is None for p in lazy)
    with torch.inference_mode():
        eng._embed_prompts(list(lazy))
    for a, b in zip(eager, lazy, strict=True):
        torch.testing.assert_close(b.embeds, a.embeds)
        torch.testing.assert_close(b.trailing, a.trailing)
    greedy = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, subtalker_do_sample=False)
    fresh = [eng.prepare(t, speaker="alice", embed=False) for t in texts]
    eng.expect(len(fresh))  # one prefill for the three, embedded together at admission
    hs = [eng.submit(p, greedy, lambda ev: None, expected=True) for p in fresh]
    for h in hs:
        assert h.finished.wait(60)
    for h, t in zip(hs, texts, strict=True):
        assert torch.equal(torch.stack(h.frames), eng.generate_codes(eng.prepare(t, speaker="alice"), greedy))


@pytest.mark.parametrize("at_admit", [True, False])
def test_the_server_leaves_embedding_to_the_engine(config, voices, monkeypatch, at_admit):
    eng = voices["alice"].engine
    submitted: list[bool] = []
    real = type(eng).submit

    def submit(self, prompt, *a, **kw):
        submitted.append(prompt.embeds is None)
        return real(self, prompt, *a, **kw)

    monkeypatch.setattr(type(eng), "submit", submit)
    monkeypatch.setattr(eng.cfg, "embed_at_admit", at_admit)
    srv = LiveServer(create_app(config, voices))
    try:
        r = _speak(srv.url, "Embedded where?")
    finally:
        srv.stop()
    assert r.status_code == 200 and len(r.content) == FRAMES * 1920 * 2
    assert submitted == [at_admit]


def test_the_server_freezes_what_start_up_made_for_the_collector(config, voices):
    """A full garbage collection of the loaded process stops every thread for as long as it scans the models' and
    engines' objects; start-up ends with them frozen (`gc.freeze`), so collections while serving skip them, and
    shutdown gives them back to the collector. The youngest generation's threshold is raised while serving (a burst
    of requests made ~10 collections at Python's 700) and restored at shutdown."""
    import gc

    gc.unfreeze()
    before = gc.get_threshold()
    srv = LiveServer(create_app(config.model_copy(update={"gc_gen0_threshold": 50_000}), voices))
    try:
        assert gc.get_freeze_count() > 10_000  # the voice's model, engine and the server's modules
        # while serving, the youngest generation is collected after `gc_gen0_threshold` net allocations, not 700
        assert gc.get_threshold() == (50_000, *before[1:])
        assert _speak(srv.url, "Frozen.").status_code == 200
    finally:
        srv.stop()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_the_server_collects_cyclic_garbage_once_no_request_is_in_flight(config, voices):
    """With the youngest generation's threshold raised while serving, cyclic garbage (a failed request's traceback
    holding its audio, say) would wait for 50,000 net allocations; once the last HTTP request in flight is answered
    the server runs the collection Python's own threshold would have run by then."""
    import gc
    import weakref

    from voicepipe.serve.middleware import IDLE_COLLECT_COUNT

    class Cycle:
        pass

    srv = LiveServer(create_app(config.model_copy(update={"gc_gen0_threshold": 50_000}), voices))
    try:
        gc.collect()
        c = Cycle()
        c.me = c
        ref = weakref.ref(c)
        del c
        junk = [[] for _ in range(IDLE_COLLECT_COUNT)]  # allocations pending: the collection is due
        assert ref() is not None and gc.get_count()[0] >= IDLE_COLLECT_COUNT
        assert _speak(srv.url, "Collected.").status_code == 200
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:  # the server's Gate ends after the response
            time.sleep(0.01)
        assert ref() is None
        del junk
    finally:
        srv.stop()
