"""Tiny real Qwen3-TTS: offline load, generation in both modes, and the checkpoint writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from voicepipe.errors import ModelError
from voicepipe.models import SPEAKER_ROW, load_tts, save_tts_checkpoint
from voicepipe.models.tiny import FRAME_SAMPLES, SAMPLE_RATE, voiced_tone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tiny_tts_dir: Path):
    return load_tts(tiny_tts_dir)


def _check_audio(wavs: list[np.ndarray], sr: int, max_frames: int) -> None:
    assert sr == SAMPLE_RATE
    assert len(wavs) == 1
    wav = wavs[0]
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 0 < wav.size <= max_frames * FRAME_SAMPLES and wav.size % FRAME_SAMPLES == 0
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    assert float(np.sqrt(np.mean(wav**2))) > 1e-3  # not silence


def test_hub_is_off_for_tests():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_tiny_base_loads_as_real_classes(base, tiny_tts_dir: Path):
    from qwen_tts import Qwen3TTSModel, Qwen3TTSTokenizer
    from qwen_tts.core.models import Qwen3TTSForConditionalGeneration

    assert isinstance(base, Qwen3TTSModel)
    assert isinstance(base.model, Qwen3TTSForConditionalGeneration)
    assert isinstance(base.model.speech_tokenizer, Qwen3TTSTokenizer)
    assert base.model.tts_model_type == "base" and base.model.speaker_encoder is not None
    cfg = base.model.config
    assert cfg.talker_config.vocab_size == 3072 and cfg.talker_config.num_code_groups == 16
    assert base.model.speech_tokenizer.model.config.encoder_valid_num_quantizers == 16
    assert "_name_or_path" not in json.loads((tiny_tts_dir / "config.json").read_text())


def test_voice_clone_generates_24k_audio(base):
    ref = voiced_tone(1.5, seed=1)
    torch.manual_seed(0)
    wavs, sr = base.generate_voice_clone(
        text="Hello there.", language="english", ref_audio=(ref, SAMPLE_RATE), x_vector_only_mode=True, max_new_tokens=8
    )
    _check_audio(wavs, sr, 8)
    torch.manual_seed(0)
    wavs, sr = base.generate_voice_clone(
        text="Hello there.", language="english", ref_audio=(ref, SAMPLE_RATE), ref_text="A test.", max_new_tokens=8
    )
    _check_audio(wavs, sr, 8)


def test_custom_voice_checkpoint_generates(tiny_custom_voice_dir: Path):
    tts = load_tts(tiny_custom_voice_dir)
    assert tts.model.tts_model_type == "custom_voice"
    assert tts.model.speaker_encoder is None
    torch.manual_seed(0)
    wavs, sr = tts.generate_custom_voice(text="Hi there.", language="english", speaker="Alice", max_new_tokens=8)
    _check_audio(wavs, sr, 8)
    with pytest.raises(ValueError, match="bob"):
        tts.generate_custom_voice(text="Hi.", language="english", speaker="bob", max_new_tokens=2)


def test_save_checkpoint_writes_speaker_row_and_reloads(base, tiny_tts_dir: Path, tmp_path: Path):
    emb = torch.randn(base.model.config.talker_config.hidden_size)
    before = base.model.talker.model.codec_embedding.weight[SPEAKER_ROW].clone()
    out = save_tts_checkpoint(
        base, tmp_path / "epoch-001", base_dir=tiny_tts_dir, speaker="Will", speaker_embedding=emb
    )
    assert out == tmp_path / "epoch-001" and not list(tmp_path.glob(".*tmp*"))
    # the live model is untouched
    assert torch.equal(base.model.talker.model.codec_embedding.weight[SPEAKER_ROW], before)

    cfg = json.loads((out / "config.json").read_text())
    assert "_name_or_path" not in cfg
    assert cfg["tts_model_type"] == "custom_voice"
    assert cfg["talker_config"]["spk_id"] == {"will": SPEAKER_ROW}
    assert cfg["talker_config"]["spk_is_dialect"] == {"will": False}
    for f in ("generation_config.json", "tokenizer.json", "processor_config.json", "speech_tokenizer/config.json"):
        assert (out / f).is_file(), f
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        row = f.get_tensor("talker.model.codec_embedding.weight")[SPEAKER_ROW]
    assert torch.equal(row, emb)
    assert not any(k.startswith("speaker_encoder.") for k in keys)

    tts = load_tts(out)
    assert torch.equal(tts.model.talker.model.codec_embedding.weight[SPEAKER_ROW], emb)
    torch.manual_seed(0)
    wavs, sr = tts.generate_custom_voice(text="Hi.", language="english", speaker="WILL", max_new_tokens=4)
    _check_audio(wavs, sr, 4)


def test_save_checkpoint_without_speaker_keeps_base(base, tiny_tts_dir: Path, tmp_path: Path):
    # a base dir whose config carries a hub slug (the seed's failure) still yields a clean, reloadable checkpoint
    slugged = tmp_path / "base"
    import shutil

    shutil.copytree(tiny_tts_dir, slugged)
    cfg = json.loads((slugged / "config.json").read_text())
    cfg["_name_or_path"] = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    (slugged / "config.json").write_text(json.dumps(cfg))
    out = save_tts_checkpoint(base.model, tmp_path / "plain", base_dir=slugged)
    saved = json.loads((out / "config.json").read_text())
    assert "_name_or_path" not in saved and saved["tts_model_type"] == "base"
    tts = load_tts(out)
    assert tts.model.speaker_encoder is not None
    for k, v in base.model.state_dict().items():
        assert torch.equal(tts.model.state_dict()[k], v), k


def test_resaving_custom_voice_keeps_speaker(tiny_custom_voice_dir: Path, tmp_path: Path):
    tts = load_tts(tiny_custom_voice_dir)
    out = save_tts_checkpoint(tts, tmp_path / "again", base_dir=tiny_custom_voice_dir)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tts_model_type"] == "custom_voice" and cfg["talker_config"]["spk_id"] == {"alice": SPEAKER_ROW}
    assert load_tts(out).model.get_supported_speakers() == tts.model.get_supported_speakers()


def test_save_checkpoint_rejects_bad_input(base, tiny_tts_dir: Path, tmp_path: Path):
    with pytest.raises(ModelError, match="speaker_embedding: shape"):
        save_tts_checkpoint(base, tmp_path / "x", base_dir=tiny_tts_dir, speaker="a", speaker_embedding=torch.ones(7))
    with pytest.raises(ModelError, match="base_dir"):
        save_tts_checkpoint(base, tmp_path / "x", base_dir=tmp_path / "nope")
    with pytest.raises(ModelError, match="both"):
        save_tts_checkpoint(base, tmp_path / "x", base_dir=tiny_tts_dir, speaker="a")
    assert not (tmp_path / "x").exists()


def test_load_tts_missing_dir_is_model_error(tmp_path: Path):
    with pytest.raises(ModelError, match=str(tmp_path / "missing")):
        load_tts(tmp_path / "missing")


def test_save_checkpoint_bf16_and_wrapped(tiny_tts_dir: Path, tmp_path: Path):
    import types

    net = load_tts(tiny_tts_dir, dtype=torch.bfloat16).model
    emb = torch.randn(net.config.talker_config.hidden_size)
    wrapped = types.SimpleNamespace(module=net)  # as accelerate/DDP hand it over
    out = save_tts_checkpoint(wrapped, tmp_path / "bf16", base_dir=tiny_tts_dir, speaker="x", speaker_embedding=emb)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w = f.get_tensor("talker.model.codec_embedding.weight")
    assert w.dtype == torch.bfloat16 and torch.equal(w[SPEAKER_ROW], emb.to(torch.bfloat16))
    tts = load_tts(out, dtype=torch.bfloat16)
    assert tts.model.talker.model.codec_embedding.weight.dtype == torch.bfloat16


def test_speaker_row_drives_custom_voice_generation(base, tiny_tts_dir: Path, tmp_path: Path):
    """Greedy generation reads the speaker's row 3000: same embedding -> same audio, another -> different audio."""
    hidden = base.model.config.talker_config.hidden_size
    embs = {"a": torch.randn(hidden, generator=torch.Generator().manual_seed(1)) * 2,
            "b": torch.randn(hidden, generator=torch.Generator().manual_seed(2)) * 2}  # fmt: skip
    wavs = {}
    for key, emb in [("a", embs["a"]), ("a2", embs["a"]), ("b", embs["b"])]:
        out = save_tts_checkpoint(base, tmp_path / key, base_dir=tiny_tts_dir, speaker="s", speaker_embedding=emb)
        tts = load_tts(out)
        w, _ = tts.generate_custom_voice(
            text="Hi there.", language="english", speaker="s", max_new_tokens=6, do_sample=False,
            subtalker_dosample=False,
        )  # fmt: skip
        wavs[key] = w[0]
    assert np.array_equal(wavs["a"], wavs["a2"])
    assert wavs["a"].shape != wavs["b"].shape or not np.allclose(wavs["a"], wavs["b"])
