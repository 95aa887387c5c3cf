"""The one prompt layout of Qwen3-TTS-12Hz custom voices, shared by training, serving and evaluation.

The trainer (`voicepipe.train.data`), the serving engine (`TTSEngine.prepare`) and the evaluator (which synthesizes
through the engine) all build the talker's input with `build_prompt`, so a checkpoint is scored and served on the
prompt it was trained on. The layout is the package's own (`Qwen3TTSForConditionalGeneration.generate`, custom voice,
no voice-clone reference), written as ids and masks instead of embeddings:

    pos:    [instruct]   role(3)   prefill codec tags        [speaker]   pad     | text...        tts_eos   tts_pad
    text:   instruct     role      tts_pad ...               tts_pad     tts_bos | text tokens    tts_eos   tts_pad
    codec:  -            -         nothink think_bos think_eos   SPEAKER    pad     | pad ...        pad       codec_bos

With a language the codec tags are `think think_bos LANGUAGE think_eos` (one position longer, so the speaker slot
moves from 6 to 7). "auto" (no language tag) is what the official fine-tuning recipe trains on. The embedding of a
position is `text_projection(text_embedding(text_id)) * text_mask + codec_embedding(codec_id) * codec_mask`, plus, at
`speaker_pos` when its codec channel is masked off, a speaker vector the caller supplies (the trainer's fp32 centroid;
a saved custom voice carries it as codec row `spk_id[name]`, which is what serving uses). In streaming-text mode only
the first text token is in the prompt and the rest (`trailing_ids`) is added one per generated frame.

The language a checkpoint was trained with is written beside its weights (`voicepipe.json`, see `write_voice_meta`);
evaluation and serving default to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from voicepipe.errors import InputError

VOICE_META = "voicepipe.json"  # written into every checkpoint dir by the trainer: language, corpus version, speaker
AUTO = "auto"


class PromptError(InputError):
    """A prompt that cannot be built for this model (unknown speaker or language, empty text)."""


@dataclass(frozen=True)
class PromptIds:
    """The special ids and the speaker/language tables a prompt needs, read from a model config."""

    tts_pad: int
    tts_bos: int
    tts_eos: int
    codec_pad: int
    codec_bos: int
    codec_eos: int
    codec_think: int
    codec_nothink: int
    codec_think_bos: int
    codec_think_eos: int
    languages: Mapping[str, int]
    speakers: Mapping[str, int]
    dialects: Mapping[str, Any]

    @classmethod
    def from_config(cls, cfg: Any) -> PromptIds:
        """From a `Qwen3TTSConfig` (the network's `.config`)."""
        t = cfg.talker_config
        return cls(
            tts_pad=cfg.tts_pad_token_id, tts_bos=cfg.tts_bos_token_id, tts_eos=cfg.tts_eos_token_id,
            codec_pad=t.codec_pad_id, codec_bos=t.codec_bos_id, codec_eos=t.codec_eos_token_id,
            codec_think=t.codec_think_id, codec_nothink=t.codec_nothink_id, codec_think_bos=t.codec_think_bos_id,
            codec_think_eos=t.codec_think_eos_id, languages=dict(t.codec_language_id or {}),
            speakers=dict(t.spk_id or {}), dialects=dict(t.spk_is_dialect or {}),
        )  # fmt: skip


@dataclass
class PromptLayout:
    """One prompt as ids and masks (1-D, length T); the next position after it holds the first audio frame."""

    text_ids: torch.Tensor  # (T,) long
    text_mask: torch.Tensor  # (T,) bool: the text channel contributes
    codec_ids: torch.Tensor  # (T,) long: the talker's codec channel (codebook 0)
    codec_mask: torch.Tensor  # (T,) bool: the codec channel contributes (False at role/instruct and a vector slot)
    speaker_pos: int | None  # position of the speaker slot, None without a speaker
    trailing_ids: torch.Tensor  # (N,) text ids added one per generated frame (then tts_pad)
    language: str  # "auto" or the language name whose tag is in the prompt (lower-case)

    @property
    def length(self) -> int:
        return int(self.text_ids.shape[0])

    def speaker_mask(self) -> torch.Tensor:
        """(T,) bool, True at a speaker slot whose vector the caller adds (codec channel masked off there)."""
        m = torch.zeros(self.length, dtype=torch.bool)
        if self.speaker_pos is not None and not bool(self.codec_mask[self.speaker_pos]):
            m[self.speaker_pos] = True
        return m


def assistant_ids(processor: Any, text: str) -> torch.Tensor:
    """Role tokens + text tokens (1-D), tokenized as `Qwen3TTSModel` does (its chat frame minus the last 5 tokens)."""
    ids = processor(text=f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    ids = ids["input_ids"]
    ids = ids[0] if ids.dim() == 2 else ids
    return ids[:-5]


def assistant_ids_fast(processor: Any, text: str) -> torch.Tensor | None:
    """`assistant_ids` through the tokenizer's own Rust backend (`tokenizers.Tokenizer.encode`), without the
    processor's and transformers' Python layers around it (about 0.45 of 0.64 ms per call on a 2-core CPU, all of
    it holding the GIL that a server's event loop needs); None when the tokenizer has no such backend. The serving
    engine checks once that both give the same ids before it relies on this one (`TTSEngine._assistant_ids`)."""
    backend = getattr(getattr(processor, "tokenizer", None), "backend_tokenizer", None)
    if backend is None:
        return None
    ids = backend.encode(f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n").ids
    return torch.tensor(ids[:-5], dtype=torch.long)


def instruct_ids(processor: Any, instruct: str) -> torch.Tensor:
    """The instruction's tokens (1-D), as `Qwen3TTSModel` frames them (a user turn)."""
    ids = processor(text=f"<|im_start|>user\n{instruct}<|im_end|>\n", return_tensors="pt")["input_ids"]
    return ids[0] if ids.dim() == 2 else ids


def normalize_language(language: str | None) -> str:
    """Lower-case language name; None or empty means "auto"."""
    return (language or AUTO).strip().lower() or AUTO


def language_tag(ids: PromptIds, language: str | None, speaker: str | None = None) -> int | None:
    """The codec tag id of `language` (None for "auto"), with the package's dialect rule for dialect speakers."""
    lang = normalize_language(language)
    if lang == AUTO:
        tag = None
    elif lang in ids.languages:
        tag = ids.languages[lang]
    else:
        supported = ", ".join([AUTO, *sorted(ids.languages)])
        raise PromptError(f"language {language!r} is not supported by this model (supported: {supported})")
    dialect = ids.dialects.get(speaker.lower(), False) if speaker else False
    if lang in ("chinese", AUTO) and dialect:
        tag = ids.languages[dialect]
    return tag


def build_prompt(ids: PromptIds, text_ids: torch.Tensor, *, speaker: str | None = None, speaker_slot: bool = False,
                 language: str | None = AUTO, instruct: torch.Tensor | None = None,
                 non_streaming_text: bool = True) -> PromptLayout:  # fmt: skip
    """Lay out one prompt (see the module docstring).

    `text_ids`: `assistant_ids(...)` (3 role tokens, then the text). `speaker`: a speaker name of the checkpoint
    (its codec row goes in the slot); `speaker_slot`: an empty slot for a vector the caller adds (training, a
    zero-shot x-vector). `instruct`: `instruct_ids(...)`, prepended on the text channel.
    """
    text_ids = torch.as_tensor(text_ids, dtype=torch.long).reshape(-1).cpu()
    n_text = int(text_ids.shape[0]) - 3
    if n_text < 1:
        raise PromptError("text tokenized to nothing")
    spk_row = None
    if speaker:
        key = speaker.lower()
        if key not in ids.speakers:
            raise PromptError(f"speaker {speaker!r} is not in this checkpoint (has: {sorted(ids.speakers)})")
        spk_row = ids.speakers[key]
    tag = language_tag(ids, language, speaker)
    tags = ([ids.codec_nothink, ids.codec_think_bos, ids.codec_think_eos] if tag is None
            else [ids.codec_think, ids.codec_think_bos, tag, ids.codec_think_eos])  # fmt: skip
    has_slot = spk_row is not None or speaker_slot
    codec_in = [*tags, *([spk_row or 0] if has_slot else []), ids.codec_pad, ids.codec_bos]
    head = len(codec_in) - 1  # codec positions before codec_bos
    text = [*text_ids[:3].tolist(), *[ids.tts_pad] * (head - 1), ids.tts_bos]
    codec = [0, 0, 0, *codec_in[:-1]]
    if non_streaming_text:
        text += [*text_ids[3:].tolist(), ids.tts_eos, ids.tts_pad]
        codec += [ids.codec_pad] * (n_text + 1) + [ids.codec_bos]
        trailing = [ids.tts_pad]
    else:
        text += [int(text_ids[3])]
        codec += [ids.codec_bos]
        trailing = [*text_ids[4:].tolist(), ids.tts_eos]
    codec_mask = [False] * 3 + [True] * (len(codec) - 3)
    speaker_pos = 3 + len(tags) if has_slot else None
    if speaker_pos is not None and spk_row is None:
        codec_mask[speaker_pos] = False
    if instruct is not None and instruct.numel():
        ins = torch.as_tensor(instruct, dtype=torch.long).reshape(-1).cpu().tolist()
        text, codec, codec_mask = ins + text, [0] * len(ins) + codec, [False] * len(ins) + codec_mask
        speaker_pos = None if speaker_pos is None else speaker_pos + len(ins)
    return PromptLayout(
        text_ids=torch.tensor(text, dtype=torch.long), text_mask=torch.ones(len(text), dtype=torch.bool),
        codec_ids=torch.tensor(codec, dtype=torch.long), codec_mask=torch.tensor(codec_mask),
        speaker_pos=speaker_pos, trailing_ids=torch.tensor(trailing, dtype=torch.long),
        language=AUTO if tag is None else normalize_language(language),
    )  # fmt: skip


# ---- what a checkpoint records about its prompt ----------------------------------------------------------------


def write_voice_meta(model_dir: str | Path, **meta: Any) -> Path:
    """Write `voicepipe.json` (language, corpus version, speaker, ...) into a checkpoint dir."""
    path = Path(model_dir) / VOICE_META
    data = {k: v for k, v in meta.items() if v is not None}
    if "language" in data:
        data["language"] = normalize_language(data["language"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_voice_meta(model_dir: str | Path | None) -> dict[str, Any]:
    """`voicepipe.json` of a checkpoint dir, {} when absent, unreadable or `model_dir` is not a local dir."""
    if model_dir is None:
        return {}
    path = Path(model_dir) / VOICE_META
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def trained_language(model_dir: str | Path | None) -> str:
    """The language a checkpoint was trained with ("auto" when it records none: the base model, old checkpoints)."""
    return normalize_language(read_voice_meta(model_dir).get("language"))


def corpus_language(corpus_dir: str | Path) -> str:
    """The corpus's language: `corpus.json`'s `language`, else the training jsonl's `language` field, else "auto"."""
    root = Path(corpus_dir)
    try:
        lang = json.loads((root / "corpus.json").read_text()).get("language")
    except (OSError, json.JSONDecodeError, AttributeError):
        lang = None
    if not lang:
        try:
            with (root / "train_with_codes.jsonl").open(encoding="utf-8") as f:
                first = next((ln for ln in f if ln.strip()), "")
            row = json.loads(first) if first else {}
            lang = row.get("language") if isinstance(row, dict) else None
        except (OSError, json.JSONDecodeError):
            lang = None
    return normalize_language(lang if isinstance(lang, str) else None)


def model_dir_of(tts: Any) -> Path | None:
    """The local directory a loaded `Qwen3TTSModel` came from (None for a hub id or a model built in memory)."""
    net = getattr(tts, "model", tts)
    name = getattr(getattr(net, "config", None), "_name_or_path", None) or getattr(net, "name_or_path", None)
    if name and Path(str(name)).is_dir():
        return Path(str(name))
    return None
