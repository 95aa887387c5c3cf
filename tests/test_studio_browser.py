"""The recording studio in a real browser: headless Chromium (the system `chromium`, driven by Playwright) with a
fake microphone fed from a wav file, three prompts of which one is recorded clipped. The page must flag that take,
and the corpus built from the session must hold the two good takes only, with their known texts. Each stored take is
compared with the file its fake microphone played: a good take the page did not keep is recorded again only when
that capture came through damaged (`record_checked`).

Real models: silero VAD, DNSMOS (speechmos), PocketSphinx, resemblyzer; tiny random codec (plumbing only).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.store import free_port
from tests.fixtures.studio import PROMPTS, SR, capture_match, clipped, glitched, read_aloud
from voicepipe.audio import resample, save_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs the system chromium (scripts/bootstrap.sh)")


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory, studio_script):
    import uvicorn

    from voicepipe.store import open_store
    from voicepipe.studio.app import create_app
    from voicepipe.studio.deps import Studio, StudioConfig

    root = tmp_path_factory.mktemp("studio-browser")
    store = open_store(str(root / "store"))
    studio = Studio(StudioConfig(speaker="James", script=studio_script, asr_backend="pocketsphinx"), store=store)
    studio.warm_up()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield {"url": f"http://127.0.0.1:{port}/", "studio": studio, "store": store, "root": root}
    server.should_exit = True
    thread.join(10)


def record_one(pw, url: str, mic: Path, seconds: float, *, go_right: int = 0, screenshot: Path | None = None) -> dict:
    """Open the page in a fresh browser whose microphone plays `mic` once; record one take with the keyboard."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop"])
    try:
        page = browser.new_page(viewport={"width": 1180, "height": 760})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        for _ in range(go_right):
            page.keyboard.press("ArrowRight")
        prompt = page.inner_text("#prompt-text")
        page.keyboard.press("r")
        page.wait_for_selector("#status[data-state='recording']")
        page.wait_for_function(
            f"parseFloat(document.getElementById('rec-time').dataset.seconds) >= {seconds}", timeout=60_000)
        page.keyboard.press(" ")
        page.wait_for_selector("#status[data-state='review'], #status[data-state='error']", timeout=300_000)
        out = {
            "prompt": prompt,
            "status": page.get_attribute("#status", "data-state"),
            "verdict": page.get_attribute("#verdict", "data-verdict"),
            "issues": page.eval_on_selector_all("#issues li", "els => els.map(e => e.dataset.code)"),
            "messages": page.eval_on_selector_all("#issues li", "els => els.map(e => e.textContent)"),
            "player": page.get_attribute("#player", "src"),
        }
        if screenshot:
            page.screenshot(path=str(screenshot))
        decide = "Enter" if out["verdict"] == "keep" else "Backspace"
        page.keyboard.press(decide)
        page.wait_for_selector("#status[data-state='idle']", timeout=60_000)
        out["progress"] = page.inner_text("#minutes-text")
        out["pending_uploads"] = page.evaluate("pendingAll().then(r => r.length)")
        return out
    finally:
        browser.close()


MAX_RETRIES = 2  # a good take recorded again when the fake microphone's capture came back damaged


def stored_capture(store, take_id: str) -> tuple[np.ndarray, int]:
    """The audio of take `take_id` as the server stored it (the page's wav), and its rate."""
    from voicepipe.studio.session import read_session

    take = next(t for t in read_session(store, "james", "main").takes if t.id == take_id)
    data, sr = sf.read(io.BytesIO(store.get_bytes(take.audio_sha)), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def record_checked(pw, server: dict, mic: Path, wav: np.ndarray, *, good: bool, go_right: int = 0,
                   screenshot: Path | None = None) -> dict:
    """`record_one`, then the stored take compared with the file the fake microphone played (`capture_match`).
    A take meant to be good that the page did not keep is recorded again (a fresh browser opens on the same prompt)
    when its capture came through damaged (Chromium's fake capture drops/repeats buffers on a loaded machine), at
    most MAX_RETRIES times; an intact capture the page sends to redo is returned as it is, for the test to fail."""
    from voicepipe.studio.session import read_session

    store = server["store"]
    attempts = []
    for retry in range(MAX_RETRIES + 1):
        before = {t.id for t in read_session(store, "james", "main").takes}
        out = record_one(pw, server["url"], mic, wav.size / SR + 0.3, go_right=go_right, screenshot=screenshot)
        new = [t for t in read_session(store, "james", "main").takes if t.id not in before]
        assert len(new) == 1 and new[0].text == out["prompt"], (out, new)
        out["take_id"] = new[0].id
        out["capture"] = capture_match(wav, SR, *stored_capture(store, new[0].id))
        attempts.append({k: out[k] for k in ("take_id", "verdict", "issues", "capture")})
        out["retries"], out["attempts"] = retry, attempts
        print(f"studio capture {out['take_id']}: verdict {out['verdict']} {out['issues']} {out['capture']}")
        if not good or out["verdict"] == "keep" or not out["capture"]["damaged"]:
            break
    return out


@pytest.fixture(scope="module")
def recorded(studio_server):
    """Three takes through the page: good, clipped (redo), good; a good take whose capture came back damaged
    and was not kept is recorded again (`record_checked`)."""
    from playwright.sync_api import sync_playwright

    root = studio_server["root"]
    # the fake microphone starts playing when the page opens it (at the first Record): 2 s of silence first leave
    # room for the page's audio set-up on a busy machine before the speech begins
    takes = [read_aloud(p, lead_s=2.0) for p in PROMPTS]
    takes[1] = clipped(takes[1])
    mics = [save_wav(root / f"mic{i}.wav", w, SR) for i, w in enumerate(takes)]
    shot = Path(os.environ.get("VOICEPIPE_STUDIO_SCREENSHOT") or root / "studio.png")
    with sync_playwright() as pw:
        results = [record_checked(pw, studio_server, mics[0], takes[0], good=True),
                   record_checked(pw, studio_server, mics[1], takes[1], good=False, screenshot=shot),
                   # the clipped prompt was sent back to redo, so the page opens on it again: skip to the third
                   record_checked(pw, studio_server, mics[2], takes[2], good=True, go_right=1)]
    return {"results": results, "screenshot": shot, "retries": sum(r["retries"] for r in results)}


def test_the_capture_check_tells_damaged_from_intact() -> None:
    """`capture_match` without a browser: an intact capture (resampled as the page records, starting in the lead
    silence, 16-bit) matches at every speech frame; one or a few 10 ms buffers dropped/repeated make it damaged."""
    wav = read_aloud(PROMPTS[2], lead_s=2.0)

    def captured(w: np.ndarray, sr: int) -> np.ndarray:
        c = resample(w, SR, sr)[int(0.3712 * sr) :]
        return np.round(np.concatenate([c, np.zeros(sr, np.float32)]) * 32767) / 32767

    for sr in (44100, 48000):
        intact = capture_match(wav, SR, captured(wav, sr), sr)
        assert not intact["damaged"] and intact["bad_fraction"] == 0 and intact["min_corr"] > 0.95, intact
        assert abs(intact["lag_s"] - 0.3712) < 1e-3, intact
        for n, seed in [(1, 0), (1, 1), (1, 2), (4, 0), (4, 1)]:
            damaged = capture_match(wav, SR, captured(glitched(wav, SR, n=n, seed=seed), sr), sr)
            assert damaged["damaged"], (n, seed, damaged)


def test_the_page_flags_the_clipped_take(recorded) -> None:
    good1, bad, good2 = recorded["results"]
    assert [r["prompt"] for r in recorded["results"]] == PROMPTS, recorded["results"]
    assert bad["verdict"] == "redo" and "clipping" in bad["issues"], bad
    assert any("clipping" in m for m in bad["messages"])
    for r in (good1, good2):  # a page's redo of an intact capture fails here: it was not recorded again
        assert r["status"] == "review" and r["verdict"] == "keep", r
    assert bad["retries"] == 0, "the clipped take is never recorded again"
    assert all(r["pending_uploads"] == 0 for r in recorded["results"]), "every take reached the server"
    assert all(r["player"] for r in recorded["results"]), "the last take can be played back"
    assert recorded["screenshot"].stat().st_size > 10_000


def test_the_session_is_in_the_store_and_resumes(recorded, studio_server) -> None:
    from voicepipe.studio.session import StudioSession

    again = StudioSession(studio_server["store"], "james", "main")  # e.g. another day, another machine
    kept = again.kept()
    assert [t.text for t in kept] == [PROMPTS[0], PROMPTS[2]]
    statuses = {t.text: t.status for t in again.doc.takes}
    assert statuses[PROMPTS[1]] == "redo"
    take = next(t for t in again.doc.takes if t.text == PROMPTS[1])
    meta = studio_server["store"].meta(take.audio_sha)
    assert meta["step"] == "studio.take" and meta["params"]["text"] == PROMPTS[1]
    p = again.progress()
    assert p["kept"] == 2 and p["prompts_done"] == 2 and 0 < p["kept_minutes"] < 1
    # every recorded take is in the session: a good take recorded again (damaged capture) left one more redo
    assert p["takes"] == 3 + recorded["retries"] and p["redo"] == 1 + recorded["retries"] and p["pending"] == 0, p
    assert 0 < p["coverage"]["phonemes"] <= p["coverage"]["phonemes_total"]


def test_corpus_from_the_session_holds_the_good_takes_only(recorded, studio_server, tiny_tts_dir) -> None:
    from voicepipe.corpus.build import build_local
    from voicepipe.corpus.config import CorpusParams

    out = studio_server["root"] / "corpus"
    # studio_max_wer 1.0: PocketSphinx follows espeak's voice through the browser's capture only sometimes (a good
    # take of the third prompt was heard at WER 0.82 in one full run, 2026-12-05, and dropped), as in
    # test_studio_corpus_flow; the redo take stays out by its status in the session, which is what this test checks
    params = CorpusParams(speaker="james", enroll=[], studio=["main"], out=str(out), separate=False,
                          asr_backend="pocketsphinx", codec_model=str(tiny_tts_dir), workers=1,
                          store_url=str(studio_server["root"] / "store"), studio_max_wer=1.0)
    result = build_local(params, progress=False)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["text"] for m in manifest) == sorted([PROMPTS[0], PROMPTS[2]]), manifest
    assert result.utterances == 2 and result.episodes_ok == 2
    lines = [json.loads(x) for f in ("train_with_codes.jsonl", "val_with_codes.jsonl")
             for x in (out / f).read_text().splitlines()]
    assert len(lines) == 2 and all(len(x["audio_codes"][0]) == 16 for x in lines)
    for m in manifest:  # trimmed to the speech (+ padding), not the whole take with its silences
        assert 2.0 < m["duration"] < 6.5 and m["speaker_sim"] > 0.82
    assert "Minutes in / out per step" in (out / "report.md").read_text()


def test_a_take_survives_an_unreachable_server_and_a_closed_tab(recorded, studio_server) -> None:
    """The upload fails (server unreachable), the tab is closed; the next page load uploads the take from IndexedDB."""
    from playwright.sync_api import sync_playwright

    from voicepipe.studio.session import read_session

    root = studio_server["root"]

    def stored_takes() -> list:
        return read_session(studio_server["store"], "james", "main").takes

    wav = read_aloud(PROMPTS[1], lead_s=2.0)
    mic = save_wav(root / "mic-offline.wav", wav, SR)
    before = len(stored_takes())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}%noloop"])
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(studio_server["url"])
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            assert page.inner_text("#prompt-text") == PROMPTS[1], "the page resumes at the prompt sent to redo"
            page.route("**/api/takes?*", lambda route: route.abort())  # the server is gone
            page.keyboard.press("r")
            page.wait_for_function(
                f"parseFloat(document.getElementById('rec-time').dataset.seconds) >= {wav.size / SR + 0.3}",
                timeout=60_000)
            page.keyboard.press(" ")
            page.wait_for_selector("#status[data-state='error']", timeout=60_000)
            assert "Saved in this browser" in page.inner_text("#status")
            assert page.evaluate("pendingAll().then(r => r.length)") == 1
            page.close()  # the tab closes with the take not yet on the server
            assert len(stored_takes()) == before

            page = context.new_page()  # opened again later, the server reachable
            page.goto(studio_server["url"])
            page.wait_for_selector("body[data-ready='1']", timeout=300_000)
            assert page.evaluate("pendingAll().then(r => r.length)") == 0
        finally:
            browser.close()
    takes = stored_takes()
    assert len(takes) == before + 1
    assert takes[-1].text == PROMPTS[1] and takes[-1].status == "pending"
