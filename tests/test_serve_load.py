"""Fault-and-load check of the speech server at tiny scale (loopback, bounded, a few dozen requests per round).

Each round mixes 16 concurrent streams, clients that drop after the first chunk, slow readers, hostile inputs and
Wyoming clients; then a burst runs past the queue cap while every slot is held. Asserted: no 500 anywhere, every
error in OpenAI's envelope, 503s carry Retry-After, the cap holds, no slot/queue place/gauge is leaked, memory stays
flat across rounds, and the server still answers. Speed is not asserted here (benchmarks/ measure it).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from tests.fixtures.serve import LiveServer
from voicepipe.serve.app import create_app, load_voices
from voicepipe.serve.deps import ServeConfig

FRAMES = 4
PCM_BYTES = FRAMES * 1920 * 2
SLOTS, STREAMS = 4, 16
HOSTILE = [
    {"input": "Hi \ud800 there."},
    {"instructions": "Calm \udfff."},
    {"input": "x" * 5000},
    {"instructions": "y" * 5000},
    {"voice": {"id": "nobody"}},
    {"voice": ["alice"]},
    {"speed": float("inf")},
    {"response_format": "mp4"},
    {"stream_format": "ws"},
    {"input": None},
    "not an object",
]


def _rss_mb() -> float:
    """Resident memory, after glibc hands freed heap pages back (its arenas keep them otherwise, and how many it
    keeps varies run to run by tens of MB: freed memory is not a leak; memory still held is)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as it stands
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def live(serve_voices_dir):
    cfg = ServeConfig(voices=["alice"], voices_dir=serve_voices_dir, device="cpu", max_concurrent=SLOTS,
                      max_queue=2 * STREAMS, max_frames=FRAMES, max_len=1024, queue_timeout_s=60,
                      generation={"min_new_tokens": FRAMES},
                      wyoming_uri="tcp://127.0.0.1:0")  # fmt: skip
    voices = load_voices(cfg)
    srv = LiveServer(create_app(cfg, voices))
    srv.state = srv.server.config.app.state.vp
    srv.engine = voices["alice"].engine
    yield srv
    srv.stop()
    voices["alice"].engine.stop()


def _post(url: str, body: object, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", content=json.dumps(body), timeout=120,
                      headers={"content-type": "application/json"}, **kw)  # fmt: skip


def _at_once(url: str, body: object, ready: threading.Barrier) -> httpx.Response:
    """POST `body` on a connection opened beforehand, once every client of `ready` has one: a burst that arrives
    within milliseconds even on a loaded machine (a fresh connection each takes its own time to set up)."""
    with httpx.Client(timeout=120) as client:
        client.get(f"{url}/health")
        ready.wait(timeout=60)
        return client.post(f"{url}/v1/audio/speech", content=json.dumps(body),
                           headers={"content-type": "application/json"})


def _stream(url: str, i: int) -> tuple[int, int]:
    body = {"voice": "alice", "input": f"Stream number {i}.", "response_format": "pcm"}
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as r:
        return r.status_code, len(b"".join(r.iter_raw()))


def _drop_after_first_chunk(url: str, i: int) -> int:
    body = {"voice": "alice", "input": f"Walk away {i}.", "response_format": "pcm", "stream_format": "sse"}
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as r:
        next(r.iter_raw())
        return r.status_code  # leaving the block closes the connection mid-stream


def _slow_reader(url: str, i: int) -> tuple[int, int]:
    body = {"voice": "alice", "input": f"Slowly now {i}.", "response_format": "wav"}
    got = 0
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as r:
        for chunk in r.iter_raw(2048):
            got += len(chunk)
            time.sleep(0.02)
        return r.status_code, got


def _hostile(url: str, body: object) -> httpx.Response:
    if isinstance(body, dict):
        body = {"voice": "alice", "input": "Hello.", **body}
        body = {k: v for k, v in body.items() if v is not None}
    return _post(url, body)


def _wyoming(port: int, i: int) -> int:
    async def go() -> int:
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Synthesize(f"Wyoming number {i}.").event())
            audio = 0
            while True:
                ev = await asyncio.wait_for(c.read_event(), 120)
                assert ev is not None and ev.type != "error", ev
                if AudioChunk.is_type(ev.type):
                    audio += len(AudioChunk.from_event(ev).audio)
                if AudioStop.is_type(ev.type):
                    return audio

    return asyncio.run(go())


def _round(srv: LiveServer) -> list[int]:
    """One mixed round; returns every HTTP status seen."""
    url = srv.url
    with ThreadPoolExecutor(STREAMS + 16) as ex:
        streams = [ex.submit(_stream, url, i) for i in range(STREAMS)]
        drops = [ex.submit(_drop_after_first_chunk, url, i) for i in range(4)]
        slow = [ex.submit(_slow_reader, url, i) for i in range(2)]
        hostile = [ex.submit(_hostile, url, b) for b in HOSTILE]
        wyo = [ex.submit(_wyoming, srv.state.wyoming.port, i) for i in range(2)]
        statuses = []
        for f in streams:
            code, n = f.result()
            statuses.append(code)
            assert (code, n) == (200, PCM_BYTES)
        statuses += [f.result() for f in drops]
        for f in slow:
            code, n = f.result()
            statuses.append(code)
            assert code == 200 and n == 44 + PCM_BYTES
        for f in hostile:
            r = f.result()
            statuses.append(r.status_code)
            assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        assert [f.result() for f in wyo] == [PCM_BYTES] * 2
    return statuses


def _settled(srv: LiveServer, timeout: float = 20) -> None:
    """No slot, queue place or gauge left behind once the clients are gone."""
    deadline = time.time() + timeout
    while (srv.engine.active_count or srv.engine.queue_depth or sum(srv.state.waiting.values())) and (
        time.time() < deadline
    ):
        time.sleep(0.05)
    assert srv.engine.active_count == 0 and srv.engine.queue_depth == 0
    assert sum(srv.state.waiting.values()) == 0
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert "voicepipe_tts_queue_depth 0.0" in metrics and "voicepipe_tts_active_streams 0.0" in metrics
    assert 'status="500"' not in metrics


def _burst_past_the_cap(srv: LiveServer, cap: int = 3, burst: int = 16) -> None:
    """Every slot held by long streams, then `burst` requests at once with the cap at `cap`: exactly `cap` wait
    (and time out with 503 queue_timeout), the rest are refused at once (503 server_busy); all with Retry-After."""
    live = srv.state.config
    saved = (live.max_queue, live.queue_timeout_s, live.max_frames, live.generation)
    holders, stop = [], threading.Event()
    admitted = threading.Barrier(SLOTS + 1)
    ready = threading.Barrier(burst)  # the burst's clients connect first, then all send at once

    def hold(i: int) -> int:
        # as long as the test engine's cache allows (max_len 1024 less the prompt): the runaway guard allows ~620
        # frames for it, many times the queued requests' 1 s wait, so no holder frees its slot while they wait
        text = f"Holding slot {i}: " + "a long answer that goes on, " * 8
        body = {"voice": "alice", "input": text, "response_format": "pcm"}
        with httpx.stream("POST", f"{srv.url}/v1/audio/speech", json=body, timeout=120) as r:
            chunks = r.iter_raw()  # keep the iterator: dropping it closes the connection
            next(chunks)
            admitted.wait(timeout=60)
            stop.wait(timeout=60)
            return r.status_code

    try:
        # holders that outlast the burst's queue timeout: 600 frames (the voice's own max_new_tokens caps a request
        # unless the server's `generation` raises it)
        live.max_frames, live.generation = 600, {"min_new_tokens": 600, "max_new_tokens": 600}
        with ThreadPoolExecutor(SLOTS + burst) as ex:
            holders = [ex.submit(hold, i) for i in range(SLOTS)]
            admitted.wait(timeout=60)
            assert srv.engine.active_count == SLOTS
            live.max_queue, live.queue_timeout_s = cap, 1.0
            rs = list(ex.map(lambda i: _at_once(srv.url, {"voice": "alice", "input": f"Burst {i}."}, ready),
                             range(burst)))
            stop.set()
            assert [h.result() for h in holders] == [200] * SLOTS
    finally:
        stop.set()
        live.max_queue, live.queue_timeout_s, live.max_frames, live.generation = saved
    codes = sorted((r.status_code, r.json()["error"]["code"]) for r in rs)
    assert codes == sorted([(503, "queue_timeout")] * cap + [(503, "server_busy")] * (burst - cap)), codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in rs)


def test_fault_and_load(live):
    statuses = _round(live)  # warm-up: allocations that stay (caches, thread pools, long requests' buffers)
    _burst_past_the_cap(live)
    _settled(live)
    rss0 = _rss_mb()
    for _ in range(2):
        statuses += _round(live)
        _settled(live)
    _burst_past_the_cap(live)
    _settled(live)
    grown = _rss_mb() - rss0
    assert 500 not in statuses and all(s in (200, 400) for s in statuses)
    assert grown < 60, f"RSS grew {grown:.0f} MB over two rounds and a burst"
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
    r = _post(live.url, {"voice": "alice", "input": "Still here.", "response_format": "pcm"})
    assert r.status_code == 200 and len(r.content) == PCM_BYTES
