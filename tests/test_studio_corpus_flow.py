"""`build_corpus` (the Prefect flow, as the CLI and the UI form run it) from a studio session plus a podcast feed of
the same speaker: kept takes enter with their known text, a take kept despite clipping is dropped by the corpus
filters, and the podcast's segments are checked against an enrollment taken from the studio takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tests.fixtures.studio import PROMPTS, SR, clipped, read_aloud
from voicepipe.audio import save_wav
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.synthetic import TARGET_VOICE, score_corpus, speak
from voicepipe.store import open_store
from voicepipe.studio.script import parse_script
from voicepipe.studio.session import StudioSession

LINES = [
    "This is a clean recording of my voice for the new corpus.",
    "I read every sentence slowly and clearly into the microphone.",
    "The weather was cold this morning, so I stayed inside and read.",
    "My favourite meal is fresh bread with soup on a rainy evening.",
]


def _take(text: str, sr: int = 24000) -> np.ndarray:
    pad = np.zeros(int(0.6 * sr), np.float32)
    return np.concatenate([pad, speak(text, TARGET_VOICE, speed=155) * 0.5, pad]).astype(np.float32)


def test_studio_session_and_feed_in_one_corpus(corpus_prefect, synthetic_podcast, tiny_tts_dir, tmp_path):
    from flows.corpus import build_corpus

    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    session = StudioSession(store, "target", "main", script=parse_script("\n".join(LINES), "lines.txt"))
    for i, prompt in enumerate(session.script.prompts):
        wav = _take(prompt.text)
        if i == 3:
            wav = clipped(wav)
        path = save_wav(tmp_path / f"take{i}.wav", wav, 24000)
        take = session.add_take(prompt.id, path.read_bytes(), sr=24000, seconds=wav.size / 24000,
                                check={"verdict": "keep", "issues": [], "measures": {}})
        session.decide(take.id, keep=True)  # the clipped one too: the corpus filters must still catch it

    params = CorpusParams(
        speaker="Target", enroll=[], studio=["main"], feeds=[synthetic_podcast.feed("feed-studio.xml", n_episodes=2)],
        out=str(tmp_path / "out"), store_url=store_url, separate=False, asr_backend="pocketsphinx",
        codec_model=str(tiny_tts_dir), workers=2, val_fraction=0.0,
        studio_max_wer=1.0,  # PocketSphinx cannot follow espeak's m3 voice; the WER filter: test below
    )
    result = build_corpus(params)
    out = Path(result["out"])
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    studio_rows = [m for m in manifest if m["episode"].startswith("studio-main-")]
    assert sorted(m["text"] for m in studio_rows) == sorted(LINES[:3]), studio_rows
    clipped_take = [r for r in rejects if r["episode"] and r["episode"].startswith("studio-main-0004")]
    assert clipped_take and clipped_take[0]["reason"].startswith("clipping"), rejects
    podcast_rows = [m for m in manifest if m["episode"] in {"ep01", "ep02"}]
    assert podcast_rows, "the feed's segments join the studio takes"
    score = score_corpus(out, synthetic_podcast.truth)
    assert score["purity"] >= 0.9, score  # checked against the enrollment made of studio takes
    assert any(r["reason"].startswith("other speaker") for r in rejects)
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["params"]["studio"] == ["main"] and summary["utterances"] == len(manifest)
    assert all(Path(p).name.split(".")[0] in {t.audio_sha for t in session.kept()}
               for p in summary["params"]["enroll"]), "enrollment = the session's kept takes"


def test_a_take_reading_another_sentence_is_dropped_by_the_wer_gate(tiny_tts_dir, tmp_path):
    """The corpus's words check (`studio_max_wer`, default): a kept take whose audio says another sentence than its
    prompt is dropped, with its WER and what PocketSphinx heard in rejects.jsonl; the take read right enters."""
    from voicepipe.corpus.build import build_local

    store_url = str(tmp_path / "store")
    session = StudioSession(open_store(store_url), "james", "main", script=parse_script("\n".join(PROMPTS[:2])))
    for prompt, said in zip(session.script.prompts, [PROMPTS[0], PROMPTS[2]], strict=True):  # 2nd: wrong sentence
        wav = read_aloud(said)
        path = save_wav(tmp_path / f"{prompt.id}.wav", wav, SR)
        take = session.add_take(prompt.id, path.read_bytes(), sr=SR, seconds=wav.size / SR,
                                check={"verdict": "keep", "issues": [], "measures": {}})
        session.decide(take.id, keep=True)

    out = tmp_path / "out"
    params = CorpusParams(speaker="james", enroll=[], studio=["main"], out=str(out), store_url=store_url,
                          separate=False, asr_backend="pocketsphinx", codec_model=str(tiny_tts_dir), workers=1)
    assert params.studio_max_wer == 0.75
    result = build_local(params, progress=False)
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [m["text"] for m in manifest] == [PROMPTS[0]] and result.utterances == 1, (manifest, rejects)
    wrong = [r for r in rejects if (r["episode"] or "").startswith("studio-main-0002")]
    assert len(wrong) == 1 and wrong[0]["step"] == "filter" and wrong[0]["text"] == PROMPTS[1], rejects
    reason = wrong[0]["reason"]
    assert reason.startswith("asr_wer ") and " > 0.75 (heard " in reason, reason
    assert float(reason.split()[1]) > 0.75
    heard, said, prompt = (set(re.findall(r"[a-z']+", x.lower()))
                           for x in (reason.split("(heard ", 1)[1], PROMPTS[2], PROMPTS[1]))
    assert len(heard & said) > len(heard & prompt), reason  # what it heard is the sentence read, not the prompt
