"""One contract from training to serving: the voice that is evaluated is the voice that is served.

1. The trainer's sequence, the serving engine's prefill and the evaluator's prompt are one layout (ids, masks, the
   speaker slot, and the embeddings they make), with the language the checkpoint was trained with, and the package's
   own generate produces the same codes from it.
2. The engine samples as the checkpoint's generation_config.json says; editing the file changes what it does.
3. pipeline -> promotion -> voice registry -> `voicepipe serve` -> the official `openai` client gets audio, and the
   voice's card (registry and GET /v1/voices) says which corpus and checkpoint it is and how it scored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TEXT = "Hello there, this is a contract test."
GREEDY = dict(do_sample=False, subtalker_do_sample=False)


def _voice(src: Path, dst: Path, language: str | None) -> Path:
    """A copy of the tiny custom voice, recording `language` as the trained one (as the trainer writes it)."""
    from voicepipe.models.prompt import write_voice_meta

    shutil.copytree(src, dst)
    if language is not None:
        write_voice_meta(dst, language=language, corpus_version="v-test", speaker="alice")
    return dst


@pytest.mark.parametrize(("corpus_lang", "slot"), [(None, 6), ("English", 7)], ids=["auto", "english"])
def test_trainer_engine_and_evaluator_build_one_prompt(tiny_custom_voice_dir: Path, tmp_path: Path, one_torch_thread,
                                                       corpus_lang: str | None, slot: int) -> None:
    from voicepipe.evaluate.runner import EvalConfig
    from voicepipe.evaluate.synth import engine_prompts
    from voicepipe.models import load_tts
    from voicepipe.serve.engine import EngineConfig, GenerationConfig, TTSEngine
    from voicepipe.train.data import SpecialIds, build_sequence, collate, tokenize_text
    from voicepipe.train.loss import input_embeddings
    from voicepipe.train.recipe import _corpus_language

    # the trainer takes the language from the corpus and checks it against the model; the checkpoint records it
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text(json.dumps({"version": "v-test", **({"language": corpus_lang}
                                                                              if corpus_lang else {})}))
    cfg = json.loads((tiny_custom_voice_dir / "config.json").read_text())
    lang = _corpus_language(corpus, cfg["talker_config"])
    assert lang == (corpus_lang or "auto").lower()
    ck = _voice(tiny_custom_voice_dir, tmp_path / "alice", lang)

    tts = load_tts(ck)
    model = tts.model
    codes = torch.randint(0, 2048, (5, 16), generator=torch.Generator().manual_seed(0))
    seq = build_sequence(tokenize_text(tts.processor, TEXT), codes, SpecialIds.from_config(model.config),
                         language=lang)
    engine = TTSEngine(tts, EngineConfig(max_batch=2, max_len=256))
    assert engine.language == lang  # read from the checkpoint's voicepipe.json
    served = engine.prepare(TEXT, speaker="alice")  # what a request without a language gets
    assert EvalConfig().language is None  # evaluation defaults to the checkpoint's language too
    evaluated = engine_prompts(engine, [TEXT], speaker="alice", language=EvalConfig().language)[0]

    lay = served.layout
    first = lay.length
    assert int(seq.frame_mask.nonzero()[0]) == first  # the first audio frame follows the prompt in training too
    assert lay.speaker_pos == slot and seq.speaker_mask.nonzero().flatten().tolist() == [slot]
    for p in (served, evaluated):
        assert torch.equal(p.layout.text_ids, seq.text_ids[:first])
        assert torch.equal(p.layout.text_mask, seq.text_mask[:first])
        assert torch.equal(p.layout.codec_mask | seq.speaker_mask[:first], p.layout.codec_mask)
        others = torch.arange(first) != slot
        assert torch.equal(p.layout.codec_ids[others], seq.codec_ids[:first, 0][others])
        assert torch.equal(p.layout.codec_mask[others], seq.codec_mask[:first][others])
        assert torch.equal(p.embeds, served.embeds)
    # served: the speaker's codec row, which is where the trained speaker vector was saved
    assert int(lay.codec_ids[slot]) == model.config.talker_config.spk_id["alice"]

    # ... so the embeddings the talker sees are the same numbers in training and in serving
    vec = model.talker.get_input_embeddings().weight[lay.codec_ids[slot]]
    with torch.no_grad():
        train_emb = input_embeddings(model, collate([seq]), vec)[0, :first]
    torch.testing.assert_close(train_emb, served.embeds.float(), rtol=0, atol=1e-6)

    # and the package's own generate, given the trained language, makes the same codes from this layout
    ids = tts._tokenize_texts([tts._build_assistant_text(TEXT)])
    with torch.inference_mode():
        ref, _ = model.generate(input_ids=ids, instruct_ids=[None], languages=[lang], speakers=["alice"],
                                non_streaming_mode=True, max_new_tokens=9, do_sample=False, subtalker_dosample=False)
    engine.start()
    try:
        ours = engine.generate_codes(served, GenerationConfig(max_new_tokens=8, **GREEDY))
    finally:
        engine.stop()
    assert len(ref[0]) > 0 and torch.equal(ours[: len(ref[0])], ref[0])


def test_engine_samples_as_generation_config_json_says(tiny_custom_voice_dir: Path, tmp_path: Path,
                                                       one_torch_thread) -> None:
    from voicepipe.models import load_tts
    from voicepipe.serve.engine import EngineConfig, TTSEngine

    ck = _voice(tiny_custom_voice_dir, tmp_path / "alice", None)
    gen_file = ck / "generation_config.json"

    def engine_with(**settings) -> TTSEngine:
        gen_file.write_text(json.dumps(settings))
        return TTSEngine(load_tts(ck), EngineConfig(max_batch=2, max_len=256)).start()

    def run(eng: TTSEngine, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return eng.generate_codes(eng.prepare(TEXT, speaker="alice"))  # no GenerationConfig: the checkpoint's

    eng = engine_with(do_sample=False, subtalker_dosample=False, max_new_tokens=5, top_k=7, temperature=0.4)
    try:
        g = eng.generation
        assert (g.do_sample, g.subtalker_do_sample, g.max_new_tokens, g.temperature) == (False, False, 5, 0.4)
        assert eng.cfg.top_k == 7
        a, b = run(eng, 1), run(eng, 2)
        assert 0 < len(a) <= 5 and torch.equal(a, b)  # greedy and capped, as the file says
    finally:
        eng.stop()

    eng = engine_with(do_sample=True, subtalker_dosample=True, temperature=1.5, max_new_tokens=12, min_new_tokens=12)
    try:
        assert eng.generation.do_sample and eng.cfg.top_k == 50  # top_k absent: the package's default
        a, b = run(eng, 1), run(eng, 2)
        assert len(a) == len(b) == 12 and not torch.equal(a, b)  # sampled now: seeds matter
        assert torch.equal(a, run(eng, 1))
    finally:
        eng.stop()

    # a request (the server's `generation` settings) overrides the file where the API allows
    over = eng.generation.with_overrides(temperature=0.7, subtalker_dosample=False)
    assert (over.temperature, over.subtalker_do_sample, over.max_new_tokens) == (0.7, False, 12)


@pytest.mark.slow
def test_pipeline_promotes_and_serve_speaks_the_promoted_voice(prefect_api, prefect_podcast, tiny_tts_dir: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny random models never make valid speech, so this run promotes by the explicit PLUMBING rule (the strict
    default is asserted in test_prefect_pipeline.py): what is tested is the chain, not the voice."""
    import httpx
    import numpy as np
    import soundfile as sf
    from openai import OpenAI

    from flows.pipeline import EvaluateStep, PipelineParams, TrainStep, voice_pipeline
    from tests.fixtures.prefect import corpus_params, free_port
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.store import open_store

    store_url = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("VOICEPIPE_STORE_URL", store_url)
    monkeypatch.setenv("VOICEPIPE_HOME", str(tmp_path / "home"))
    corpus = corpus_params(prefect_podcast, "ChainSpeaker", store_url, tmp_path / "corpus", max_episodes=2,
                           codec_model=str(tiny_tts_dir / "speech_tokenizer"), language="English")
    params = PipelineParams(
        corpus=CorpusParams(**corpus),
        train=TrainStep(base=str(tiny_tts_dir), config="v8", out=str(tmp_path / "run"),
                        overrides={"epochs": 2, "batch_size": 2, "grad_accum": 1}),
        evaluate=EvaluateStep(overrides={"selection": "plumbing", "asr": "pocketsphinx", "mos": False,
                                         "max_val_texts": 1, "script": ["Hello there."], "html_samples": 0,
                                         "cap_max_frames": 6}),
    )
    result = voice_pipeline(params)

    # promotion: the registry points at the chosen checkpoint, with its card
    store = open_store(store_url)
    ref = store.get_ref("voices/chainspeaker")
    assert result["chosen"] in ("epoch-001", "epoch-002") and ref is not None and ref["sha"] == result["voice_sha"]
    card = ref["extra"]["card"]
    assert card["corpus_version"] == result["corpus_version"] and card["checkpoint"] == result["chosen"]
    assert card["language"] == "english" and card["selection_rule"] == "plumbing"
    assert {"sim", "base_sim", "sim_vs_base", "wer", "valid", "samples"} <= set(card["evaluation"])
    assert card["evaluation"]["samples"] == 2 and card["evaluation"]["synthesis"] == "engine"
    # the checkpoint records the corpus language it was trained with
    meta = json.loads((tmp_path / "run" / result["chosen"] / "voicepipe.json").read_text())
    assert meta["language"] == "english" and meta["corpus_version"] == result["corpus_version"]

    # `voicepipe serve` loads the promoted voice from the store (nothing local) and an OpenAI client gets audio
    port = free_port()
    env = dict(os.environ, HOME=str(tmp_path / "serve-home"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", "from voicepipe.cli import app; app()", "serve", "--voice",
                             "chainspeaker", "--store", store_url, "--port", str(port), "--device", "cpu",
                             "--max-concurrent", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)

        voices = httpx.get(f"{base}/v1/voices", timeout=10).json()["data"]
        assert [v["name"] for v in voices] == ["chainspeaker"]
        served = voices[0]
        assert served["source"].startswith(f"store:voices/chainspeaker@{ref['sha'][:12]}")
        assert served["card"]["corpus_version"] == result["corpus_version"]
        assert served["card"]["checkpoint"] == result["chosen"] and served["card"]["language"] == "english"
        assert served["card"]["evaluation"]["samples"] == 2

        client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", timeout=120)
        audio = client.audio.speech.create(model="voicepipe", voice="chainspeaker", input="Hello there.",
                                           response_format="wav")
        wav_path = tmp_path / "hello.wav"
        wav_path.write_bytes(audio.content)
        wav, sr = sf.read(wav_path, dtype="float32")
        assert audio.content[:4] == b"RIFF" and sr == 24000 and len(wav) > 0 and np.isfinite(wav).all()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_voice_card_of_a_local_checkpoint_comes_from_what_it_records(tmp_path: Path) -> None:
    """A voice served from a local dir (no registry) still says which corpus and language it was trained with; a
    voice fetched from the store carries the registry's card (the pipeline test above checks that one)."""
    from voicepipe.models.prompt import write_voice_meta
    from voicepipe.serve.registry import CARD_FILE, voice_card

    ck = tmp_path / "alice"
    ck.mkdir()
    assert voice_card(ck) == {}
    write_voice_meta(ck, language="English", corpus_version="abc123", speaker="alice", epoch=3)
    assert voice_card(ck) == {"language": "english", "corpus_version": "abc123", "speaker": "alice", "epoch": 3}
    (ck / CARD_FILE).write_text(json.dumps({"checkpoint": "epoch-003", "corpus_version": "abc123",
                                            "evaluation": {"sim": 0.8}}))
    assert voice_card(ck)["evaluation"] == {"sim": 0.8} and voice_card(ck)["checkpoint"] == "epoch-003"
