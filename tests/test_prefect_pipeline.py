"""`voice_pipeline` end to end with tiny real-architecture models: corpus -> train -> evaluate -> promote decision,
as nested flow runs on a real Prefect server, then audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.prefect import corpus_params

pytestmark = pytest.mark.slow


def test_voice_pipeline_chains_all_stages(prefect_api, prefect_podcast, tiny_tts_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import EvaluateStep, PipelineParams, TrainStep, voice_pipeline
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.store import open_store

    store_url = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("VOICEPIPE_STORE_URL", store_url)
    monkeypatch.setenv("VOICEPIPE_HOME", str(tmp_path / "home"))
    corpus = corpus_params(prefect_podcast, "PipeSpeaker", store_url, tmp_path / "corpus", max_episodes=2,
                           codec_model=str(tiny_tts_dir / "speech_tokenizer"))
    params = PipelineParams(
        corpus=CorpusParams(**corpus),
        train=TrainStep(base=str(tiny_tts_dir), config="v8", out=str(tmp_path / "run"),
                        overrides={"epochs": 2, "batch_size": 2, "grad_accum": 1}),
        evaluate=EvaluateStep(overrides={"asr": "pocketsphinx", "mos": False, "max_val_texts": 1,
                                         "script": ["Hello there."], "html_samples": 0, "cap_max_frames": 6}),
    )
    state = voice_pipeline(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    run_id = str(state.state_details.flow_run_id)

    # the corpus version trained on is the one the build recorded; the checkpoints say so too
    store = open_store(store_url)
    latest = store.get_ref("corpus/pipespeaker/latest")
    assert result["corpus_version"] == latest["extra"]["version"] and result["corpus_sha"] == latest["sha"]
    import json

    training = json.loads((tmp_path / "run" / "training.json").read_text())
    assert training["run"]["corpus_version"] == result["corpus_version"]
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch-*")) == ["epoch-001", "epoch-002"]
    # the default (strict) rule: tiny random models make noise, no checkpoint is valid, nothing is promoted
    # (the plumbing rule's promotion -> registry -> serve chain is tests/test_contract.py's)
    assert result["chosen"] is None and result["voice_sha"] is None
    assert store.get_ref("voices/pipespeaker") is None

    # nested runs on the server: pipeline -> build-corpus + train-and-evaluate -> train-voice + evaluate-checkpoints
    from voicepipe.pipeline.audit import audit, render

    report = audit(run_id, store=store)
    run = report["flow_run"]
    assert run["flow"] == "voice-pipeline" and run["state"] == "COMPLETED"
    subs = {s["flow"]: s for s in run["subflow_runs"]}
    assert set(subs) == {"build-corpus", "train-and-evaluate"}
    assert {s["flow"] for s in subs["train-and-evaluate"]["subflow_runs"]} == {"train-voice", "evaluate-checkpoints"}
    assert any(a["key"] == "voice-pipeline-summary" for a in run["artifacts"])
    assert any(a["key"] == "train-and-evaluate-summary" for a in subs["train-and-evaluate"]["artifacts"])
    text = render(report)
    assert "flow=train-voice" in text and "flow=evaluate-checkpoints" in text
