"""The recording studio in a real browser: headless Chromium (the system `chromium`, driven by Playwright) with a
fake microphone fed from a wav file, three prompts of which one is recorded clipped. The page must flag that take,
and the corpus built from the session must hold the two good takes only, with their known texts.

Real models: silero VAD, DNSMOS (speechmos), PocketSphinx, resemblyzer; tiny random codec (plumbing only).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.store import free_port
from tests.fixtures.studio import PROMPTS, SR, clipped, read_aloud
from voicepipe.audio import save_wav

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


@pytest.fixture(scope="module")
def recorded(studio_server):
    """Three takes through the page: good, clipped (redo), good."""
    from playwright.sync_api import sync_playwright

    root = studio_server["root"]
    # the fake microphone starts playing when the page opens it (at the first Record): 2 s of silence first leave
    # room for the page's audio set-up on a busy machine before the speech begins
    takes = [read_aloud(p, lead_s=2.0) for p in PROMPTS]
    takes[1] = clipped(takes[1])
    mics = [save_wav(root / f"mic{i}.wav", w, SR) for i, w in enumerate(takes)]
    shot = Path(os.environ.get("VOICEPIPE_STUDIO_SCREENSHOT") or root / "studio.png")
    with sync_playwright() as pw:
        results = [record_one(pw, studio_server["url"], mics[0], takes[0].size / SR + 0.3),
                   record_one(pw, studio_server["url"], mics[1], takes[1].size / SR + 0.3, screenshot=shot),
                   # the clipped prompt was sent back to redo, so the page opens on it again: skip to the third
                   record_one(pw, studio_server["url"], mics[2], takes[2].size / SR + 0.3, go_right=1)]
    return {"results": results, "screenshot": shot}


def test_the_page_flags_the_clipped_take(recorded) -> None:
    good1, bad, good2 = recorded["results"]
    assert [r["prompt"] for r in recorded["results"]] == PROMPTS, recorded["results"]
    assert bad["verdict"] == "redo" and "clipping" in bad["issues"], bad
    assert any("clipping" in m for m in bad["messages"])
    for r in (good1, good2):
        assert r["status"] == "review" and r["verdict"] == "keep", r
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
