"""Corpus -> training sequences, validated before any training starts.

Reads the official recipe's jsonl format (`audio`, `text`, `ref_audio`, `audio_codes` = frames x 16 ints) and lays
each utterance out with `voicepipe.models.prompt.build_prompt`, the one layout serving and evaluation use too, then
the audio frames and the codec eos. Without a language ("auto", what the official recipe trains on):

    pos:    0..2        3        4          5          6        7        8..8+N-1   8+N      8+N+1      frames.. eos
    text:   role(3)     pad      pad        pad        pad      bos      text       tts_eos  tts_pad    tts_pad
    codec:  -           nothink  think_bos  think_eos  SPEAKER  pad      pad        pad      codec_bos  c0[t]    eos

With a corpus language the codec tags are `think think_bos LANG think_eos` and everything after moves by one (the
speaker slot is `Sequence.speaker_mask`). `labels[p]` is the codebook-0 token that sits at position p (frames and the
final eos), -100 elsewhere: UNSHIFTED. The loss shifts once: the talker's output at p predicts labels[p+1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from voicepipe.errors import InputError
from voicepipe.models.prompt import AUTO, PromptIds, assistant_ids, build_prompt

TRAIN_FILE = "train_with_codes.jsonl"
VAL_FILE = "val_with_codes.jsonl"
IGNORE = -100


@dataclass
class Utterance:
    """One corpus line, validated."""

    text: str
    codes: torch.Tensor  # (frames, num_code_groups) long
    audio: Path | None
    ref_audio: Path | None
    line: int


@dataclass
class Sequence:
    """One utterance laid out as the talker's input (unpadded)."""

    text_ids: torch.Tensor  # (T,)
    text_mask: torch.Tensor  # (T,) bool: text channel present
    codec_ids: torch.Tensor  # (T, G): column 0 = talker codec channel, 1..G-1 = residual codebooks at frames
    codec_mask: torch.Tensor  # (T,) bool: talker codec channel present (False at 0..2 and the speaker slot)
    frame_mask: torch.Tensor  # (T,) bool: positions holding an audio frame
    labels: torch.Tensor  # (T,) codebook-0 targets, unshifted, IGNORE elsewhere
    speaker_mask: torch.Tensor  # (T,) bool: the speaker slot (the speaker vector is added there)

    @property
    def length(self) -> int:
        return int(self.text_ids.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.frame_mask.sum())


@dataclass
class Batch:
    """Right-padded micro-batch (padding sits after every real token, so a causal mask alone is exact)."""

    text_ids: torch.Tensor  # (B, T)
    text_mask: torch.Tensor
    codec_ids: torch.Tensor  # (B, T, G)
    codec_mask: torch.Tensor
    frame_mask: torch.Tensor
    labels: torch.Tensor
    speaker_mask: torch.Tensor
    lengths: torch.Tensor  # (B,)
    frame_idx: torch.Tensor  # flat indices into (B, T-1) of positions q-1 whose successor q is a frame
    n_labels: int  # codebook-0 targets in the batch (frames + eos)
    n_frames: int  # frames in the batch (each has G-1 residual targets)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            **{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        )


# ----------------------------------------------------------------------------------------------------------------
# validation


def read_base_config(base_dir: Path) -> dict[str, Any]:
    """config.json of a Qwen3-TTS 12 Hz model directory, or InputError saying why it is not one."""
    cfg_path = Path(base_dir) / "config.json"
    if not Path(base_dir).is_dir():
        raise InputError(f"base model {base_dir}: not a directory")
    if not cfg_path.exists():
        raise InputError(f"base model {base_dir}: no config.json (not a Qwen3-TTS model directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"base model {base_dir}: config.json unreadable ({e})") from None
    if cfg.get("model_type") != "qwen3_tts" or "talker_config" not in cfg:
        raise InputError(
            f"base model {base_dir}: model_type is {cfg.get('model_type')!r}, not a Qwen3-TTS model ('qwen3_tts')"
        )
    if cfg.get("tokenizer_type") not in (None, "qwen3_tts_tokenizer_12hz"):
        raise InputError(f"base model {base_dir}: tokenizer_type {cfg.get('tokenizer_type')!r} is not the 12 Hz codec")
    if cfg.get("tts_model_type", "base") != "base":
        raise InputError(
            f"base model {base_dir}: tts_model_type is {cfg.get('tts_model_type')!r}; fine-tuning needs a Base model "
            "(it carries the speaker encoder)"
        )
    if not any(Path(base_dir).glob("*.safetensors")):
        raise InputError(f"base model {base_dir}: no *.safetensors weights")
    return cfg


def _resolve(path: str | None, root: Path) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else (root / p)


def read_split(corpus_dir: Path, name: str, *, num_groups: int, codebook_size: int, need_ref: bool) -> list[Utterance]:
    """Parse and validate one jsonl split; every problem is an InputError naming file, line and reason."""
    path = Path(corpus_dir) / name
    if not path.exists():
        raise InputError(f"corpus {corpus_dir}: {name} is missing")
    out: list[Utterance] = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        where = f"corpus {path}:{i}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: missing or empty 'text'")
        if "audio_codes" not in row:
            raise InputError(f"{where}: missing 'audio_codes' (run the corpus stage's codec encoding first)")
        try:
            codes = torch.tensor(row["audio_codes"], dtype=torch.long)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: 'audio_codes' is not a list of integer frames ({e})") from None
        if codes.ndim != 2 or codes.shape[0] == 0:
            shape = tuple(codes.shape)
            raise InputError(f"{where}: 'audio_codes' must be a non-empty list of frames, got shape {shape}")
        if codes.shape[1] != num_groups:
            raise InputError(
                f"{where}: 'audio_codes' frames have {codes.shape[1]} codebooks, the base model expects {num_groups}"
            )
        if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
            raise InputError(f"{where}: 'audio_codes' values outside [0, {codebook_size})")
        audio = _resolve(row.get("audio"), corpus_dir)
        ref = _resolve(row.get("ref_audio"), corpus_dir)
        if need_ref and (ref is None or not ref.exists()):
            raise InputError(f"{where}: 'ref_audio' {row.get('ref_audio')!r} not found (needed for the speaker vector)")
        out.append(Utterance(text=text, codes=codes, audio=audio, ref_audio=ref, line=i))
    if not out:
        raise InputError(f"corpus {corpus_dir}: {name} has no utterances")
    return out


# ----------------------------------------------------------------------------------------------------------------
# layout


SpecialIds = PromptIds  # the special ids of a prompt (voicepipe.models.prompt)
tokenize_text = assistant_ids  # role + text tokens, as `Qwen3TTSModel` tokenizes for generation


def build_sequence(text_ids: torch.Tensor, codes: torch.Tensor, ids: PromptIds, *, language: str | None = AUTO
                   ) -> Sequence:  # fmt: skip
    """Lay one utterance out as the talker's training input: `build_prompt` (speaker slot for the trained vector,
    text in the prompt), then the frames and the codec eos (see the module docstring for the picture)."""
    try:
        p = build_prompt(ids, text_ids, speaker_slot=True, language=language, non_streaming_text=True)
    except InputError as e:
        raise InputError(f"utterance {e}") from None
    n_frames, groups = codes.shape
    first = p.length  # first audio frame
    total = first + n_frames + 1  # + codec eos
    text = torch.full((total,), ids.tts_pad, dtype=torch.long)
    text[:first] = p.text_ids
    text_mask = torch.ones(total, dtype=torch.bool)
    text_mask[:first] = p.text_mask

    codec = torch.zeros((total, groups), dtype=torch.long)
    codec[:first, 0] = p.codec_ids
    codec[first : first + n_frames] = codes
    codec[first + n_frames, 0] = ids.codec_eos
    codec_mask = torch.ones(total, dtype=torch.bool)
    codec_mask[:first] = p.codec_mask
    speaker_mask = torch.zeros(total, dtype=torch.bool)
    speaker_mask[:first] = p.speaker_mask()

    frame_mask = torch.zeros(total, dtype=torch.bool)
    frame_mask[first : first + n_frames] = True
    labels = torch.full((total,), IGNORE, dtype=torch.long)
    labels[first : first + n_frames] = codes[:, 0]
    labels[first + n_frames] = ids.codec_eos
    return Sequence(text, text_mask, codec, codec_mask, frame_mask, labels, speaker_mask)


def collate(seqs: list[Sequence]) -> Batch:
    """Right-pad sequences into one batch."""
    t = max(s.length for s in seqs)
    g = seqs[0].codec_ids.shape[1]
    b = len(seqs)
    out = Batch(
        text_ids=torch.zeros((b, t), dtype=torch.long),
        text_mask=torch.zeros((b, t), dtype=torch.bool),
        codec_ids=torch.zeros((b, t, g), dtype=torch.long),
        codec_mask=torch.zeros((b, t), dtype=torch.bool),
        frame_mask=torch.zeros((b, t), dtype=torch.bool),
        labels=torch.full((b, t), IGNORE, dtype=torch.long),
        speaker_mask=torch.zeros((b, t), dtype=torch.bool),
        lengths=torch.tensor([s.length for s in seqs]),
        frame_idx=torch.zeros(0, dtype=torch.long),
        n_labels=0,
        n_frames=0,
    )
    for i, s in enumerate(seqs):
        n = s.length
        out.text_ids[i, :n] = s.text_ids
        out.text_mask[i, :n] = s.text_mask
        out.codec_ids[i, :n] = s.codec_ids
        out.codec_mask[i, :n] = s.codec_mask
        out.frame_mask[i, :n] = s.frame_mask
        out.labels[i, :n] = s.labels
        out.speaker_mask[i, :n] = s.speaker_mask
    out.frame_idx = out.frame_mask[:, 1:].reshape(-1).nonzero().squeeze(-1)
    out.n_labels = int((out.labels != IGNORE).sum())
    out.n_frames = int(out.frame_mask.sum())
    return out


# ----------------------------------------------------------------------------------------------------------------
# step plan: which utterances go into which optimizer step / micro-batch / process


def plan_epoch(
    lengths: list[int],
    *,
    epoch: int,
    seed: int,
    per_step: int,
    batch_size: int,
    world: int,
    micro_batch_tokens: int | None = None,
    shuffle: bool = True,
) -> list[list[list[list[int]]]]:
    """Deterministic plan: steps[s][rank] = list of micro-batches (lists of utterance indices).

    Every process computes the same plan from (seed, epoch), so resuming mid-epoch and sharding across ranks need no
    communication. Within a step, utterances are sorted by length before being split into micro-batches (less padding);
    the loss is normalised over the whole step, so the grouping does not change the gradient.
    """
    n = len(lengths)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    global_step = per_step * world
    steps = []
    for s in range(math.ceil(n / global_step)):
        chunk = sorted(order[s * global_step : (s + 1) * global_step], key=lambda i: lengths[i])
        ranks: list[list[list[int]]] = []
        for r in range(world):
            mine = chunk[r::world]  # interleaved so every rank gets a similar token load
            if micro_batch_tokens:
                micro: list[list[int]] = []
                cur: list[int] = []
                for i in mine:
                    if cur and (len(cur) + 1) * max(lengths[j] for j in [*cur, i]) > micro_batch_tokens:
                        micro.append(cur)
                        cur = []
                    cur.append(i)
                if cur:
                    micro.append(cur)
            else:
                micro = [mine[k : k + batch_size] for k in range(0, len(mine), batch_size)]
            ranks.append(micro)
        steps.append(ranks)
    return steps
