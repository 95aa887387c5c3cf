"""resolve_model: local dirs, models_dir lookup, hub ids honouring the offline switch, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicepipe.config import load_settings
from voicepipe.errors import ModelError
from voicepipe.models import resolve_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(tmp_path: Path):
    return load_settings(offline=True, models_dir=tmp_path / "models")


def test_missing_dir_names_the_input(offline, tmp_path: Path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelError) as e:
        resolve_model("tts", missing, offline)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)


def test_hub_id_offline_says_how_to_provide_files(offline, tmp_path: Path):
    with pytest.raises(ModelError) as e:
        resolve_model("tts", "Qwen/Qwen3-TTS-12Hz-1.7B-Base", offline)
    msg = str(e.value)
    assert msg.startswith("tts model Qwen/Qwen3-TTS-12Hz-1.7B-Base: not a local directory and not available offline")
    assert "huggingface-cli download Qwen/Qwen3-TTS-12Hz-1.7B-Base --local-dir" in msg
    assert "VOICEPIPE_MODELS_DIR" in msg and "\n" not in msg


def test_default_name_per_kind(offline):
    with pytest.raises(ModelError, match="Qwen/Qwen3-TTS-Tokenizer-12Hz"):
        resolve_model("codec", None, offline)
    assert resolve_model("speaker_encoder", None, offline) == "resemblyzer"


def test_hub_id_online_is_returned_as_is(tmp_path: Path):
    online = load_settings(offline=False, models_dir=tmp_path)
    assert resolve_model("asr", "openai/whisper-large-v3", online) == "openai/whisper-large-v3"


def test_models_dir_lookup(offline, tiny_tts_dir: Path):
    import shutil

    shutil.copytree(tiny_tts_dir, offline.models_dir / "Qwen3-TTS-12Hz-1.7B-Base")
    got = resolve_model("tts", "Qwen/Qwen3-TTS-12Hz-1.7B-Base", offline)
    assert got == (offline.models_dir / "Qwen3-TTS-12Hz-1.7B-Base").resolve()
    assert resolve_model("tts", got, offline) == got  # a local path resolves to itself


def test_local_dir_missing_required_files(offline, tmp_path: Path):
    d = tmp_path / "half"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no speech_tokenizer/config.json"):
        resolve_model("tts", d, offline)


def test_unknown_kind(offline):
    with pytest.raises(ModelError, match="unknown"):
        resolve_model("vocoder", "x", offline)
