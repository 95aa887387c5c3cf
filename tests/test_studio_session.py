"""The studio session in the store and the studio API (FastAPI TestClient): takes stored with their text, retried
uploads deduplicated, keep/redo, progress, resuming from the store alone, and bad input named clearly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from tests.fixtures.studio import PROMPTS, SR, clipped, read_aloud
from voicepipe.errors import InputError
from voicepipe.store import open_store
from voicepipe.studio.app import create_app
from voicepipe.studio.deps import Studio, StudioConfig
from voicepipe.studio.session import StudioSession, list_sessions


def wav_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def client(tmp_path: Path, studio_script: Path):
    store = open_store(str(tmp_path / "store"))
    studio = Studio(StudioConfig(speaker="Cindy", session="day1", script=studio_script, asr_backend="none",
                                 dnsmos=False, target_minutes=30), store=store)
    with TestClient(create_app(studio)) as c:
        yield c, studio, store


def test_takes_keep_redo_progress_and_resume(client, studio_script) -> None:
    c, studio, store = client
    s = c.get("/api/session").json()
    assert [p["text"] for p in s["prompts"]] == PROMPTS and s["speaker"] == "cindy" and s["takes"] == []
    assert s["progress"]["target_minutes"] == 30 and s["progress"]["kept"] == 0
    p0, p1 = s["prompts"][0]["id"], s["prompts"][1]["id"]

    good = wav_bytes(read_aloud(PROMPTS[0]))
    r = c.post(f"/api/takes?prompt_id={p0}", content=good, headers={"content-type": "audio/wav"})
    assert r.status_code == 200, r.text
    take = r.json()["take"]
    assert take["status"] == "pending" and take["verdict"] == "keep" and take["text"] == PROMPTS[0]
    again = c.post(f"/api/takes?prompt_id={p0}", content=good, headers={"content-type": "audio/wav"}).json()
    assert again["take"]["id"] == take["id"], "a retried upload is the same take"
    assert c.get(f"/api/takes/{take['id']}/audio").content == good

    bad = c.post(f"/api/takes?prompt_id={p1}", content=wav_bytes(clipped(read_aloud(PROMPTS[1]))),
                 headers={"content-type": "audio/wav"}).json()["take"]
    assert bad["verdict"] == "redo" and [i["code"] for i in bad["issues"]] == ["clipping"]

    out = c.post(f"/api/takes/{take['id']}/decision", json={"keep": True}).json()
    assert out["take"]["status"] == "kept" and out["progress"]["kept"] == 1
    assert out["progress"]["prompts_done"] == 1 and out["progress"]["kept_minutes"] > 0.03
    assert c.post(f"/api/takes/{bad['id']}/decision", json={"keep": False}).json()["take"]["status"] == "redo"

    # a second take of the same prompt, kept: the first one goes back to redo (one kept take per prompt)
    second = c.post(f"/api/takes?prompt_id={p0}", content=wav_bytes(read_aloud(PROMPTS[0], lead_s=0.6)),
                    headers={"content-type": "audio/wav"}).json()["take"]
    assert second["n"] == 2
    c.post(f"/api/takes/{second['id']}/decision", json={"keep": True})
    # recording a prompt again without deciding: the undecided take becomes a redo
    p2 = s["prompts"][2]["id"]
    first = c.post(f"/api/takes?prompt_id={p2}", content=wav_bytes(read_aloud(PROMPTS[2]))).json()["take"]
    c.post(f"/api/takes?prompt_id={p2}", content=wav_bytes(read_aloud(PROMPTS[2], lead_s=0.5)))
    assert studio.session.take(first["id"]).status == "redo"

    # another day, another machine: only the store is shared
    resumed = StudioSession(open_store(store.url), "cindy", "day1")
    assert [t.id for t in resumed.kept()] == [second["id"]]
    statuses = {t.id: t.status for t in resumed.doc.takes}
    assert {k: statuses[k] for k in (take["id"], bad["id"], second["id"])} == {
        take["id"]: "redo", bad["id"]: "redo", second["id"]: "kept"}
    assert [p.text for p in resumed.script.prompts] == PROMPTS, "the script travels with the session"
    assert list_sessions(store) == ["cindy/day1"]
    history = store.ref_history("studio/cindy/day1")
    assert len(history) >= 6, "every change is a new session document; the ref's log keeps the old ones"


def test_bad_input_is_named(client) -> None:
    c, studio, _ = client
    pid = studio.session.script.prompts[0].id
    r = c.post(f"/api/takes?prompt_id={pid}", content=b"<html>not audio</html>", headers={"content-type": "audio/wav"})
    assert r.status_code == 400 and r.json()["error"].startswith("take upload: not audio")
    r = c.post("/api/takes?prompt_id=nope", content=wav_bytes(read_aloud(PROMPTS[0])))
    assert r.status_code == 400 and "prompt 'nope' is not in the script" in r.json()["error"]
    r = c.post(f"/api/takes?prompt_id={pid}", content=b"")
    assert r.status_code == 400 and "empty body" in r.json()["error"]
    assert c.post("/api/takes/nope/decision", json={"keep": True}).status_code == 404
    assert c.get("/api/takes/nope/audio").status_code == 404
    assert studio.session.doc.takes == [], "nothing was stored from the bad uploads"
    page = c.get("/")
    assert page.status_code == 200 and "studio.js" in page.text
    assert c.get("/static/recorder-worklet.js").status_code == 200


def test_names_are_checked(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(InputError, match=r"speaker 'a/b'"):
        StudioSession(store, "a/b")
    with pytest.raises(InputError, match=r"session ''"):
        StudioSession(store, "james", "")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], capture_output=True, text=True, timeout=300)


def test_corpus_cli_names_a_missing_session_and_missing_enrollment(tmp_path: Path) -> None:
    proc = _cli("corpus", "build", "--speaker", "james", "--studio", "nope", "--out", str(tmp_path / "o"),
                "--store", str(tmp_path / "store"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: studio session james/nope: not in the store")
    proc = _cli("corpus", "build", "--speaker", "james", "--feed", "http://127.0.0.1:9/feed.xml",
                "--out", str(tmp_path / "o"), "--store", str(tmp_path / "store"))
    assert proc.returncode == 2
    assert "give at least one enrollment clip (enroll), or a studio session" in proc.stderr.strip().splitlines()[-1]


def test_words_and_dnsmos_follow_the_fast_checks(tmp_path: Path, studio_script: Path) -> None:
    """The upload answers with the fast checks; the words (PocketSphinx) and DNSMOS land on the take a moment later,
    including after a server restart in the middle of them."""
    import time

    store = open_store(str(tmp_path / "store"))
    studio = Studio(StudioConfig(speaker="cindy", script=studio_script, asr_backend="pocketsphinx"), store=store)
    with TestClient(create_app(studio)) as c:
        pid = studio.session.script.prompts[2].id
        wrong = wav_bytes(read_aloud(PROMPTS[0]))  # the wrong sentence for this prompt
        take = c.post(f"/api/takes?prompt_id={pid}", content=wrong).json()["take"]
        assert take["checking"] is True and "wer" not in take["measures"] and take["verdict"] == "keep"
        deadline = time.monotonic() + 240
        while take["checking"] and time.monotonic() < deadline:
            time.sleep(0.5)
            take = c.get(f"/api/takes/{take['id']}").json()["take"]
    assert take["checking"] is False and take["verdict"] == "redo"
    assert "words" in [i["code"] for i in take["issues"]] and take["measures"]["wer"] > 0.5
    assert take["measures"]["dnsmos"]["bak"] > 0
    studio.close()

    # a server stopped while checking: the next one finishes the job from the stored audio
    s = StudioSession(store, "cindy", "main")
    other = wav_bytes(read_aloud(PROMPTS[0], lead_s=0.5))
    stuck = s.add_take(pid, other, sr=SR, seconds=1.0, check={"verdict": "keep", "issues": [], "measures": {}},
                       checking=True)
    assert stuck.checking and not stuck.issues
    again = Studio(StudioConfig(speaker="cindy", asr_backend="pocketsphinx", dnsmos=False), store=store)
    again.close()  # waits for the checks it resumed
    done = again.session.take(stuck.id)
    assert done.checking is False and "words" in [i["code"] for i in done.issues]


def test_the_studio_command_serves_the_default_script(tmp_path: Path) -> None:
    """`voicepipe studio` on a new session: the CMU ARCTIC script, served on the given port (stopped by the test)."""
    import time
    import urllib.request

    from tests.fixtures.store import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voicepipe.cli", "studio", "--speaker", "James", "--port",
                             str(port), "--store", str(tmp_path / "store"), "--asr-backend", "none", "--no-dnsmos",
                             "--target-minutes", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert body["speaker"] == "james" and body["session"] == "main" and len(body["prompts"]) == 1132
        assert body["progress"]["target_minutes"] == 60 and body["progress"]["coverage"]["phonemes_total"] > 35
    finally:
        proc.terminate()
        proc.wait(30)
    assert list_sessions(open_store(str(tmp_path / "store"))) == ["james/main"]
