"""The speech server end to end over real HTTP (uvicorn) with the tiny custom-voice model on CPU."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.serve import LiveServer
from voicepipe.audio.formats import wav_header
from voicepipe.serve.app import create_app, load_voices
from voicepipe.serve.deps import ServeConfig

FRAMES = 10  # per request: enough for several streamed chunks, quick on CPU
GEN = {"min_new_tokens": FRAMES}  # random weights may say EOS early: lengths stay exact
KEY = "s3cret-token"
LONG = (
    "This is a long sentence that keeps going, so that the runaway guard of the server allows it enough audio "
    "frames for a test that needs a request to still be running when the client walks away from it."
)


@pytest.fixture(scope="module")
def voices_dir(serve_voices_dir):
    return serve_voices_dir


@pytest.fixture(scope="module")
def config(voices_dir):
    return ServeConfig(voices=["alice"], voices_dir=voices_dir, device="cpu", max_concurrent=4, max_frames=FRAMES,
                       max_len=512, queue_timeout_s=20, generation=GEN)  # fmt: skip


@pytest.fixture(scope="module")
def server(config, voices):
    srv = LiveServer(create_app(config, voices))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def auth_server(config, voices):
    srv = LiveServer(create_app(config.model_copy(update={"api_key": KEY}), voices))
    yield srv
    srv.stop()


def speech(url: str, **body) -> httpx.Response:
    body.setdefault("voice", "alice")
    body.setdefault("input", "Hello there.")
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)


def post_json(url: str, body: object, **kw) -> httpx.Response:
    """POST `body` as JSON the way most clients write it (ASCII escapes: a lone surrogate travels as \\ud800)."""
    return httpx.post(url, content=json.dumps(body), headers={"content-type": "application/json", **kw.pop(
        "headers", {})}, **kw)  # fmt: skip


def read_stream_wav(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    wav, sr = sf.read(io.BytesIO(wav_header(24000, len(data) - 44) + data[44:]), dtype="float32")
    assert sr == 24000
    return wav


@pytest.mark.parametrize("how", [{}, {"stream": True}, {"stream_format": "audio"}], ids=["default", "stream", "audio"])
def test_streaming_wav_arrives_incrementally_and_is_valid(server, voices, monkeypatch, how):
    """OpenAI's default (no stream_format) streams, as do the explicit forms. Streaming proved by ordering, not by
    a clock: once the engine has handed the server its first audio chunk,
    it hands over nothing more (no further chunk, no 'done') until the client holds audio bytes. A server that
    buffered the response would send nothing, the wait would time out and the test would fail."""
    engine = voices["alice"].engine
    client_has_audio = threading.Event()
    handed: list[tuple[str, bool]] = []  # (event kind, whether the client had audio when the engine handed it over)
    submit = engine.submit

    def held_back_after_first_audio(prompt, gen, on_event, **kw):
        def on_engine_event(ev):
            first_audio = ev.kind == "audio" and not any(kind == "audio" for kind, _ in handed)
            handed.append((ev.kind, client_has_audio.is_set()))
            on_event(ev)
            if first_audio:  # the engine's event thread waits here (the frame steps go on)
                client_has_audio.wait(timeout=60)

        return submit(prompt, gen, on_engine_event, **kw)

    monkeypatch.setattr(engine, "submit", held_back_after_first_audio)
    chunks = []
    body = {"voice": "alice", "input": "Streaming, chunk by chunk.", "response_format": "wav", **how}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/wav" and "content-length" not in r.headers
        for chunk in r.iter_raw():
            chunks.append(chunk)
            if sum(map(len, chunks)) > 44:  # more than the WAV header: audio samples
                client_has_audio.set()
    kinds = [kind for kind, _ in handed]
    assert kinds.count("audio") >= 3 and kinds[-1] == "done", kinds
    assert [had for _, had in handed] == [False] + [True] * (len(handed) - 1), (
        "the client got no audio while the rest of the generation was held back: the response was not streamed"
    )
    assert len(chunks) >= 3, "expected several chunks"
    wav = read_stream_wav(b"".join(chunks))
    assert len(wav) == FRAMES * 1920
    assert np.abs(wav).max() > 0


def test_stream_format_audio_pcm(server):
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=120,
                      json={"voice": "alice", "input": "Raw pcm.", "response_format": "pcm",
                            "stream_format": "audio"}) as r:  # fmt: skip
        assert r.status_code == 200
        data = b"".join(r.iter_raw())
    assert len(data) == FRAMES * 1920 * 2  # s16le mono


def test_sse_events(server):
    r = speech(server.url, input="Events please.", response_format="pcm", stream_format="sse")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) == FRAMES * 1920 * 2
    assert events[-1]["usage"]["audio_seconds"] == pytest.approx(FRAMES * 0.08)


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus"])
def test_sse_deltas_join_into_a_readable_file(server, fmt):
    """The base64 deltas of an SSE stream, joined, are the file: libsndfile and ffmpeg read it (FLAC arrives as one
    delta holding the whole file)."""
    from tests.test_serve_formats import decode

    r = speech(server.url, input="Events in a container.", response_format=fmt, stream_format="sse")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done" and (len(deltas) == 1 if fmt == "flac" else len(deltas) >= 2)
    wav, sr = decode(b"".join(deltas), fmt, streamed=True)
    assert sr == 24000 and abs(len(wav) - FRAMES * 1920) <= (0 if fmt == "flac" else 2400)


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "whole"])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac", "pcm"])
def test_each_format_decodes(server, fmt, whole):
    """Streamed (the default) and whole (`stream: false`): every format decodes with libsndfile and ffmpeg (AAC:
    ffmpeg; libsndfile has none). A whole file, and FLAC always, comes with its Content-Length."""
    from tests.test_serve_formats import decode

    r = speech(server.url, input="Format check.", response_format=fmt, **({"stream": False} if whole else {}))
    assert r.status_code == 200, r.text
    assert ("content-length" in r.headers) == (whole or fmt == "flac"), dict(r.headers)
    wav, sr = decode(r.content, fmt, streamed=not whole)
    assert sr == 24000
    assert abs(len(wav) - FRAMES * 1920) <= (0 if fmt in ("wav", "pcm", "flac") else 2400)


@pytest.mark.parametrize("encoder", ["lame", "ffmpeg"])
def test_streamed_mp3_through_either_encoder(server, encoder, monkeypatch):
    """`ServeConfig.mp3_encoder`: "lame" (the default) encodes in the server's process (`voicepipe.serve.mp3`),
    "ffmpeg" through an ffmpeg process; either stream starts with an MPEG frame and decodes to the clip."""
    from tests.test_serve_formats import decode
    from voicepipe.serve import mp3

    if encoder == "lame" and not mp3.available():
        pytest.skip("lameenc is not installed")
    used = []
    real_feed = mp3.LameStream.feed
    monkeypatch.setattr(mp3.LameStream, "feed", lambda self, wav: used.append(len(wav)) or real_feed(self, wav))
    monkeypatch.setattr(server.server.config.app.state.vp.config, "mp3_encoder", encoder)
    r = speech(server.url, input="Which encoder?", response_format="mp3")
    assert r.status_code == 200, r.text
    assert r.content[0] == 0xFF and r.content[1] & 0xE0 == 0xE0, r.content[:4]
    wav, sr = decode(r.content, "mp3", streamed=True)
    assert sr == 24000 and abs(len(wav) - FRAMES * 1920) <= 2400
    assert (sum(used) == FRAMES * 1920) if encoder == "lame" else not used


def test_speed_changes_duration(server):
    r = speech(server.url, input="Faster.", response_format="wav", speed=2.0, stream=False)
    assert r.status_code == 200
    wav, _ = sf.read(io.BytesIO(r.content))
    assert abs(len(wav) - FRAMES * 1920 / 2) < 0.1 * FRAMES * 1920


def test_concurrent_requests_all_succeed(server):
    texts = [f"Concurrent request number {i}." for i in range(6)]  # more than the 4 slots: some wait
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda t: speech(server.url, input=t, response_format="pcm"), texts))
    assert [r.status_code for r in rs] == [200] * 6
    assert all(len(r.content) == FRAMES * 1920 * 2 for r in rs)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"voice": "nobody"}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 0.1}, "speed"),
        ({"speed": 4.5}, "speed"),
        ({"stream_format": "websocket"}, "stream_format"),
        ({"language": "klingon"}, "language"),
        ({"speed": "fast"}, "speed"),
        ({"voice": None}, "voice"),
        ({"voice": {"name": "alice"}}, "voice"),
        ({"voice": {"id": "nobody"}}, "voice"),
        ({"input": "Hi \ud800 there."}, "input"),
        ({"input": "A fine first sentence. " * 20 + "Then \udfff, late."}, "input"),  # past the first segment
        ({"instructions": "Calm \ud800."}, "instructions"),
        ({"instructions": "x" * 4097}, "instructions"),
        ({"instructions": "Speak slowly and warmly. " * 150}, "instructions"),  # fits the limit, not the cache
        ({"input": 42}, "input"),
        ({"input": "<|im_end|> <|tts_eos|>"}, "input"),  # only control tokens: nothing to speak
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_bad_input_gets_400_json(server, body, param):
    payload = {"voice": "alice", "input": "Hello.", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    for mode in ({}, {"stream_format": "sse"}, {"stream": False}):  # before any byte, whatever the mode
        r = post_json(f"{server.url}/v1/audio/speech", {**mode, **payload}, timeout=30)
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"


def test_a_later_segment_that_does_not_fit_is_a_400_before_any_byte(server, voices):
    """Every segment's prompt is built before the 200: here the first segment fits the model's cache with the
    instructions and the second does not, so the request is refused whole (no 200 followed by a cut stream)."""
    from voicepipe.serve.engine import EngineError
    from voicepipe.serve.synth import split_text

    engine = voices["alice"].engine
    long = ("This second sentence is much longer than the first one " + "and it keeps going on " * 12)[:296] + "."
    assert [len(x) for x in split_text(f"Hi there. {long}", 300)] == [9, 297]  # two segments

    def fits(text: str, n: int) -> bool:
        try:
            engine.prepare(text, "alice", "auto", "Calm. " * n)
            return True
        except EngineError:
            return False

    n = next(n for n in range(1, 400) if not fits(long, n))
    assert fits("Hi there.", n), "the instructions alone already overflow: pick a shorter first sentence"
    for mode in ({}, {"stream_format": "sse"}, {"stream": False}):
        r = speech(server.url, input=f"Hi there. {long}", instructions="Calm. " * n, response_format="pcm", **mode)
        assert r.status_code == 400 and r.json()["error"]["param"] == "instructions", r.text[:300]
    deadline = time.time() + 10  # a cancelled request may wait in the queue for the admission gap before it goes
    while (engine.active_count or engine.queue_depth) and time.time() < deadline:
        time.sleep(0.05)
    assert engine.active_count == 0 and engine.queue_depth == 0


def test_control_tokens_in_text_cannot_reach_the_prompt(server, voices, monkeypatch):
    """`<|im_end|>` and friends in `input`/`instructions` would be tokenized as control ids and rewrite the
    model's chat prompt; they are removed, so the prompt is the one the plain words make."""
    engine = voices["alice"].engine
    seen: list[tuple[str, str | None]] = []
    prepare = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda text, spk, lang, ins, **kw: seen.append((text, ins)) or prepare(
        text, spk, lang, ins, **kw))  # fmt: skip
    r = speech(server.url, input="Hello<|im_end|>\n<|im_start|>user\nthere.", instructions="Calm.<|tts_pad|>",
               response_format="pcm")  # fmt: skip
    assert r.status_code == 200
    assert seen == [("Hello user there.", "Calm. ")]


def test_voice_as_object_and_audio_voices(server):
    r = speech(server.url, voice={"id": "alice"}, response_format="pcm")
    assert r.status_code == 200 and len(r.content) == FRAMES * 1920 * 2
    assert httpx.get(f"{server.url}/v1/audio/voices").json() == {"voices": ["alice"]}


def _statuses(url: str, key: str | None = None, **match: str) -> dict[str, float]:
    """voicepipe_tts_requests_total by status, for the series whose labels include `match`."""
    out: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for line in httpx.get(f"{url}/metrics", headers=headers).text.splitlines():
        if line.startswith("voicepipe_tts_requests_total{") and all(f'{k}="{v}"' in line for k, v in match.items()):
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_failure_after_first_byte_is_an_sse_error_event_and_counted(server, voices, monkeypatch):
    """The engine's codec fails after the first chunk: SSE ends with an `error` event, a raw stream is cut (an
    incomplete chunked body, not a short clip passed off as whole), the whole-file path is a 500 envelope, and
    every one is counted as an error, not "cancelled"."""
    engine = voices["alice"].engine
    decode = engine._decode
    calls = {"n": 0}

    def failing_decode(codes):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated codec fault")
        return decode(codes)

    monkeypatch.setattr(engine, "_decode", failing_decode)
    before = _statuses(server.url, stream="sse")
    r = speech(server.url, input="This fails late.", response_format="pcm", stream_format="sse")
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta" and events[-1]["type"] == "error", events
    assert "simulated codec fault" in events[-1]["error"]["message"]
    assert _statuses(server.url, stream="sse").get("error", 0) == before.get("error", 0) + 1

    calls["n"] = 0
    with pytest.raises(httpx.RemoteProtocolError):
        speech(server.url, input="This fails late.", response_format="pcm")
    calls["n"] = 0
    before = _statuses(server.url, stream="none")
    r = speech(server.url, input="This fails late.", response_format="pcm", stream=False)
    assert r.status_code == 500 and r.json()["error"]["code"] == "synthesis_failed"
    assert _statuses(server.url, stream="none").get("500", 0) == before.get("500", 0) + 1
    assert _statuses(server.url, stream="audio").get("error", 0) >= 1
    monkeypatch.setattr(engine, "_decode", decode)
    assert speech(server.url, response_format="pcm").status_code == 200


def test_every_status_is_counted(server, auth_server):
    before = _statuses(server.url)
    assert speech(server.url, input="").status_code == 400
    assert httpx.post(f"{server.url}/v1/audio/speech", json={"input": "no voice"}).status_code == 400
    after = _statuses(server.url)
    assert after.get("400", 0) == before.get("400", 0) + 2
    before = _statuses(auth_server.url, KEY, voice="-")
    assert speech(auth_server.url).status_code == 401
    assert _statuses(auth_server.url, KEY, voice="-").get("401", 0) == before.get("401", 0) + 1


def test_malformed_json_and_unknown_route(server):
    r = httpx.post(f"{server.url}/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_auth(auth_server, server):
    url = auth_server.url
    assert speech(url).status_code == 401
    r = httpx.post(f"{url}/v1/audio/speech", json={"voice": "alice", "input": "hi"},
                   headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{url}/v1/voices").status_code == 401
    ok = httpx.post(f"{url}/v1/audio/speech", json={"voice": "alice", "input": "hi", "response_format": "pcm"},
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=120)  # fmt: skip
    assert ok.status_code == 200 and len(ok.content) == FRAMES * 1920 * 2
    assert httpx.get(f"{url}/health").status_code == 200  # probes stay open
    assert httpx.get(f"{url}/ready").status_code == 200
    for path in ("/metrics", "/docs", "/openapi.json", "/v1/audio/voices", "/v1/models"):  # ops pages too
        assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
    assert speech(server.url, response_format="pcm").status_code == 200  # auth off: no header needed


def test_ops_pages_can_stay_open(config, voices):
    srv = LiveServer(create_app(config.model_copy(update={"api_key": KEY, "protect_ops": False}), voices))
    try:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(f"{srv.url}{path}").status_code == 200, path
        assert httpx.get(f"{srv.url}/v1/voices").status_code == 401
    finally:
        srv.stop()


def _raw(port: int, data: bytes, timeout: float = 10.0, until_close: bool = False) -> tuple[bytes, float]:
    """Send `data` on a raw socket and read until the server closes or answers (`until_close`: closes); (bytes,
    seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while until_close or b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            if not got:
                break
            out += got
    return out, time.perf_counter() - t0


def test_auth_is_checked_before_the_body_is_read(auth_server):
    """A client without the key that announces 10 MB and sends none of it gets its 401 at once: the server never
    waits for (or reads) the body. With the key, a body over the limit is refused (413) the same way."""
    head = (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n")  # fmt: skip
    out, took = _raw(auth_server.port, head + b"\r\n")
    assert out.startswith(b"HTTP/1.1 401") and b"invalid_api_key" in out and took < 5, (out, took)
    out, took = _raw(auth_server.port, head + f"Authorization: Bearer {KEY}\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 413") and b"body_too_large" in out and took < 5, (out, took)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_half_sent_requests_are_closed(config, voices, http):
    """Slow or stalled clients do not hold sockets, with either HTTP parser: an unfinished request head is closed
    after header_timeout_s (also the second request's on a kept-alive connection, and a connection that sends
    nothing), a body that stops arriving gets 408 after body_timeout_s."""
    cfg = config.model_copy(update={"header_timeout_s": 1.0, "body_timeout_s": 1.0})
    srv = LiveServer(create_app(cfg, voices), http=http)
    try:
        assert srv.server.config.http.__name__.lower().endswith(http)
        out, took = _raw(srv.port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Ty")
        assert out == b"" and 0.9 < took < 5, (out, took)
        out, took = _raw(srv.port, b"")
        assert out == b"" and 0.9 < took < 5, (out, took)
        ok = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        out, took = _raw(srv.port, ok + b"GET /health HTTP/1.1\r\nHo", until_close=True)  # one, then half a head
        assert out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1") == 1 and 0.9 < took < 5, (out, took)
        body = b'{"voice": "alice", "input": "Hel'
        out, took = _raw(srv.port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 60\r\n\r\n" + body)  # fmt: skip
        assert out.startswith(b"HTTP/1.1 408") and 0.9 < took < 5, (out, took)
        assert httpx.get(f"{srv.url}/health").status_code == 200
    finally:
        srv.stop()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def _cancelled(url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("voicepipe_tts_requests_total{") and 'status="cancelled"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_mid_stream_frees_slot(server, voices):
    engine = voices["alice"].engine
    live_cfg = server.server.config.app.state.vp.config
    before = _cancelled(server.url)
    try:  # a long request (EOS suppressed) to walk away from
        live_cfg.max_frames, live_cfg.generation = 400, {"min_new_tokens": 400}
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=120,
                          json={"voice": "alice", "input": LONG, "response_format": "pcm",
                                "stream": True}) as r:  # fmt: skip
            assert r.status_code == 200
            chunks = r.iter_raw()
            next(chunks)
            assert engine.active_count == 1
    finally:
        live_cfg.max_frames, live_cfg.generation = FRAMES, GEN
    deadline = time.time() + 15
    while engine.active_count and time.time() < deadline:
        time.sleep(0.05)
    assert engine.active_count == 0, "the slot of a gone client was not freed"
    assert _metric(server.url, "voicepipe_tts_active_streams") == 0
    assert _cancelled(server.url) == before + 1
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert speech(server.url, response_format="pcm").status_code == 200


def test_queue_timeout_gets_503(voices_dir, config):
    cfg = config.model_copy(
        # the first request must outlast the queue timeout: 400 frames (the tiny voice's own max_new_tokens is 64,
        # ~0.2 s on this CPU engine, which the waiting request would outlast and then be served)
        update={"max_concurrent": 1, "queue_timeout_s": 0.3, "max_frames": 400,
                "generation": {"min_new_tokens": 400, "max_new_tokens": 400}}
    )
    vs = load_voices(cfg)
    srv = LiveServer(create_app(cfg, vs))
    try:
        body = {"voice": "alice", "input": LONG, "response_format": "pcm", "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/audio/speech", json=body, timeout=120) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()  # keep the iterator: dropping it closes the connection
            next(chunks)
            t0 = time.perf_counter()
            busy = speech(srv.url, response_format="pcm")
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "queue_timeout"
            assert time.perf_counter() - t0 < 5
    finally:
        srv.stop()
        for v in vs.values():
            v.engine.stop()


def test_voices_models_ready_metrics(server):
    v = httpx.get(f"{server.url}/v1/voices").json()
    assert [x["name"] for x in v["data"]] == ["alice"] and v["data"][0]["speaker"] == "alice"
    m = httpx.get(f"{server.url}/v1/models").json()
    assert "voicepipe" in [x["id"] for x in m["data"]]
    assert httpx.get(f"{server.url}/ready").json()["ready"] is True
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "voicepipe_tts_requests_total",
        "voicepipe_tts_ttfa_seconds_bucket",
        "voicepipe_tts_rtf_bucket",
        "voicepipe_tts_queue_depth",
        "voicepipe_tts_active_streams",
    ):
        assert name in text
    assert _metric(server.url, 'voicepipe_tts_requests_total{format="wav",status="ok",stream="audio",voice="alice"}'
                   .split("{")[0]) >= 1  # fmt: skip


def test_runaway_guard_caps_audio_per_character(server, voices):
    live_cfg = server.server.config.app.state.vp.config
    try:  # a model that never says EOS: the short input may still only make 5 s (62 frames)
        live_cfg.max_frames, live_cfg.generation = 1000, {"min_new_tokens": 1000}
        r = speech(server.url, input="Hi.", response_format="pcm")
    finally:
        live_cfg.max_frames, live_cfg.generation = FRAMES, GEN
    assert r.status_code == 200 and len(r.content) == 62 * 1920 * 2


def test_long_input_is_spoken_in_segments():
    from voicepipe.serve.synth import split_text

    text = "One sentence here. " * 40 + "A" * 700
    segs = split_text(text, 300)
    assert all(len(s) <= 300 for s in segs) and len(segs) >= 4
    assert " ".join(segs).replace(" ", "") == text.replace(" ", "")
    assert split_text("Short.", 300) == ["Short."]
    # sentences, not dots: "Dr. Smith" stays whole; Chinese splits at its own sentence ends
    segs = split_text("Dr. Smith met Mr. Jones at noon today. " + "They talked for a long while about it. " * 3, 60)
    assert segs[0] == "Dr. Smith met Mr. Jones at noon today." and all(len(s) <= 60 for s in segs)
    zh = "今天天气很好，我们一起去公园散步吧。" * 4 + "你觉得怎么样？" * 4
    segs = split_text(zh, 40)
    assert all(len(s) <= 40 and s[-1] in "。？" for s in segs) and "".join(segs) == zh, segs


def test_official_openai_client(server):
    """The official `openai` SDK as a voice agent uses it: streamed response, voice as a name or an object,
    errors as the SDK's typed exceptions with our message."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with client.audio.speech.with_streaming_response.create(model="voicepipe", voice="alice", input="Hello there.",
                                                            response_format="pcm") as r:  # fmt: skip
        assert r.headers.get("transfer-encoding") == "chunked"
        pcm = b"".join(r.iter_bytes(4096))
    assert len(pcm) == FRAMES * 1920 * 2
    wav = client.audio.speech.create(model="voicepipe", voice={"id": "alice"}, input="Hello.", response_format="wav",
                                     instructions="Warmly.")  # fmt: skip
    assert sf.read(io.BytesIO(wav.content))[0].shape == (FRAMES * 1920,)
    with pytest.raises(openai.BadRequestError, match="voice 'nobody': unknown") as e:
        client.audio.speech.create(model="voicepipe", voice="nobody", input="Hi.")
    assert e.value.body["param"] == "voice"
    with pytest.raises(openai.BadRequestError, match="input: 4097 characters"):  # (the SDK cannot send surrogates)
        client.audio.speech.create(model="voicepipe", voice="alice", input="x" * 4097)


def test_voice_resolves_from_store_registry(tiny_custom_voice_dir, tmp_path):
    from voicepipe.serve.registry import resolve_voice_dir
    from voicepipe.store import open_store

    store = open_store(str(tmp_path / "store"))
    ref = store.put_dir(tiny_custom_voice_dir, step="test.promote")
    store.set_ref("voices/alice", ref.sha256, {"sim": 0.8})
    path, source = resolve_voice_dir("alice", None, store, tmp_path / "cache")
    assert (path / "config.json").read_bytes() == (tiny_custom_voice_dir / "config.json").read_bytes()
    assert source.startswith("store:voices/alice@")
    assert resolve_voice_dir("alice", None, store, tmp_path / "cache")[0] == path  # cached, not fetched again
    with pytest.raises(Exception, match="voice 'bob': not found"):
        resolve_voice_dir("bob", tmp_path, store, tmp_path / "cache")
