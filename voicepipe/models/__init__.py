"""voicepipe.models: find, load and save every model the pipeline uses (see `tiny` for test-sized real models)."""

import os

from voicepipe.models.asr import Asr
from voicepipe.models.compat import apply_compat, repair_config_dict
from voicepipe.models.others import (
    disable_pyannote_telemetry,
    load_asr,
    load_demucs,
    load_diarization,
    load_segmentation,
)
from voicepipe.models.qwen import SPEAKER_ROW, load_codec, load_tts, save_tts_checkpoint
from voicepipe.models.resolve import KINDS, resolve_model
from voicepipe.models.speaker import (
    PROFILES as SPEAKER_PROFILES,
)
from voicepipe.models.speaker import (
    SpeakerEncoder,
    SpeakerModelInfo,
    choose_speaker_model,
    load_speaker_encoder,
)

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")  # zero-cloud: no pyannote usage metrics

__all__ = [
    "Asr",
    "KINDS",
    "SPEAKER_PROFILES",
    "SPEAKER_ROW",
    "SpeakerEncoder",
    "SpeakerModelInfo",
    "apply_compat",
    "choose_speaker_model",
    "disable_pyannote_telemetry",
    "load_asr",
    "load_codec",
    "load_demucs",
    "load_diarization",
    "load_segmentation",
    "load_speaker_encoder",
    "load_tts",
    "repair_config_dict",
    "resolve_model",
    "save_tts_checkpoint",
]
