"""voicepipe.models: find, load and save every model the pipeline uses (see `tiny` for test-sized real models)."""

from voicepipe.models.compat import apply_compat, repair_config_dict
from voicepipe.models.qwen import SPEAKER_ROW, load_codec, load_tts, save_tts_checkpoint
from voicepipe.models.resolve import KINDS, resolve_model
from voicepipe.models.speaker import SpeakerEncoder, load_speaker_encoder

__all__ = [
    "KINDS",
    "SPEAKER_ROW",
    "SpeakerEncoder",
    "apply_compat",
    "load_codec",
    "load_speaker_encoder",
    "load_tts",
    "repair_config_dict",
    "resolve_model",
    "save_tts_checkpoint",
]
