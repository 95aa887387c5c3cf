"""The speaker vector: the model's own speaker encoder over the corpus's clips, averaged in fp32.

The official recipe keeps the embedding of the first batch it happens to see (one clip); averaging in bf16 mixed up
speakers in a public multi-speaker fine-tune. Here every clip is embedded with the encoder in fp32 and the mean is
taken in float64, then stored as fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from voicepipe.errors import InputError


def speaker_centroid(model: torch.nn.Module, clips: list[Path], *, sr: int = 24000) -> torch.Tensor:
    """Mean speaker-encoder embedding (fp32, on CPU) of `clips` (24 kHz mono; other rates are resampled)."""
    from voicepipe.audio import load_audio

    if getattr(model, "speaker_encoder", None) is None:
        raise InputError("base model has no speaker encoder (fine-tuning needs a Base model)")
    enc = model.speaker_encoder
    dtype = next(enc.parameters()).dtype
    enc.float()
    try:
        embs = []
        for clip in clips:
            wav = load_audio(clip, sr=sr)  # InputError naming the file when it cannot be decoded
            if wav.size < sr // 4:
                raise InputError(f"speaker clip {clip}: shorter than 0.25 s")
            with torch.no_grad(), torch.autocast(device_type=next(enc.parameters()).device.type, enabled=False):
                embs.append(model.extract_speaker_embedding(wav, sr).detach().double().cpu())
    finally:
        enc.to(dtype)
    if not embs:
        raise InputError("no clips to compute the speaker vector from")
    return torch.stack(embs).mean(0).float()
