"""Qwen3-TTS-12Hz: load a model (base or fine-tuned), load the codec, write a self-contained checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicepipe.errors import ModelError
from voicepipe.models.compat import apply_compat, repair_config_dict
from voicepipe.models.resolve import resolve_model

SPEAKER_ROW = 3000  # the codec-embedding row the official recipe gives a fine-tuned speaker
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SKIP_COPY = {".cache", ".git", ".gitattributes"}  # plus, at the top level: config.json and weight files


def _device(device: str | torch.device | None) -> str:
    device = str(device or "cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


def load_tts(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    settings: Any = None,
) -> Any:
    """Load a Qwen3-TTS model dir (or hub id when online) as `qwen_tts.Qwen3TTSModel` (`.model` is the network).

    A local directory never touches the hub (`local_files_only`).
    """
    apply_compat()
    from qwen_tts import Qwen3TTSModel

    where = resolve_model("tts", path, settings)
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn_implementation)
    dev = _device(device)
    if dev != "cpu":
        kwargs["device_map"] = dev
    if isinstance(where, Path):
        kwargs["local_files_only"] = True
    try:
        return Qwen3TTSModel.from_pretrained(str(where), **kwargs)
    except Exception as e:
        raise ModelError(f"tts model {path or where}: failed to load ({_first_line(e)})") from e


def load_codec(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    settings: Any = None,
) -> Any:
    """Load the 12 Hz speech tokenizer as `qwen_tts.Qwen3TTSTokenizer` (`.encode(...)`, `.decode(...)`).

    `path` may be the codec dir itself or a TTS model dir holding `speech_tokenizer/`.
    """
    apply_compat()
    from qwen_tts import Qwen3TTSTokenizer

    try:
        where = resolve_model("codec", path, settings)
    except ModelError:
        if path is not None:
            raise
        try:  # no separate codec download: use the codec the base TTS model ships in speech_tokenizer/
            tts_dir = resolve_model("tts", None, settings)
        except ModelError:
            tts_dir = None
        if not isinstance(tts_dir, Path):
            raise
        where = tts_dir / "speech_tokenizer"
    kwargs: dict[str, Any] = dict(dtype=dtype)
    dev = _device(device)
    if dev != "cpu":
        kwargs["device_map"] = dev
    try:
        return Qwen3TTSTokenizer.from_pretrained(str(where), **kwargs)
    except Exception as e:
        raise ModelError(f"codec model {path or where}: failed to load ({_first_line(e)})") from e


def _network(model: Any) -> torch.nn.Module:
    """The Qwen3TTSForConditionalGeneration inside a Qwen3TTSModel wrapper / DDP / torch.compile wrapper."""
    net = model
    for _ in range(4):
        if hasattr(net, "talker"):
            return net
        net = getattr(net, "model", None) or getattr(net, "module", None) or getattr(net, "_orig_mod", None)
        if net is None:
            break
    raise ModelError(f"save_tts_checkpoint: {type(model).__name__} is not a Qwen3-TTS model")


def _as_embedding(speaker_embedding: Any, hidden: int) -> torch.Tensor:
    emb = torch.as_tensor(np.asarray(speaker_embedding.detach().float().cpu() if torch.is_tensor(speaker_embedding)
                                     else speaker_embedding, dtype=np.float32))  # fmt: skip
    emb = emb.reshape(-1) if emb.dim() == 2 and emb.shape[0] == 1 else emb
    if emb.shape != (hidden,):
        raise ModelError(f"speaker_embedding: shape {tuple(emb.shape)}, expected ({hidden},) (the talker hidden size)")
    if not torch.isfinite(emb).all():
        raise ModelError("speaker_embedding: contains NaN or inf")
    return emb


def save_tts_checkpoint(
    model: Any,
    out_dir: str | Path,
    *,
    base_dir: str | Path,
    speaker: str | None = None,
    speaker_embedding: Any = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained Qwen3-TTS checkpoint dir; the only writer of checkpoints in voicepipe.

    Files: `model.safetensors` (the model's weights), `config.json` (from `base_dir`, repaired for transformers 5,
    no `_name_or_path`), and everything else from `base_dir` (generation config, text tokenizer + processor files,
    `speech_tokenizer/`). With `speaker`, as the official recipe (`finetuning/sft_12hz.py`) does: the embedding goes
    into row 3000 of `talker.model.codec_embedding.weight`, `tts_model_type` becomes `custom_voice`,
    `talker_config.spk_id = {speaker: 3000}`, `spk_is_dialect = {speaker: false}` (name lower-cased: generation looks
    it up that way), and the `speaker_encoder.*` weights are dropped (a custom-voice model builds no speaker
    encoder). `meta` (the trained prompt's language, the corpus version, ...) goes to `voicepipe.json`
    (`voicepipe.models.prompt`). The dir is written next to `out_dir` and renamed into place, so a reader never sees
    half of it.
    """
    net = _network(model)
    base = Path(base_dir)
    if not (base / "config.json").is_file() or not (base / "speech_tokenizer").is_dir():
        raise ModelError(f"base_dir {base_dir}: not a local Qwen3-TTS model dir (needs config.json, speech_tokenizer/)")
    if (speaker is None) != (speaker_embedding is None):
        raise ModelError("save_tts_checkpoint: give both speaker and speaker_embedding, or neither")
    talker_cfg = net.config.talker_config
    config = json.loads((base / "config.json").read_text())
    rope = talker_cfg.rope_scaling if isinstance(talker_cfg.rope_scaling, dict) else None
    config = repair_config_dict(config, rope if rope and "mrope_section" in rope else None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    talker = config["talker_config"]
    if speaker is not None:
        name = str(speaker).strip().lower()
        if not name or any(c in name for c in "\n\r\t"):
            raise ModelError(f"speaker {speaker!r}: empty or not a one-line name")
        key = "talker.model.codec_embedding.weight"
        weight = state[key].clone()
        if weight.shape[0] <= SPEAKER_ROW:
            raise ModelError(f"save_tts_checkpoint: codec vocab {weight.shape[0]} has no row {SPEAKER_ROW}")
        weight[SPEAKER_ROW] = _as_embedding(speaker_embedding, weight.shape[1]).to(weight.dtype)
        state[key] = weight
        config["tts_model_type"] = "custom_voice"
        talker["spk_id"] = {name: SPEAKER_ROW}
        talker["spk_is_dialect"] = {name: False}
    elif net.config.tts_model_type != config.get("tts_model_type"):  # re-saving a fine-tuned model
        config["tts_model_type"] = net.config.tts_model_type
        talker["spk_id"] = dict(talker_cfg.spk_id or {})
        talker["spk_is_dialect"] = dict(talker_cfg.spk_is_dialect or {})
    if config.get("tts_model_type") != "base":
        state = {k: v for k, v in state.items() if not k.startswith("speaker_encoder.")}

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)

    def ignore(d: str, names: list[str]) -> set[str]:
        top = Path(d) == base
        weights = {n for n in names if n == "config.json" or n.endswith(_WEIGHT_SUFFIXES) or n.endswith(".index.json")}
        return {n for n in names if n in _SKIP_COPY} | (weights if top else set())

    try:
        shutil.copytree(base, tmp, ignore=ignore)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if meta is not None:
            from voicepipe.models.prompt import write_voice_meta

            write_voice_meta(tmp, **({"speaker": name} if speaker is not None else {}), **meta)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
