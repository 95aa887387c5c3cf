"""Demucs, Whisper and pyannote: tiny real-class models saved, found offline via models_dir, reloaded, run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from voicepipe.config import load_settings
from voicepipe.errors import ModelError
from voicepipe.models import load_asr, load_demucs, load_diarization, resolve_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(tmp_path: Path):
    return load_settings(offline=True, models_dir=tmp_path / "models")


def test_demucs_separates_through_local_repo(tiny_demucs_dir: Path, offline):
    from demucs.apply import BagOfModels, apply_model
    from demucs.htdemucs import HTDemucs

    shutil.copytree(tiny_demucs_dir, offline.models_dir / "htdemucs_tiny")
    assert resolve_model("demucs", "htdemucs_tiny", offline) == (offline.models_dir / "htdemucs_tiny").resolve()
    bag = load_demucs("htdemucs_tiny", offline)
    assert isinstance(bag, BagOfModels) and isinstance(bag.models[0], HTDemucs)
    assert bag.sources == ["drums", "bass", "other", "vocals"] and bag.samplerate == 44100
    mix = torch.randn(1, 2, 44100 * 2) * 0.1
    with torch.inference_mode():
        out = apply_model(bag, mix, split=True, overlap=0.25, progress=False)
    assert out.shape == (1, 4, 2, 44100 * 2) and torch.isfinite(out).all()


def test_demucs_by_name_offline_is_clear_error(offline):
    with pytest.raises(
        ModelError, match=r"demucs model htdemucs: not a local directory and not available offline.*htdemucs\.yaml"
    ):
        load_demucs("htdemucs", offline)


def test_whisper_transcribes_junk(tiny_whisper_dir: Path, offline):
    from transformers import WhisperForConditionalGeneration

    model, processor = load_asr(tiny_whisper_dir, settings=offline)
    assert isinstance(model, WhisperForConditionalGeneration)
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feats = processor([wav], sampling_rate=16000, return_tensors="pt")
    assert feats.input_features.shape == (1, 80, 3000)
    with torch.inference_mode():
        ids = model.generate(feats.input_features, language="english", task="transcribe", max_new_tokens=6)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert isinstance(text, str) and text.strip()


def test_diarization_pipeline_runs_offline(tiny_diarization_dir: Path, offline):
    from pyannote.audio.pipelines import SpeakerDiarization

    pipe = load_diarization(tiny_diarization_dir, settings=offline)
    assert isinstance(pipe, SpeakerDiarization)
    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "false"
    out = pipe({"waveform": torch.randn(1, 16000 * 12) * 0.1, "sample_rate": 16000})
    ann = out.speaker_diarization  # random weights: labels are junk, the timeline must still be the input's
    assert len(ann) > 0
    assert all(0.0 <= s.start < s.end <= 12.0 + 1e-6 for s in ann.itersegments())


def test_diarization_missing_config(tmp_path: Path, offline):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.yaml"):
        load_diarization(tmp_path / "empty", settings=offline)


def test_full_size_builders_have_the_released_shapes(tmp_path: Path):
    """The benchmark's full-size random models (`full_size=True`) load through the same loaders and carry the
    released architectures' sizes: HTDemucs 26.9 M (demucs defaults, 7.8 s segment), pyannote segmentation-3.0's
    PyanNet 1.47 M and WeSpeaker ResNet34 6.6 M, 256-d embeddings."""
    from voicepipe.models.tiny import build_tiny_demucs, build_tiny_diarization

    def n(m: torch.nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    bag = load_demucs(str(build_tiny_demucs(tmp_path / "demucs", full_size=True)))
    assert round(n(bag), 1) == 26.9 and float(bag.models[0].segment) == 7.8
    pipe = load_diarization(build_tiny_diarization(tmp_path / "diar", full_size=True))
    assert round(n(pipe._segmentation.model), 2) == 1.47
    assert round(n(pipe._embedding.model_), 1) == 6.6
    assert pipe.embedding_batch_size == 32 and pipe._embedding.dimension == 256
    wav = torch.randn(1, 16000 * 12) * 0.1
    out = pipe({"waveform": wav, "sample_rate": 16000})
    assert hasattr(out, "speaker_diarization")


@pytest.mark.parametrize("language", ["en", None])
def test_whisper_confidence_pass_equals_generate_scores(tiny_whisper_dir: Path, language: str | None):
    """Asr scores Whisper's tokens with one teacher-forced pass (generate's output_scores path copies the KV cache
    per item to the CPU): same tokens and the same renormalised log-probs as generate(output_scores=True), with the
    language given or detected."""
    from voicepipe.models.asr import Asr

    asr = Asr("whisper", tiny_whisper_dir, "cpu", max_new_tokens=30)
    rng = np.random.default_rng(0)
    wavs = [(rng.standard_normal(16000 * s) * a).astype(np.float32) for s, a in ((3, 0.1), (5, 0.3))]
    feats = asr.processor(wavs, sampling_rate=16000, return_tensors="pt").input_features
    kw = {"language": language} if language else {}
    with torch.inference_mode():
        ref = asr.model.generate(feats, max_new_tokens=30, task="transcribe", return_dict_in_generate=True,
                                 output_scores=True, **kw)  # fmt: skip
        ref_lp = asr.model.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True)
        gen, lp = asr._generate(feats, language)
    assert gen.tolist() == ref.sequences[:, -ref_lp.shape[1] :].tolist()
    assert torch.allclose(lp, ref_lp, atol=1e-5)
    texts = asr.transcribe(wavs, language)
    assert len(texts) == 2 and all(0.0 < c <= 1.0 for _, c in texts)


def test_whisper_unknown_language_is_a_clear_error(tiny_whisper_dir: Path):
    from voicepipe.models.asr import Asr

    asr = Asr("whisper", tiny_whisper_dir, "cpu", max_new_tokens=5)
    wav = [np.zeros(16000, np.float32) + 0.01]
    assert len(asr.transcribe(wav, "English")) == 1  # a name, as the corpus config writes it
    with pytest.raises(ModelError, match="klingon"):
        asr.transcribe(wav, "klingon")
    with pytest.raises(ModelError, match="<\\|ko\\|>"):  # a real language the tiny model's vocabulary lacks
        asr.transcribe(wav, "korean")
