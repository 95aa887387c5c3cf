"""Each qwen-tts-hf / transformers 5.17 fix is needed: reproduce the failure without it, then pass with it.

Fixes 1 and 2 patch process-wide state, so their "without" half runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicepipe.errors import ModelError
from voicepipe.models import apply_compat, load_tts, repair_config_dict, save_tts_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


# One fresh interpreter: each step first shows the failure without its fix, then applies the fix and succeeds.
SCRIPT = """
import tempfile
import qwen_tts
from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration
from voicepipe.models.compat import fix_rope_init, fix_tied_weights_keys
from voicepipe.models.tiny import TEXT_SPECIAL_TOKENS, _codec_config, _tts_config

def build_codec():
    Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**_codec_config()))

def save_model():
    cfg = _tts_config(64, {t: 50 + i for i, t in enumerate(TEXT_SPECIAL_TOKENS)})
    Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg)).save_pretrained(tempfile.mkdtemp())

for name, step, fix in (("rope", build_codec, fix_rope_init), ("tied", save_model, fix_tied_weights_keys)):
    try:
        step()
        print(name, "WITHOUT-FIX-OK")
    except Exception as e:
        print(name, "WITHOUT-FIX-FAILS", type(e).__name__, str(e).splitlines()[0][:200])
    fix()
    step()
    print(name, "WITH-FIX-OK")
"""


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    home = tmp_path_factory.mktemp("home")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(home), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_fix1_rope_init_needed_for_mimi_codec(fresh_run: str):
    assert "rope WITHOUT-FIX-FAILS AttributeError 'MimiConfig' object has no attribute 'rope_theta'" in fresh_run
    assert "rope WITH-FIX-OK" in fresh_run


def test_fix2_tied_weights_keys_needed_for_save(fresh_run: str):
    assert "tied WITHOUT-FIX-FAILS AttributeError 'list' object has no attribute 'keys'" in fresh_run
    assert "tied WITH-FIX-OK" in fresh_run


def test_apply_compat_is_idempotent():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    apply_compat()
    first = ROPE_INIT_FUNCTIONS["default"]
    apply_compat()
    assert ROPE_INIT_FUNCTIONS["default"] is first


def test_fix3_config_from_loaded_model_needs_repair(tiny_tts_dir: Path, tmp_path: Path):
    tts = load_tts(tiny_tts_dir)
    raw = tts.model.config.to_dict()  # what transformers 5 would write for a loaded model
    assert "dtype" in raw["speaker_encoder_config"] and raw["talker_config"].get("rope_scaling") is None

    broken = tmp_path / "broken"
    shutil.copytree(tiny_tts_dir, broken)
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="failed to load"):
        load_tts(broken)

    repaired = repair_config_dict(raw)
    assert "_name_or_path" not in repaired
    assert repaired["talker_config"]["rope_scaling"]["mrope_section"] == [4, 2, 2]
    # save_tts_checkpoint repairs whatever config.json its base dir holds
    (broken / "config.json").write_text(json.dumps(raw))
    out = save_tts_checkpoint(tts, tmp_path / "ckpt", base_dir=broken)
    assert load_tts(out).model.config.talker_config.rope_scaling["mrope_section"] == [4, 2, 2]
    (broken / "config.json").write_text(json.dumps(repaired))
    assert load_tts(broken).model.config.talker_config.rope_scaling["mrope_section"] == [4, 2, 2]


def test_repair_without_mrope_source_is_clear_error():
    with pytest.raises(ModelError, match="mrope_section"):
        repair_config_dict({"talker_config": {"rope_scaling": None}, "speaker_encoder_config": {}})


def test_torchaudio_imports_in_pure_python_mode():
    import torch
    import torchaudio.compliance.kaldi  # noqa: F401  (qwen_tts imports it through the 25 Hz tokenizer)
    import torchaudio.functional as F

    assert F.resample(torch.zeros(1, 480), 48000, 24000).shape == (1, 240)
