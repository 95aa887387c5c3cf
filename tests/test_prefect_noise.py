"""A run's log says things about the run: loading and sampling a Qwen3-TTS model prints none of the three lines every
run used to print (flash-attn banner, rope_parameters keys, generate's repetition_penalty UserWarning)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.prefect import REPO

SCRIPT = """
import sys, numpy as np
from voicepipe.models import load_tts
from voicepipe.evaluate.synth import synthesize
tts = load_tts(sys.argv[1], device="cpu")
ref = (0.01 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
clone = tts.create_voice_clone_prompt(ref_audio=(ref, 24000), ref_text=None, x_vector_only_mode=True)
s = synthesize(tts, "Hello there.", clone_prompt=clone, seed=1, max_new_tokens=6)
print("SYNTHESIZED")
"""


def test_loading_and_sampling_a_model_prints_no_known_noise(tiny_tts_dir: Path) -> None:
    p = subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT, str(tiny_tts_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "SYNTHESIZED" in p.stdout, out[-3000:]
    for noise in ("flash-attn is not installed", "Unrecognized keys in `rope_parameters`",
                  "Passing `repetition_penalty` with `inputs_embeds`"):
        assert noise not in out, noise
