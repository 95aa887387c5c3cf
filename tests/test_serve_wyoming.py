"""The Wyoming endpoint (Home Assistant) with the real `wyoming` client against the tiny voice on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from tests.fixtures.serve import LiveServer
from voicepipe.serve.app import create_app
from voicepipe.serve.deps import ServeConfig

FRAMES = 6  # per sentence
BYTES = FRAMES * 1920 * 2
GEN = {"min_new_tokens": FRAMES}  # random weights may say EOS early: lengths stay exact


@pytest.fixture(scope="module")
def config(serve_voices_dir):
    return ServeConfig(voices=["alice"], voices_dir=serve_voices_dir, device="cpu", max_concurrent=2,
                       max_frames=FRAMES, max_len=512, queue_timeout_s=20, generation=GEN,
                       wyoming_uri="tcp://127.0.0.1:0")  # fmt: skip


@pytest.fixture(scope="module")
def server(config, voices):
    srv = LiveServer(create_app(config, voices))
    srv.wyoming_port = srv.server.config.app.state.vp.wyoming.port
    yield srv
    srv.stop()


async def _events(client: AsyncTcpClient, until: str, timeout: float = 60) -> list:
    out = []
    while True:
        ev = await asyncio.wait_for(client.read_event(), timeout)
        assert ev is not None, f"connection closed before {until}: {[e.type for e in out]}"
        out.append(ev)
        if ev.type == until or Error.is_type(ev.type) and until != "error":
            return out


def _audio(events: list) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


def run(coro):
    return asyncio.run(coro)


def test_describe_lists_the_voices(server):
    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Describe().event())
            return Info.from_event((await _events(c, "info"))[-1])

    info = run(go())
    (program,) = info.tts
    assert program.supports_synthesize_streaming and program.installed
    assert [v.name for v in program.voices] == ["alice"] and program.voices[0].languages


def test_synthesize_streams_pcm_as_it_is_made(server):
    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Synthesize("Hello from the kitchen.", voice=SynthesizeVoice(name="alice")).event())
            return await _events(c, "audio-stop")

    events = run(go())
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [e for e in events if AudioChunk.is_type(e.type)]
    assert len(chunks) >= 2, "audio should leave chunk by chunk, not as one block"
    assert len(_audio(events)) == BYTES and AudioStop.is_type(events[-1].type)


def test_streaming_text_is_spoken_sentence_by_sentence(server):
    """synthesize-start/-chunk/-stop: the first sentence is spoken before the text stream ends (the LLM is still
    writing), one audio cycle per sentence, then synthesize-stopped; the fallback `synthesize` is ignored."""

    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="alice")).event())
            for piece in ("Dr. Smith is ", "here today. ", "He brought ", "the keys"):
                await c.write_event(SynthesizeChunk(piece).event())
            first = await _events(c, "audio-stop")  # the first sentence, while the stream is still open
            await c.write_event(Synthesize("Dr. Smith is here today. He brought the keys").event())  # fallback copy
            await c.write_event(SynthesizeStop().event())
            rest = await _events(c, "synthesize-stopped")
            return first, rest

    first, rest = run(go())
    assert len(_audio(first)) == BYTES and not any(SynthesizeStopped.is_type(e.type) for e in first)
    assert sum(AudioStart.is_type(e.type) for e in rest) == 1, "one more sentence, one more cycle"
    assert len(_audio(rest)) == BYTES and SynthesizeStopped.is_type(rest[-1].type)
    assert not any(Error.is_type(e.type) for e in first + rest)


def test_bad_requests_are_error_events_and_the_connection_lives(server):
    async def go():
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Synthesize("Hi.", voice=SynthesizeVoice(name="nobody")).event())
            unknown = Error.from_event((await _events(c, "error"))[-1])
            # a peer that escapes a lone surrogate (the wyoming client itself cannot even encode one)
            c._writer.write(json.dumps({"type": "synthesize", "data": {"text": "Hi \ud800 there."}}).encode() + b"\n")
            surrogate = Error.from_event((await _events(c, "error"))[-1])
            await c.write_event(SynthesizeChunk("orphan chunk").event())
            orphan = Error.from_event((await _events(c, "error"))[-1])
            await c.write_event(Synthesize("Still here.").event())
            after = await _events(c, "audio-stop")
            return unknown, surrogate, orphan, after

    unknown, surrogate, orphan, after = run(go())
    assert unknown.code == "unknown_voice" and "nobody" in unknown.text
    assert surrogate.code == "invalid_text" and "surrogate" in surrogate.text
    assert orphan.code == "protocol_error"
    assert len(_audio(after)) == BYTES


def test_client_gone_mid_synthesis_frees_the_slot(server, voices):
    engine = voices["alice"].engine
    live = server.server.config.app.state.vp.config

    async def go():
        c = AsyncTcpClient("127.0.0.1", server.wyoming_port)
        await c.connect()
        await c.write_event(Synthesize("A long answer that the user interrupts.").event())
        while not AudioChunk.is_type((await c.read_event()).type):
            pass
        await c.disconnect()

    try:
        live.max_frames, live.generation = 300, {"min_new_tokens": 300}
        run(go())
    finally:
        live.max_frames, live.generation = FRAMES, GEN
    deadline = time.time() + 15
    while engine.active_count and time.time() < deadline:
        time.sleep(0.05)
    assert engine.active_count == 0 and sum(server.server.config.app.state.vp.waiting.values()) == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'stream="wyoming"' in metrics and 'status="cancelled"' in metrics


def test_garbage_ends_only_that_connection(server):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.wyoming_port)
        writer.write(b"{not json\n")
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        async with AsyncTcpClient("127.0.0.1", server.wyoming_port) as c:
            await c.write_event(Describe().event())
            return closed, await _events(c, "info")

    closed, info = run(go())
    assert closed == b"" and Info.is_type(info[-1].type)


def test_cli_refuses_bad_wyoming_options():
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "voicepipe.cli", "serve", "--voice", "x", *args],
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    r = cli("--wyoming", "10200")
    assert r.returncode == 2 and r.stderr.startswith("error: --wyoming '10200'") and "tcp://" in r.stderr
    r = cli("--wyoming-zeroconf", "vp")
    assert r.returncode == 2 and "--wyoming-zeroconf needs --wyoming" in r.stderr
    r = cli("--http", "h2")
    assert r.returncode == 2 and r.stderr.startswith("error: --http 'h2': expected one of auto, httptools, h11")
