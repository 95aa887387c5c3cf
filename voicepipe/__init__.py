"""voicepipe: podcast feed -> clean single-speaker corpus -> fine-tuned Qwen3-TTS voice -> evaluated -> served."""

__version__ = "0.1.0"

import os as _os

# pyannote.audio 4 sends usage telemetry by default; voicepipe is local and zero-cloud.
_os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
