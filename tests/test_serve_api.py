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
import uvicorn

from voicepipe.audio.formats import wav_header
from voicepipe.serve.app import create_app, load_voices
from voicepipe.serve.deps import ServeConfig
from voicepipe.serve.http import uvicorn_config

FRAMES = 10  # per request: enough for several streamed chunks, quick on CPU
KEY = "s3cret-token"
LONG = (
    "This is a long sentence that keeps going, so that the runaway guard of the server allows it enough audio "
    "frames for a test that needs a request to still be running when the client walks away from it."
)


class LiveServer:
    """uvicorn in a background thread on a free port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = app.state.vp.config
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, header_timeout_s=cfg.header_timeout_s,
                                                    log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def voices_dir(tiny_custom_voice_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("voices")
    (d / "alice").symlink_to(tiny_custom_voice_dir, target_is_directory=True)
    return d


@pytest.fixture(scope="module")
def config(voices_dir):
    return ServeConfig(voices=["alice"], voices_dir=voices_dir, device="cpu", max_concurrent=4, max_frames=FRAMES,
                       max_len=512, queue_timeout_s=20)  # fmt: skip


@pytest.fixture(scope="module")
def voices(config):
    vs = load_voices(config)
    yield vs
    for v in vs.values():
        v.engine.stop()


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


def read_stream_wav(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    wav, sr = sf.read(io.BytesIO(wav_header(24000, len(data) - 44) + data[44:]), dtype="float32")
    assert sr == 24000
    return wav


def test_streaming_wav_arrives_incrementally_and_is_valid(server, voices, monkeypatch):
    """Streaming proved by ordering, not by a clock: once the engine has handed the server its first audio chunk,
    it hands over nothing more (no further chunk, no 'done') until the client holds audio bytes. A server that
    buffered the response would send nothing, the wait would time out and the test would fail."""
    engine = voices["alice"].engine
    client_has_audio = threading.Event()
    handed: list[tuple[str, bool]] = []  # (event kind, whether the client had audio when the engine handed it over)
    submit = engine.submit

    def held_back_after_first_audio(prompt, gen, on_event):
        def on_engine_event(ev):
            first_audio = ev.kind == "audio" and not any(kind == "audio" for kind, _ in handed)
            handed.append((ev.kind, client_has_audio.is_set()))
            on_event(ev)
            if first_audio:  # the engine's event thread waits here (the frame steps go on)
                client_has_audio.wait(timeout=60)

        return submit(prompt, gen, on_engine_event)

    monkeypatch.setattr(engine, "submit", held_back_after_first_audio)
    chunks = []
    body = {"voice": "alice", "input": "Streaming, chunk by chunk.", "response_format": "wav", "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/wav"
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


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac", "pcm"])
def test_each_format_decodes(server, fmt):
    from tests.test_serve_formats import decode

    r = speech(server.url, input="Format check.", response_format=fmt)
    assert r.status_code == 200, r.text
    wav, sr = decode(r.content, fmt)
    assert sr == 24000
    assert abs(len(wav) - FRAMES * 1920) <= (0 if fmt in ("wav", "pcm", "flac") else 2400)


def test_speed_changes_duration(server):
    r = speech(server.url, input="Faster.", response_format="wav", speed=2.0)
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
    ],
)
def test_bad_input_gets_400_json(server, body, param):
    payload = {"voice": "alice", "input": "Hello.", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    r = httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]


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
    assert speech(server.url, response_format="pcm").status_code == 200  # auth off: no header needed


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
        live_cfg.max_frames, live_cfg.generation = FRAMES, {}
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
        update={"max_concurrent": 1, "queue_timeout_s": 0.3, "max_frames": 200, "generation": {"min_new_tokens": 200}}
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
        live_cfg.max_frames, live_cfg.generation = FRAMES, {}
    assert r.status_code == 200 and len(r.content) == 62 * 1920 * 2


def test_long_input_is_spoken_in_segments():
    from voicepipe.serve.routers.speech import split_text

    text = "One sentence here. " * 40 + "A" * 700
    segs = split_text(text, 300)
    assert all(len(s) <= 300 for s in segs) and len(segs) >= 4
    assert " ".join(segs).replace(" ", "") == text.replace(" ", "")
    assert split_text("Short.", 300) == ["Short."]


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
