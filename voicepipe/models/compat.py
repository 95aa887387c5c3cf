"""Compatibility fixes for qwen-tts-hf 0.1.1.post1 on transformers 5.17 — all of them, in one place.

Each fix is reproduced by a test in `tests/test_models_compat.py` that fails without it:

1. RoPE init. `qwen_tts` registers a `"default"` entry in transformers' `ROPE_INIT_FUNCTIONS` that reads
   `config.rope_theta`. transformers 5 lets that registry entry override the model's own default initializer when it
   (re)initializes rotary buffers, and `MimiConfig` (the 12 Hz codec's encoder) keeps theta only in
   `rope_parameters` -> building the codec raises `AttributeError: 'MimiConfig' object has no attribute 'rope_theta'`.
   Fix: replace that registry entry with one that reads theta from either place.
2. Tied weights. The talker and code predictor declare `_tied_weights_keys = ["lm_head.weight"]` (a list, the v4
   form); transformers 5 expects a dict `{target: source}` and `save_pretrained` crashes. Nothing is tied in these
   models (`tie_word_embeddings=False`, and the code predictor's `lm_head` is a ModuleList), so `{}` is right.
3. Saved config. On a loaded model, transformers 5's `config.to_dict()` puts keys (`dtype`, `model_type`) into
   `speaker_encoder_config` that its config class does not accept (it takes no `**kwargs`) and writes the talker's
   `rope_scaling` as null (folded into `rope_parameters`), while the MRoPE attention reads
   `rope_scaling["mrope_section"]`: such a config.json does not reload. `repair_config_dict` fixes a config dict;
   `save_tts_checkpoint` always applies it. (`save_pretrained` of a *loaded* model even crashes, `KeyError: 'dtype'`,
   in the config diff against that kwargs-less sub-config; `save_tts_checkpoint` writes weights with safetensors and
   the config from the base dir, so it never goes through that path.)

`import qwen_tts` pulls in torchaudio (through the 25 Hz tokenizer's `torchaudio.compliance.kaldi`). Here
torchaudio is installed in pure-Python mode and that import works, so no stand-in is needed; `import_qwen_tts`
turns a failure into a `ModelError` that says what is wrong.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from typing import Any

import torch

from voicepipe.errors import ModelError

_APPLIED = False


def import_qwen_tts() -> Any:
    """Import and return the `qwen_tts` package, with a clear error if it (or torchaudio) cannot load."""
    try:
        # its 25 Hz tokenizer prints a flash-attn banner on import (to stdout, on every run); voicepipe uses the
        # 12 Hz path, which never calls flash-attn: keep the banner out of the run logs
        with contextlib.redirect_stdout(io.StringIO()):
            import qwen_tts
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError(
            f"qwen_tts: cannot import ({e}); install with `pip install --no-deps qwen-tts-hf==0.1.1.post1` "
            "and a torchaudio matching torch"
        ) from None
    return qwen_tts


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta")
    if theta is None:
        raise AttributeError(f"{type(config).__name__} has neither rope_theta nor rope_parameters['rope_theta']")
    return float(theta)


def _default_rope_parameters(
    config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None
) -> tuple[torch.Tensor, float]:
    """Unscaled RoPE inverse frequencies; theta from `config.rope_theta` or `config.rope_parameters`."""
    del seq_len, layer_type
    params = getattr(config, "rope_parameters", None) or {}
    partial = getattr(config, "partial_rotary_factor", None) or params.get("partial_rotary_factor") or 1.0
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * partial)
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (_rope_theta(config) ** exponent), 1.0


def fix_rope_init() -> None:
    """Fix 1: a `"default"` RoPE initializer that also reads theta from `config.rope_parameters`."""
    import_qwen_tts()  # registers qwen_tts' own "default" entry, which this replaces
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ROPE_INIT_FUNCTIONS["default"] = _default_rope_parameters


def fix_tied_weights_keys() -> None:
    """Fix 2: `_tied_weights_keys` as the dict transformers 5 expects (nothing is tied)."""
    from qwen_tts.core.models import modeling_qwen3_tts as m

    for cls in (m.Qwen3TTSTalkerForConditionalGeneration, m.Qwen3TTSTalkerCodePredictorModelForConditionalGeneration):
        if isinstance(cls.__dict__.get("_tied_weights_keys"), list):
            cls._tied_weights_keys = {}


def apply_compat() -> None:
    """Apply the qwen-tts-hf / transformers 5.17 fixes 1 and 2 (idempotent; the loaders call it).

    Fix 3 is `repair_config_dict`, applied to every config.json voicepipe writes.
    """
    global _APPLIED
    if _APPLIED:
        return
    fix_rope_init()
    fix_tied_weights_keys()
    quiet_known_noise()
    _APPLIED = True


class _DropMropeKeys(logging.Filter):
    """Drops transformers' "Unrecognized keys in `rope_parameters` … {'mrope_section', 'interleaved'}": the talker's
    MRoPE attention reads those keys itself (they are right, not unrecognized)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Unrecognized keys in `rope_parameters`" in msg and "mrope_section" in msg)


def quiet_known_noise() -> None:
    """Silence the warnings every Qwen3-TTS run printed that say nothing about the run (issue 16): the rope keys
    above, and generate's `repetition_penalty` UserWarning: Qwen3-TTS generates from `inputs_embeds` by design, so
    the penalty applies to generated codec tokens only, which is what its generation config intends."""
    logging.getLogger("transformers.modeling_rope_utils").addFilter(_DropMropeKeys())
    warnings.filterwarnings("ignore", message=r"Passing `repetition_penalty` with `inputs_embeds`",
                            category=UserWarning)


def _init_params(cls: type) -> set[str] | None:
    """Names `cls.__init__` accepts, or None when it takes **kwargs (anything goes)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n != "self"}


def repair_config_dict(config: dict[str, Any], rope_scaling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fix 3: make a Qwen3-TTS `config.json` dict loadable by qwen-tts-hf on transformers 5.17 (returns a copy).

    - drops keys `Qwen3TTSSpeakerEncoderConfig.__init__` does not accept;
    - restores `talker_config.rope_scaling` (with `mrope_section`) from `rope_scaling` if given, else from the talker's
      `rope_parameters` when that holds the MRoPE fields; raises ModelError if neither has them;
    - drops `_name_or_path` (a hub slug there made the seed's checkpoints try the hub).
    """
    import_qwen_tts()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig

    out = dict(config)
    out.pop("_name_or_path", None)
    spk = out.get("speaker_encoder_config")
    allowed = _init_params(Qwen3TTSSpeakerEncoderConfig)
    if isinstance(spk, dict) and allowed is not None:
        out["speaker_encoder_config"] = {k: v for k, v in spk.items() if k in allowed}
    talker = dict(out.get("talker_config") or {})
    current = talker.get("rope_scaling")
    if not (isinstance(current, dict) and "mrope_section" in current):
        source = rope_scaling
        if source is None:
            params = talker.get("rope_parameters")
            source = params if isinstance(params, dict) and "mrope_section" in params else None
        if source is None:
            raise ModelError(
                "config.json: talker_config.rope_scaling lacks mrope_section and nothing to restore it from"
            )
        talker["rope_scaling"] = dict(source)
    talker.pop("_name_or_path", None)
    out["talker_config"] = talker
    return out
